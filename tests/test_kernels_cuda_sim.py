"""The CUDA kernels in numba's CUDA simulator against the CPU kernels and float64 NumPy
(no GPU needed); the cases are ``tests/cuda_sim_cases.py``, run by ``tests/cuda_sim_run.py``."""

from __future__ import annotations

import pytest

from tests.cuda_sim_run import run_in_simulator

#: cases in cuda_sim_cases.py; update when cases are added.
EXPECTED_PASSED = 87


@pytest.mark.slow
def test_cuda_kernels_pass_in_the_simulator():
    run_in_simulator("tests/cuda_sim_cases.py", EXPECTED_PASSED)
