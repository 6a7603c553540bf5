"""Dense kernels (CUDA, numba): forward ``a·W + b`` and transposed ``(s·Wᵀ) ⊙ m`` on the tiled GEMM.

The bias and the multiplication by the activation are applied in the GEMM's epilogue (or
in its split-K reduction, which small batches with long inputs use), so neither costs an
extra pass over memory. Weights keep the CPU layout: (in, out).
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from .gemm import gemm
from .launch import DeviceWorkspace, as_device


def dense(a, w, bias=None, ws: DeviceWorkspace | None = None):
    """``a`` (N, I) times ``w`` (I, O), plus ``bias`` (O,) → (N, O) in ``a``'s dtype."""
    a = as_device(a)
    dt = np.dtype(a.dtype)
    w = as_device(w, dt)
    if a.shape[1] != w.shape[0]:
        raise ValueError(f"dense: input {tuple(a.shape)} does not fit weights {tuple(w.shape)}")
    out = cuda.device_array((int(a.shape[0]), int(w.shape[1])), dtype=dt)
    b = None if bias is None else as_device(bias, dt).reshape(int(w.shape[1]))
    return gemm(a, w, out, bias=b, bias_axis=1, ws=ws)


def dense_transpose(s, w, mul=None, ws: DeviceWorkspace | None = None):
    """``s`` (N, O) times ``wᵀ`` → (N, I), times ``mul`` (N, I) if given; in ``s``' dtype."""
    s = as_device(s)
    dt = np.dtype(s.dtype)
    w = as_device(w, dt)
    if s.shape[1] != w.shape[1]:
        raise ValueError(f"dense_transpose: signal {tuple(s.shape)} does not fit weights {tuple(w.shape)}")
    out = cuda.device_array((int(s.shape[0]), int(w.shape[0])), dtype=dt)
    m = None if mul is None else as_device(mul, dt)
    return gemm(s, w, out, trans_b=True, mul=m, ws=ws)
