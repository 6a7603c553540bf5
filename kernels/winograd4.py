"""Winograd F(4x4, 3x3) convolution (CPU, numba + BLAS) for stride-1, ungrouped 3x3 layers.

Each 4x4 output tile comes from a 6x6 input tile with 36 multiplications instead of 144
(4x fewer than im2col + GEMM, against 2.25x for F(2x2, 3x3)), and the transformed input
and output are 2.25x the maps instead of 4x: the large early layers of VGG-style networks,
whose time goes to memory traffic as much as to arithmetic, gain the most. Its transforms
use larger constants (interpolation points 0, ±1, ±2), so rounding is a little larger than
F(2x2, 3x3)'s; the backend uses it only where rules allow inexact zeros (measured on
VGG16's relevance: 2e-7 from exact products, against 1.7e-7 with F(2x2, 3x3)), and only
for layers whose transformed kernel stays small (``applies``). Unlike F(2x2, 3x3), one
transformed kernel cannot serve the transpose (the points are not closed under 1/p): the
transposed direction transforms the flipped, channel-swapped kernel itself.
(Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016.)
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .winograd import load_row, run_blocks, transform_with

#: G of F(4, 3): kernel transform U = G g Gᵀ
G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
#: a transformed block (36 x channels x tiles) holds at most this many elements
BLOCK_ELEMENTS = 1 << 22
#: layers with at most this many (output × input) channel pairs (36 transformed taps each,
#: once per direction): VGG16's blocks 1–3, where the maps are large
MAX_CHANNEL_PAIRS = 1 << 16
#: and whose maps are at least this tall and wide (small maps: too many padded tiles)
MIN_SIZE = 16


def applies(kh: int, kw: int, strides, dilations, groups: int, k: int, c: int, hw) -> bool:
    """Whether F(4x4, 3x3) computes this convolution (and is worth its kernel memory)."""
    return ((kh, kw) == (3, 3) and tuple(strides) == (1, 1) and tuple(dilations) == (1, 1) and groups == 1
            and k * c <= MAX_CHANNEL_PAIRS and min(hw) >= MIN_SIZE)


def transform_kernel(w: np.ndarray) -> np.ndarray:
    """(K, C, 3, 3) → U (36, K, C) with U[6a+b] = (G g Gᵀ)[a, b] (float64 maths, w's dtype)."""
    return transform_with(w, G)


@njit(parallel=True, cache=True)
def input_tiles(x, pt, pl, ty0, ty1, tw, V, col0, z, eps, use_ratio):
    """V[6i+j, c, col0 + t] = (Bᵀ d B)[i, j] for the 6x6 tiles d of tile rows ty0:ty1 of one
    sample ``x`` (C, H, W); taps outside it are 0. ``use_ratio``: read ``x / (z + eps·sign z)``
    (0 where that is 0/0), LRP's stabilised divide fused into the loads. Parallel over
    channels, each with its own row buffers; every slot is written as one run over a tile
    row's tiles, through a view indexed from 0 (see ``winograd``'s module note on views)."""
    C, H, W = x.shape
    Wp = 4 * tw + 2
    lo, hi = max(0, pl), min(Wp, W + pl)  # the buffer columns that hold input pixels
    k = np.empty(3, x.dtype)  # the transform's constants in x's precision (2, 4, 5)
    k[0], k[1], k[2] = 2.0, 4.0, 5.0
    two, four, five = k[0], k[1], k[2]
    for c in prange(C):
        d = np.zeros((6, Wp), x.dtype)
        t = np.empty((6, Wp), x.dtype)
        for ty in range(ty0, ty1):
            for i in range(6):
                yy = 4 * ty - pt + i
                if yy < 0 or yy >= H or lo >= hi:
                    d[i, :] = 0
                    continue
                load_row(x, z, c, yy, lo, hi, pl, eps, use_ratio, d[i])
            for xx in range(Wp):  # Bᵀ d over rows
                d0, d1, d2, d3, d4, d5 = d[0, xx], d[1, xx], d[2, xx], d[3, xx], d[4, xx], d[5, xx]
                t[0, xx] = four * d0 - five * d2 + d4
                t[1, xx] = d3 + d4 - four * (d1 + d2)
                t[2, xx] = four * (d1 - d2) - d3 + d4
                t[3, xx] = two * (d3 - d1) - d2 + d4
                t[4, xx] = two * (d1 - d3) - d2 + d4
                t[5, xx] = four * d1 - five * d3 + d5
            base = col0 + (ty - ty0) * tw
            for i in range(6):  # (Bᵀ d) B over columns: a tile's six taps at once
                r = 6 * i
                ti = t[i]
                v0, v1, v2 = V[r, c, base:base + tw], V[r + 1, c, base:base + tw], V[r + 2, c, base:base + tw]
                v3, v4, v5 = V[r + 3, c, base:base + tw], V[r + 4, c, base:base + tw], V[r + 5, c, base:base + tw]
                for tx in range(tw):
                    e0, e1, e2 = ti[4 * tx], ti[4 * tx + 1], ti[4 * tx + 2]
                    e3, e4, e5 = ti[4 * tx + 3], ti[4 * tx + 4], ti[4 * tx + 5]
                    v0[tx] = four * e0 - five * e2 + e4
                    v1[tx] = e3 + e4 - four * (e1 + e2)
                    v2[tx] = four * (e1 - e2) - e3 + e4
                    v3[tx] = two * (e3 - e1) - e2 + e4
                    v4[tx] = two * (e1 - e3) - e2 + e4
                    v5[tx] = four * e1 - five * e3 + e5


@njit(parallel=True, cache=True)
def output_tiles(M, oh, ow, ty0, ty1, tw, col0, out, bias, use_bias, mul, use_mul):
    """out[k, rows of ty0:ty1] = Aᵀ m A of each tile m[i, j] = M[6i+j, k, col0 + t]; then
    + bias, × mul. Each slot's run is read through a view indexed from 0."""
    K = out.shape[0]
    cs = np.empty(3, M.dtype)  # the transform's constants in M's precision (2, 4, 8)
    cs[0], cs[1], cs[2] = 2.0, 4.0, 8.0
    two, four, eight = cs[0], cs[1], cs[2]
    for k in prange(K):
        b = bias[k] if use_bias else bias[0] * 0
        s = np.empty((4, 6, tw), M.dtype)
        vals = np.empty(4, M.dtype)
        for ty in range(ty0, ty1):
            base = col0 + (ty - ty0) * tw
            for j in range(6):  # Aᵀ m over rows
                r0 = M[j, k, base:base + tw]
                r1 = M[6 + j, k, base:base + tw]
                r2 = M[12 + j, k, base:base + tw]
                r3 = M[18 + j, k, base:base + tw]
                r4 = M[24 + j, k, base:base + tw]
                r5 = M[30 + j, k, base:base + tw]
                for tx in range(tw):
                    m0, m1, m2, m3, m4, m5 = r0[tx], r1[tx], r2[tx], r3[tx], r4[tx], r5[tx]
                    s[0, j, tx] = m0 + m1 + m2 + m3 + m4
                    s[1, j, tx] = m1 - m2 + two * (m3 - m4)
                    s[2, j, tx] = m1 + m2 + four * (m3 + m4)
                    s[3, j, tx] = m1 - m2 + eight * (m3 - m4) + m5
            y = 4 * ty
            full = min(tw, ow // 4)  # tiles whose four columns all lie inside the output
            for r in range(4):
                if y + r >= oh:
                    break
                row = out[k, y + r]
                for tx in range(full):
                    n0, n1, n2 = s[r, 0, tx], s[r, 1, tx], s[r, 2, tx]
                    n3, n4, n5 = s[r, 3, tx], s[r, 4, tx], s[r, 5, tx]
                    x = 4 * tx
                    row[x] = n0 + n1 + n2 + n3 + n4 + b
                    row[x + 1] = n1 - n2 + two * (n3 - n4) + b
                    row[x + 2] = n1 + n2 + four * (n3 + n4) + b
                    row[x + 3] = n1 - n2 + eight * (n3 - n4) + n5 + b
                for tx in range(full, tw):  # the last, partial tile
                    n0, n1, n2 = s[r, 0, tx], s[r, 1, tx], s[r, 2, tx]
                    n3, n4, n5 = s[r, 3, tx], s[r, 4, tx], s[r, 5, tx]
                    vals[0] = n0 + n1 + n2 + n3 + n4
                    vals[1] = n1 - n2 + two * (n3 - n4)
                    vals[2] = n1 + n2 + four * (n3 + n4)
                    vals[3] = n1 - n2 + eight * (n3 - n4) + n5
                    for cc in range(4):
                        if 4 * tx + cc < ow:
                            row[4 * tx + cc] = vals[cc] + b
                if use_mul:
                    m = mul[k, y + r]
                    for xx in range(ow):
                        row[xx] *= m[xx]


def conv3x3(x: np.ndarray, U: np.ndarray, pads: tuple[int, int, int, int], out_hw: tuple[int, int],
            bias: np.ndarray | None = None, mul: np.ndarray | None = None, ws=None,
            matmul=None, ratio: tuple[np.ndarray, float] | None = None) -> np.ndarray:
    """Stride-1 3x3 convolution of ``x`` (N, C, H, W) with ``U = transform_kernel(w)``:
    (N, K, oh, ow) = conv + ``bias``, × ``mul``; ``ratio=(z, eps)`` convolves
    ``x / (z + eps·sign z)``. ``matmul(a, b, out=)`` runs the 36 stacked products."""
    return run_blocks(x, U, 4, pads, out_hw, bias, mul, ws, matmul, ratio, input_tiles, output_tiles,
                      BLOCK_ELEMENTS, "winograd4")
