"""Small CUDA kernels behind the device-array type: broadcast arithmetic, copies, transposes,
row sums. Everything works on arrays padded to rank 4 (leading axes of size 1), which
covers every tensor the relevance pass handles (NCHW activations, (N, features) vectors).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .launch import THREADS

# operation codes of ``binary4``
ADD, SUB, MUL, DIV, MAX, MIN, COPY_A = 0, 1, 2, 3, 4, 5, 6


def blocks(n: int, threads: int = THREADS) -> int:
    return max(1, math.ceil(n / threads))


@cuda.jit
def binary4(a, b, out, op):
    """out = a (op) b, all rank 4; a or b may have size-1 axes (broadcast)."""
    n0, n1, n2, n3 = out.shape
    i = cuda.grid(1)
    if i >= n0 * n1 * n2 * n3:
        return
    i3 = i % n3
    t = i // n3
    i2 = t % n2
    t //= n2
    i1 = t % n1
    i0 = t // n1
    x = a[i0 if a.shape[0] > 1 else 0, i1 if a.shape[1] > 1 else 0,
          i2 if a.shape[2] > 1 else 0, i3 if a.shape[3] > 1 else 0]
    y = b[i0 if b.shape[0] > 1 else 0, i1 if b.shape[1] > 1 else 0,
          i2 if b.shape[2] > 1 else 0, i3 if b.shape[3] > 1 else 0]
    if op == 0:
        r = x + y
    elif op == 1:
        r = x - y
    elif op == 2:
        r = x * y
    elif op == 3:
        r = x / y
    elif op == 4:
        r = x if x > y else y
    elif op == 5:
        r = x if x < y else y
    else:
        r = x
    out[i0, i1, i2, i3] = r


@cuda.jit
def transpose4(src, out, p0, p1, p2, p3):
    """out[i0, i1, i2, i3] = src[j] with j[p_k] = i_k: ``out = src.transpose(p)``; any strides in src."""
    n0, n1, n2, n3 = out.shape
    i = cuda.grid(1)
    if i >= n0 * n1 * n2 * n3:
        return
    i3 = i % n3
    t = i // n3
    i2 = t % n2
    t //= n2
    i1 = t % n1
    i0 = t // n1
    j = cuda.local.array(4, dtype=np.int64)
    j[p0] = i0
    j[p1] = i1
    j[p2] = i2
    j[p3] = i3
    out[i0, i1, i2, i3] = src[j[0], j[1], j[2], j[3]]


@cuda.jit
def row_sums(x, out):
    """out[r] = Σ_c x[r, c] in float64 (one block per row, shared-memory tree)."""
    r = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    buf = cuda.shared.array(THREADS, dtype=np.float64)
    acc = 0.0
    c = tid
    while c < x.shape[1]:
        acc += np.float64(x[r, c])  # float64 also in the simulator (NEP 50 keeps float32)
        c += cuda.blockDim.x
    buf[tid] = acc
    cuda.syncthreads()
    s = THREADS // 2
    while s > 0:
        if tid < s:
            buf[tid] += buf[tid + s]
        cuda.syncthreads()
        s //= 2
    if tid == 0:
        out[r] = buf[0]


@cuda.jit
def fill(out, value):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = value


def launch_binary(a, b, out, op: int) -> None:
    binary4[blocks(out.size), THREADS](a, b, out, op)


def launch_transpose(src, out, perm) -> None:
    transpose4[blocks(out.size), THREADS](src, out, *perm)


def launch_row_sums(x, out) -> None:
    row_sums[x.shape[0], THREADS](x, out)


def launch_fill(out, value) -> None:
    fill[blocks(out.size), THREADS](out, value)
