"""The CUDA backend end to end in numba's CUDA simulator: ``DeviceArray`` against numpy, and
explain / masks / inner targets / float64 / channel flows / deconvolution / ``lrpath paths``
on ``--device cuda`` against ``--device cpu`` (no GPU needed); the cases are
``tests/cuda_sim_backend_cases.py``, run by ``tests/cuda_sim_run.py``."""

from __future__ import annotations

import pytest

from tests.cuda_sim_run import run_in_simulator

#: cases in cuda_sim_backend_cases.py; update when cases are added.
EXPECTED_PASSED = 50


@pytest.mark.slow
def test_cuda_backend_matches_the_cpu_backend_in_the_simulator():
    run_in_simulator("tests/cuda_sim_backend_cases.py", EXPECTED_PASSED)
