"""Imported first by the CUDA case modules: makes sure there is something to run them on.

That is a GPU, or numba's simulator (``NUMBA_ENABLE_CUDASIM=1`` set before numba is imported,
as the ``test_*cuda_sim`` wrappers do). In the simulator every GPU thread is a Python
thread and a ``syncthreads`` barrier waits for the interpreter to switch threads; the
default 5 ms switch interval makes each reduction launch take a fraction of a second, so it
is shortened (about 3x faster here). Switching that often exposes a race in the
simulator itself: ``cuda.shared.array`` looks its block's array up and creates it on a miss
without a lock, so two threads could each get a private "shared" array (GEMM tiles then
read garbage, about one run in three). ``_shared_array`` does the same lookup atomically.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from lrpath_onnx.kernels.cuda import numpy_compat  # noqa: F401  (before numba.cuda: newer NumPy)
from numba import cuda  # noqa: E402  (isort: skip)

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"

if not SIMULATED and not cuda.is_available():  # pragma: no cover
    raise RuntimeError("run the CUDA case modules with NUMBA_ENABLE_CUDASIM=1 (see the test_*cuda_sim "
                       "wrappers), or on a machine with a CUDA GPU")


def _shared_array(self, shape, dtype, alignment=None):
    """``FakeCUDAShared.array`` with an atomic get-or-create (``dict.setdefault``), keyed as the
    simulator keys it: by the calling source line."""
    if alignment is not None or shape == 0:
        return _simulator_shared_array(self, shape, dtype, alignment)
    from numba.cuda import types
    from numba.cuda.np import numpy_support

    if isinstance(dtype, types.Type):
        dtype = numpy_support.as_dtype(dtype)
    frame = sys._getframe(1)
    return self._allocations.setdefault((frame.f_code.co_filename, frame.f_lineno), np.empty(shape, dtype))


if SIMULATED:
    from numba.cuda.simulator.kernelapi import FakeCUDAShared

    _simulator_shared_array = FakeCUDAShared.array
    FakeCUDAShared.array = _shared_array
    sys.setswitchinterval(5e-5)
