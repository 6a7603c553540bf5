"""Winograd F(2x2, 3x3) convolution (CPU, numba + BLAS) for stride-1, ungrouped 3x3 layers.

VGG16's thirteen convolutions, and the transposed convolutions LRP runs back through them
(a stride-1 transpose is itself a 3x3 convolution with the flipped kernel), are all of
this kind. Winograd's minimal filtering computes each 2x2 output tile from a 4x4 input
tile with 16 multiplications instead of 36: the input and kernel are transformed
(``Bᵀ d B``, ``G g Gᵀ``), the 16 transformed positions become 16 independent matrix
products over channels (one batched BLAS call), and ``Aᵀ m A`` gives the outputs. That is
2.25x fewer FLOPs than im2col + GEMM, and about half its memory traffic.
(Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016.)
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

#: G of F(2, 3): kernel transform U = G g Gᵀ
G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
#: transformed blocks larger than this (elements) are split over fewer samples per call.
BLOCK_ELEMENTS = 1 << 24


def applies(kh: int, kw: int, strides, dilations, groups: int) -> bool:
    """Whether Winograd F(2x2, 3x3) computes this convolution."""
    return (kh, kw) == (3, 3) and tuple(strides) == (1, 1) and tuple(dilations) == (1, 1) and groups == 1


def transform_kernel(w: np.ndarray) -> np.ndarray:
    """(K, C, 3, 3) → U (16, K, C) with U[4a+b] = (G g Gᵀ)[a, b]."""
    K, C = w.shape[:2]
    g = G.astype(w.dtype)
    return np.ascontiguousarray(np.einsum("ai,kcij,bj->abkc", g, w, g).reshape(16, K, C))


@njit(parallel=True, cache=True)
def input_tiles(x, pt, pl, th, tw, V, col0):
    """V[:, c, col0 + t] = Bᵀ d B for every 4x4 tile d of ``x`` (C, H, W); zero outside.

    Parallel over (channel, tile row). Bᵀ d combines four input rows element-wise
    (vectorised over the row), then d B combines columns, each of the 16 results written
    as a contiguous run over the row's tiles.
    """
    C, H, W = x.shape
    Wp = 2 * tw + 2
    for cy in prange(C * th):
        c = cy // th
        ty = cy % th
        rows = np.zeros((4, Wp), x.dtype)
        for i in range(4):
            yy = 2 * ty - pt + i
            if yy >= 0 and yy < H:
                for xx in range(Wp):
                    sx = xx - pl
                    if sx >= 0 and sx < W:
                        rows[i, xx] = x[c, yy, sx]
        t = np.empty((4, Wp), x.dtype)
        for xx in range(Wp):  # Bᵀ d over rows
            t[0, xx] = rows[0, xx] - rows[2, xx]
            t[1, xx] = rows[1, xx] + rows[2, xx]
            t[2, xx] = rows[2, xx] - rows[1, xx]
            t[3, xx] = rows[1, xx] - rows[3, xx]
        base = col0 + ty * tw
        for i in range(4):  # (Bᵀ d) B over columns
            for tx in range(tw):
                q = 2 * tx
                V[4 * i + 0, c, base + tx] = t[i, q] - t[i, q + 2]
            for tx in range(tw):
                q = 2 * tx
                V[4 * i + 1, c, base + tx] = t[i, q + 1] + t[i, q + 2]
            for tx in range(tw):
                q = 2 * tx
                V[4 * i + 2, c, base + tx] = t[i, q + 2] - t[i, q + 1]
            for tx in range(tw):
                q = 2 * tx
                V[4 * i + 3, c, base + tx] = t[i, q + 1] - t[i, q + 3]


@njit(parallel=True, cache=True)
def output_tiles(M, oh, ow, tw, col0, out, bias, use_bias, mul, use_mul):
    """out (K, oh, ow) = Aᵀ m A of each tile m = M[:, k, col0 + t]; then + bias, × mul.

    Parallel over (output channel, tile row); every step runs over the row's tiles.
    """
    K = out.shape[0]
    th = (oh + 1) // 2
    for ky in prange(K * th):
        k = ky // th
        ty = ky % th
        base = col0 + ty * tw
        b = bias[k] if use_bias else 0.0
        s0 = np.empty((4, tw), M.dtype)
        s1 = np.empty((4, tw), M.dtype)
        for j in range(4):  # Aᵀ m: s0_j = m0j + m1j + m2j, s1_j = m1j - m2j - m3j
            for tx in range(tw):
                m1 = M[4 + j, k, base + tx]
                m2 = M[8 + j, k, base + tx]
                s0[j, tx] = M[j, k, base + tx] + m1 + m2
                s1[j, tx] = m1 - m2 - M[12 + j, k, base + tx]
        y = 2 * ty
        for r in range(2):
            if y + r >= oh:
                break
            s = s0 if r == 0 else s1
            for tx in range(tw):
                x = 2 * tx
                v = s[0, tx] + s[1, tx] + s[2, tx] + b
                if use_mul:
                    v *= mul[k, y + r, x]
                out[k, y + r, x] = v
                if x + 1 < ow:
                    v = s[1, tx] - s[2, tx] - s[3, tx] + b
                    if use_mul:
                        v *= mul[k, y + r, x + 1]
                    out[k, y + r, x + 1] = v


def conv3x3(x: np.ndarray, U: np.ndarray, pads: tuple[int, int, int, int], out_hw: tuple[int, int],
            bias: np.ndarray | None = None, mul: np.ndarray | None = None, ws=None,
            matmul=None) -> np.ndarray:
    """Stride-1 3x3 convolution of ``x`` (N, C, H, W) with transformed kernel ``U`` (16, K, C).

    Returns (N, K, oh, ow) = conv + ``bias``, times ``mul`` (same shape) when given.
    ``matmul(a, b, out=)`` runs the 16 stacked products (the backend may split them over
    threads).
    Samples are transformed together while the blocks stay under ``BLOCK_ELEMENTS``, so
    small feature maps still make large matrix products.
    """
    N, C, H, W = x.shape
    K = U.shape[1]
    oh, ow = out_hw
    th, tw = (oh + 1) // 2, (ow + 1) // 2
    T = th * tw
    out = np.empty((N, K, oh, ow), x.dtype)
    per = max(1, min(N, BLOCK_ELEMENTS // (16 * max(C, K) * T)))
    zero1 = np.zeros(1, x.dtype)
    zero3 = np.zeros((1, 1, 1), x.dtype)
    b = zero1 if bias is None else np.ascontiguousarray(bias, x.dtype)
    for lo in range(0, N, per):
        hi = min(N, lo + per)
        cols = (hi - lo) * T
        V = ws.get((16, C, cols), x.dtype, "winograd_in") if ws else np.empty((16, C, cols), x.dtype)
        Mt = ws.get((16, K, cols), x.dtype, "winograd_out") if ws else np.empty((16, K, cols), x.dtype)
        for n in range(lo, hi):
            input_tiles(x[n], pads[0], pads[1], th, tw, V, (n - lo) * T)
        (matmul or np.matmul)(U, V, out=Mt)
        for n in range(lo, hi):
            output_tiles(Mt, oh, ow, tw, (n - lo) * T, out[n], b, bias is not None,
                         zero3 if mul is None else mul[n], mul is not None)
    return out
