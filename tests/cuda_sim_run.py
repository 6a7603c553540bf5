"""Runs a CUDA case module in numba's simulator, in a fresh interpreter, and checks the count.

``NUMBA_ENABLE_CUDASIM=1`` only takes effect if it is set before numba is first imported,
and the test process has long imported numba for the CPU kernels. So the cases live in
modules without the ``test_`` prefix (the main run does not collect them) and the
``test_*cuda_sim`` wrappers run them here. The exact number of passes is checked: a
silently skipped or uncollected case must not pass for a run of fewer checks.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_in_simulator(module: str, expected_passed: int, timeout: int = 900) -> None:
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    cmd = [sys.executable, "-m", "pytest", module, "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-rfEs"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    report = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"simulator cases of {module} failed (exit {proc.returncode}):\n{report}"
    summary = proc.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) == expected_passed, f"expected {expected_passed} passed: {summary}"
    for word in ("skipped", "failed", "error", "xfail", "deselected"):
        assert word not in summary, summary
