"""Dense kernels: forward ``a·W + b`` and transposed ``s·Wᵀ`` on BLAS (numpy's matmul).

A dense layer is one GEMM each way; nothing beats the BLAS numpy ships, so these are
thin wrappers that keep the dtype and the (in, out) weight layout in one place.
"""

from __future__ import annotations

import numpy as np


def dense(a: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """``a`` (N, I) times ``w`` (I, O), plus ``bias`` (O,)."""
    z = np.matmul(a, w.astype(a.dtype, copy=False))
    if bias is not None:
        z += bias.astype(a.dtype, copy=False)
    return z


def dense_transpose(s: np.ndarray, w: np.ndarray, mul: np.ndarray | None = None, matmul=None) -> np.ndarray:
    """``s`` (N, O) times ``wᵀ`` → (N, I); times ``mul`` (N, I) if given. ``matmul(a, b, out=)``
    runs the product (the backend may split it over threads)."""
    c = np.empty((s.shape[0], w.shape[0]), s.dtype)
    (matmul or np.matmul)(s, w.astype(s.dtype, copy=False).T, out=c)
    if mul is not None:
        c *= mul
    return c
