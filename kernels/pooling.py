"""Switch unpooling (CPU, numba): MaxPool's winner-take-all, by onnxruntime's indices.

ONNX MaxPool's ``Indices`` output holds, for each pooled value, the flat index of its
maximum in the whole NCHW input tensor (batch and channel offsets included). Relevance
(or a deconvolution signal) goes back to exactly that element; when windows overlap, two
outputs can pick the same element and their values add up.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def _unpool(values, indices, plane_out, out):
    # values/indices: (P, L) with P = N*C planes; out: (P * plane_out,) flat.
    P, L = values.shape
    for p in prange(P):
        base = p * plane_out
        for i in range(plane_out):
            out[base + i] = 0.0
        for i in range(L):
            idx = indices[p, i]
            if idx >= base and idx < base + plane_out:
                out[idx] += values[p, i]


def unpool(values: np.ndarray, indices: np.ndarray, in_shape: tuple[int, ...]) -> np.ndarray:
    """Scatter ``values`` (N, C, oh, ow) to ``in_shape`` (N, C, H, W) at ``indices``.

    An index outside its own (sample, channel) plane would be a corrupt switch; such
    entries are dropped (the plane-parallel scatter could not do them race-free anyway),
    and ``unpool`` is tested against onnxruntime's indices, which never do that.
    """
    N, C = in_shape[0], in_shape[1]
    plane = int(np.prod(in_shape[2:]))
    v = np.ascontiguousarray(values).reshape(N * C, -1)
    ix = np.ascontiguousarray(indices, dtype=np.int64).reshape(N * C, -1)
    out = np.empty(N * C * plane, v.dtype)
    _unpool(v, ix, plane, out)
    return out.reshape(in_shape)
