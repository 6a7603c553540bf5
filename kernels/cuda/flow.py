"""Channel-pair relevance flow (CUDA, numba): how much relevance each output channel of a
layer sends to each of its input channels, for the requested channels only.

Convolution: ``F[n, a, b] = Σ_positions Σ_taps m[n, i] · w[j, i, tap] · s[n, j]`` with
``i = rows[a]``, ``j = cols[b]`` (0 when i and j are in different groups). One block of
``FLOW_THREADS`` threads per (n, a, b): the threads stride over the output positions, each
summing its taps, and a shared-memory tree adds the threads' float64 partials (no atomics,
deterministic). Dense: one thread per (n, a, b) element, ``m_i · w[i, j] · s_j``.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from ..conv import ConvGeometry
from .launch import as_device, block_threads, grid1

FLOW_THREADS = block_threads(128)


@cuda.jit
def conv_flow_kernel(mul, has_mul, s, w, rows, cols, Cg, Kg, sh, sw, pt, pl, dh, dw, H, W, out):
    """out[n, a, b] for block (b, a, n); ``mul`` is ignored (taken as 1) unless ``has_mul``."""
    b = cuda.blockIdx.x
    a = cuda.blockIdx.y
    n = cuda.blockIdx.z
    tid = cuda.threadIdx.x
    buf = cuda.shared.array(FLOW_THREADS, dtype=np.float64)
    i = rows[a]
    j = cols[b]
    kh = w.shape[2]
    kw = w.shape[3]
    oh = s.shape[2]
    ow = s.shape[3]
    acc = 0.0
    if i // Cg == j // Kg:  # same group: uniform across the block
        ci = i % Cg
        p = tid
        while p < oh * ow:
            oy = p // ow
            ox = p % ow
            sj = s[n, j, oy, ox]
            if sj != 0:
                part = 0.0
                for ti in range(kh):
                    iy = oy * sh - pt + ti * dh
                    if iy >= 0 and iy < H:
                        for tj in range(kw):
                            ix = ox * sw - pl + tj * dw
                            if ix >= 0 and ix < W:
                                if has_mul:
                                    part += np.float64(mul[n, i, iy, ix]) * np.float64(w[j, ci, ti, tj])
                                else:
                                    part += np.float64(w[j, ci, ti, tj])
                acc += part * np.float64(sj)
            p += FLOW_THREADS
    buf[tid] = acc
    cuda.syncthreads()
    half = FLOW_THREADS // 2
    while half > 0:
        if tid < half:
            buf[tid] += buf[tid + half]
        cuda.syncthreads()
        half //= 2
    if tid == 0:
        out[n, a, b] = buf[0]


@cuda.jit
def dense_flow_kernel(mul, has_mul, s, w, rows, cols, out):
    """out[n, a, b] = m[n, rows[a]] · w[rows[a], cols[b]] · s[n, cols[b]]; one thread each."""
    t = cuda.grid(1)
    N, A, B = out.shape
    if t >= N * A * B:
        return
    b = t % B
    a = (t // B) % A
    n = t // (A * B)
    i = rows[a]
    j = cols[b]
    v = w[i, j]
    if has_mul:
        v = mul[n, i] * v
    out[n, a, b] = v * s[n, j]


def _index(x):
    """(length, device int array) of a channel list; host lists are copied once."""
    if hasattr(x, "copy_to_host"):
        return int(x.shape[0]), x
    x = np.asarray(x, dtype=np.int64).reshape(-1)
    return len(x), cuda.to_device(x)


def conv_flow(mul, s, w, geom: ConvGeometry, in_shape: tuple[int, ...], rows, cols):
    """F (N, len(rows), len(cols)) for a grouped 2-D convolution, in ``s``' dtype; ``mul=None`` means 1.

    ``mul`` is (N, C, H, W) like the layer input, ``s`` (N, K, oh, ow), ``w`` (K, C/g, kh, kw).
    """
    s = as_device(s)
    dtype = s.dtype
    w = as_device(w, dtype)
    has_mul = mul is not None
    m = as_device(mul, dtype) if has_mul else s
    n_rows, rows_d = _index(rows)
    n_cols, cols_d = _index(cols)
    N = int(s.shape[0])
    C, H, W = (int(v) for v in in_shape[1:])
    K, Cg = int(w.shape[0]), int(w.shape[1])
    if Cg * geom.groups != C or K % geom.groups:
        raise ValueError(f"conv_flow: weights {tuple(w.shape)} do not fit {C} input channels in {geom.groups} groups")
    out = cuda.device_array((N, n_rows, n_cols), dtype=dtype)
    if out.size == 0:
        return out
    (sh, sw), (pt, pl), (dh, dw) = geom.strides, geom.pads[:2], geom.dilations
    grid = (n_cols, n_rows, N)
    conv_flow_kernel[grid, FLOW_THREADS](m, has_mul, s, w, rows_d, cols_d, Cg, K // geom.groups,
                                         sh, sw, pt, pl, dh, dw, H, W, out)
    return out


def dense_flow(mul, s, w, rows, cols):
    """F (N, len(rows), len(cols)) = m_i · w[i, j] · s_j for a dense layer (w is (in, out))."""
    s = as_device(s)
    dtype = s.dtype
    w = as_device(w, dtype)
    has_mul = mul is not None
    m = as_device(mul, dtype) if has_mul else s
    n_rows, rows_d = _index(rows)
    n_cols, cols_d = _index(cols)
    out = cuda.device_array((int(s.shape[0]), n_rows, n_cols), dtype=dtype)
    if out.size:
        b, t = grid1(out.size)
        dense_flow_kernel[b, t](m, has_mul, s, w, rows_d, cols_d, out)
    return out
