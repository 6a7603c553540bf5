"""Element-wise kernels (CUDA, numba): stabilised divide, multiply, sign gate, per-sample sums.

The element-wise kernels are grid-stride loops over the flat arrays (``THREADS`` threads
per block, at most ``MAX_BLOCKS`` blocks). ``sample_sums`` is a deterministic two-pass
reduction: in pass one every (sample, chunk) block of ``REDUCE_THREADS`` threads sums its
chunk (strided per thread, then a shared-memory tree), in pass two one block per sample
sums that sample's chunk partials; float64 throughout, so NaN and inf propagate to the
sample's total exactly as in the CPU form.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .launch import MAX_BLOCKS, as_device, block_threads, flat, grid1

#: pass one of ``sample_sums`` gives each block at least this many elements per thread.
SUM_ITEMS_PER_THREAD = 16
#: and at most this many chunks per sample (the width of pass two).
SUM_MAX_CHUNKS = 256
#: threads per block of the two reduction passes.
REDUCE_THREADS = block_threads(128)


@cuda.jit
def divide_kernel(r, z, eps, out):
    """out = r / (z + eps·sign z), sign(0) = 1; 0 where that denominator is 0 (flat arrays)."""
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < out.size:
        zi = z[i]
        d = zi + eps if zi >= 0 else zi - eps
        if d != 0:
            out[i] = r[i] / d
        else:
            out[i] = 0
        i += step


@cuda.jit
def multiply_kernel(a, b, out):
    """out = a * b (flat arrays)."""
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < out.size:
        out[i] = a[i] * b[i]
        i += step


@cuda.jit
def gate_kernel(r, sign, mode, out):
    """out = r where the sign tensor says so, else 0 (flat arrays). mode 0: sign > 0;
    1: sign < 0; 2: sign ≤ 0; 3: sign == 0."""
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < out.size:
        v = sign[i]
        if mode == 0:
            keep = v > 0
        elif mode == 1:
            keep = v < 0
        elif mode == 2:
            keep = v <= 0
        else:
            keep = v == 0
        if keep:
            out[i] = r[i]
        else:
            out[i] = 0
        i += step


@cuda.jit
def partial_sums_kernel(x, chunk, part):
    """part[n, blockIdx.x] = float64 sum of x[n, chunk·blockIdx.x : chunk·(blockIdx.x+1)]."""
    n = cuda.blockIdx.y
    b = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    buf = cuda.shared.array(REDUCE_THREADS, dtype=np.float64)
    lo = b * chunk
    hi = min(x.shape[1], lo + chunk)
    acc = 0.0
    j = lo + tid
    while j < hi:
        acc += np.float64(x[n, j])
        j += REDUCE_THREADS
    buf[tid] = acc
    cuda.syncthreads()
    half = REDUCE_THREADS // 2
    while half > 0:
        if tid < half:
            buf[tid] += buf[tid + half]
        cuda.syncthreads()
        half //= 2
    if tid == 0:
        part[n, b] = buf[0]


@cuda.jit
def finish_sums_kernel(part, out):
    """out[n] = Σ_b part[n, b]: one block per sample, shared-memory tree."""
    n = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    buf = cuda.shared.array(REDUCE_THREADS, dtype=np.float64)
    acc = 0.0
    j = tid
    while j < part.shape[1]:
        acc += part[n, j]
        j += REDUCE_THREADS
    buf[tid] = acc
    cuda.syncthreads()
    half = REDUCE_THREADS // 2
    while half > 0:
        if tid < half:
            buf[tid] += buf[tid + half]
        cuda.syncthreads()
        half //= 2
    if tid == 0:
        out[n] = buf[0]


def _pair(a, b, name: str):
    a = as_device(a)
    b = as_device(b, a.dtype)
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{name}: shapes differ: {tuple(a.shape)} and {tuple(b.shape)}")
    return a, b


def stabilised_divide(r, z, eps: float):
    """``s = r / (z + eps·sign(z))`` with ``sign(0) = 1``; where the denominator is 0, ``s = 0``.

    Same semantics as the CPU form (NaN in ``z`` gives NaN); in ``r``'s dtype.
    """
    r, z = _pair(r, z, "stabilised_divide")
    out = cuda.device_array(r.shape, dtype=r.dtype)
    if out.size:
        b, t = grid1(out.size, cap=MAX_BLOCKS)
        divide_kernel[b, t](flat(r, "r"), flat(z, "z"), np.dtype(r.dtype).type(eps), flat(out))
    return out


def multiply(a, b):
    """Element-wise ``a * b`` of two same-shape arrays, in ``a``'s dtype."""
    a, b = _pair(a, b, "multiply")
    out = cuda.device_array(a.shape, dtype=a.dtype)
    if out.size:
        blk, t = grid1(out.size, cap=MAX_BLOCKS)
        multiply_kernel[blk, t](flat(a, "a"), flat(b, "b"), flat(out))
    return out


def gate_by_sign(r, sign, mode: str):
    """``r`` where ``sign`` is as ``mode`` says (see the CPU form's ``GATE_MODES``), else 0."""
    from ..elementwise import GATE_MODES

    r, sign = _pair(r, sign, "gate_by_sign")
    out = cuda.device_array(r.shape, dtype=r.dtype)
    if out.size:
        blk, t = grid1(out.size, cap=MAX_BLOCKS)
        gate_kernel[blk, t](flat(r, "r"), flat(sign, "sign"), GATE_MODES[mode], flat(out))
    return out


def sample_sums(x):
    """Per-sample float64 totals of ``x`` (batch first) as an (N,) device array; NaN/inf propagate."""
    x = as_device(x)
    N = int(x.shape[0])
    m = int(np.prod(x.shape[1:], dtype=np.int64))
    out = cuda.device_array(N, dtype=np.float64)
    if N == 0:
        return out
    x2 = flat(x, "x").reshape(N, m)
    chunks = max(1, min(SUM_MAX_CHUNKS, math.ceil(m / (REDUCE_THREADS * SUM_ITEMS_PER_THREAD))))
    chunk = max(1, math.ceil(m / chunks))
    part = cuda.device_array((N, chunks), dtype=np.float64)
    partial_sums_kernel[(chunks, N), REDUCE_THREADS](x2, chunk, part)
    finish_sums_kernel[N, REDUCE_THREADS](part, out)
    return out
