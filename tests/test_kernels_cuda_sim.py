"""The CUDA kernels in numba's CUDA simulator, compared with the CPU kernels (no GPU needed).

``NUMBA_ENABLE_CUDASIM=1`` only takes effect if it is set before numba is first imported,
and this process has long imported numba for the CPU kernels. So the cases live in
``tests/cuda_sim_cases.py`` (no ``test_`` prefix: the main run does not collect it) and run
here in a fresh interpreter with the variable set; this test checks that they all passed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: cases in cuda_sim_cases.py; update when cases are added (a silently skipped or
#: uncollected case must not pass for a run of fewer checks).
EXPECTED_PASSED = 77


@pytest.mark.slow
def test_cuda_kernels_pass_in_the_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    cmd = [sys.executable, "-m", "pytest", "tests/cuda_sim_cases.py", "-q", "-p", "no:cacheprovider",
           "-o", "addopts=", "-rfEs"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    report = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"simulator cases failed (exit {proc.returncode}):\n{report}"
    summary = proc.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) == EXPECTED_PASSED, f"expected {EXPECTED_PASSED} passed: {summary}"
    for word in ("skipped", "failed", "error", "xfail", "deselected"):
        assert word not in summary, summary
