"""Winograd F(2x2, 3x3) convolution (CPU, numba + BLAS) for stride-1, ungrouped 3x3 layers.

VGG16's thirteen convolutions, and the transposed convolutions LRP runs back through them
(a stride-1 transpose is itself a 3x3 convolution with the flipped kernel), are all of
this kind. Winograd's minimal filtering computes each 2x2 output tile from a 4x4 input
tile with 16 multiplications instead of 36: the input and kernel are transformed
(``Bᵀ d B``, ``G g Gᵀ``), the 16 transformed positions become 16 independent matrix
products over channels (one batched BLAS call), and ``Aᵀ m A`` gives the outputs. That is
2.25x fewer FLOPs than im2col + GEMM, and about half its memory traffic.
(Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016.)

Views: numba wraps negative indices, so ``V[slot, c, base + tx]`` with a ``base`` LLVM cannot
prove non-negative becomes a select per element, and the loop a gather or scatter. The
transforms read and write each run through a view (``V[slot, c, base:base + tw]``) indexed by
the loop counter alone, which vectorises into plain loads and stores (F(4x4, 3x3)'s transforms
twice as fast on VGG16's 64-channel layers, the same results bit for bit).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

#: G of F(2, 3): kernel transform U = G g Gᵀ
G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
#: a transformed block (16 x channels x tiles) holds at most this many elements; larger
#: maps are split into bands of tile rows, smaller ones stack several samples.
BLOCK_ELEMENTS = 1 << 22
#: kernel elements transformed at a time (float64 temporaries of a few MB)
TRANSFORM_CHUNK = 1 << 17
#: slot order of the transform of the 180°-rotated kernel: G·J = P·G with P swapping rows
#: 0 and 3, so U(rot g)[a, b] = U(g)[p(a), p(b)]; with the (K, C) matrices transposed, one
#: transformed kernel serves a convolution and its transpose.
_P = (3, 1, 2, 0)
SLOTS_FLIPPED = np.array([4 * _P[a] + _P[b] for a in range(4) for b in range(4)], np.int64)
SLOTS = np.arange(16, dtype=np.int64)


def applies(kh: int, kw: int, strides, dilations, groups: int) -> bool:
    """Whether Winograd F(2x2, 3x3) computes this convolution."""
    return (kh, kw) == (3, 3) and tuple(strides) == (1, 1) and tuple(dilations) == (1, 1) and groups == 1


def transform_kernel(w: np.ndarray) -> np.ndarray:
    """(K, C, 3, 3) → U (16, K, C) with U[4a+b] = (G g Gᵀ)[a, b] (float64 maths, w's dtype)."""
    return transform_with(w, G)


def transform_with(w: np.ndarray, g: np.ndarray) -> np.ndarray:
    """(K, C, 3, 3) → (t², K, C): ``g w gᵀ`` of every (k, c) for a (t, 3) ``g``, as two
    large matrix products per chunk of output channels (a product per (k, c), numpy's
    stacked matmul, took 4x longer). Chunks keep the float64 temporaries at a few MB, so
    they reuse memory instead of faulting in 100 MB afresh (VGG16's blocks 4–5 and three
    256-channel layers, cold: 430–600 ms stacked, 130–160 ms unchunked, 110 ms chunked)."""
    K, C = w.shape[:2]
    t = g.shape[0]
    out = np.empty((t * t, K, C), w.dtype)
    step = max(1, TRANSFORM_CHUNK // (9 * C))
    for k0 in range(0, K, step):
        part = w[k0:k0 + step].astype(np.float64)
        n = part.shape[0]
        right = part.reshape(-1, 3) @ g.T  # [(k, c, i), b] = Σ_j w[k, c, i, j] g[b, j]
        right = right.reshape(n, C, 3, t).transpose(2, 3, 0, 1).reshape(3, -1)
        out[:, k0:k0 + n] = (g @ right).reshape(t * t, n, C)  # [a, (b, k, c)] = Σ_i g[a, i] right[i, (b, k, c)]
    return out


@njit(cache=True, inline="always")
def load_row(x, z, c, yy, lo, hi, pl, eps, use_ratio, row):
    """row[lo:hi] = x[c, yy, lo - pl:hi - pl], or with ``use_ratio`` ``x / (z + eps·sign z)``
    there (0 where that denominator is 0): the tile buffers' input rows, LRP's stabilised
    divide done while loading so the ratio is never written to memory. Inlined into both
    Winograd modules: numba's cache of ``winograd4`` does not see an edit here (clear
    ``__pycache__`` after changing it)."""
    xs, ds = x[c, yy, lo - pl:hi - pl], row[lo:hi]
    if use_ratio:
        zs = z[c, yy, lo - pl:hi - pl]
        for j in range(hi - lo):
            zi = zs[j]
            den = zi + eps if zi >= 0.0 else zi - eps
            ds[j] = xs[j] / den if den != 0.0 else 0.0
    else:
        ds[:] = xs


@njit(parallel=True, cache=True)
def input_tiles(x, pt, pl, ty0, ty1, tw, V, col0, z, eps, use_ratio, slots):
    """V[slots[4i+j], c, col0 + t] = (Bᵀ d B)[i, j] for the 4x4 tiles d of tile rows ty0:ty1.

    ``x`` is one sample (C, H, W); taps outside it are 0. With ``use_ratio`` the tiles are
    read from ``x / (z + eps·sign z)`` (0 where that denominator is 0): LRP's stabilised
    divide done while loading, so the ratio is never written to memory. Parallel over
    (channel, tile row); Bᵀ d combines four input rows element-wise, then d B combines
    columns, each result written as a contiguous run over the row's tiles.
    """
    C, H, W = x.shape
    Wp = 2 * tw + 2
    lo, hi = max(0, pl), min(Wp, W + pl)  # the buffer columns that hold input pixels
    nrows = ty1 - ty0
    for cy in prange(C * nrows):
        c = cy // nrows
        ty = ty0 + cy % nrows
        rows = np.zeros((4, Wp), x.dtype)
        for i in range(4):
            yy = 2 * ty - pt + i
            if yy >= 0 and yy < H and lo < hi:
                load_row(x, z, c, yy, lo, hi, pl, eps, use_ratio, rows[i])
        t = np.empty((4, Wp), x.dtype)
        for xx in range(Wp):  # Bᵀ d over rows
            t[0, xx] = rows[0, xx] - rows[2, xx]
            t[1, xx] = rows[1, xx] + rows[2, xx]
            t[2, xx] = rows[2, xx] - rows[1, xx]
            t[3, xx] = rows[1, xx] - rows[3, xx]
        base = col0 + (ty - ty0) * tw
        for i in range(4):  # (Bᵀ d) B over columns: a tile's four taps at once
            ti = t[i]
            v0, v1 = V[slots[4 * i], c, base:base + tw], V[slots[4 * i + 1], c, base:base + tw]
            v2, v3 = V[slots[4 * i + 2], c, base:base + tw], V[slots[4 * i + 3], c, base:base + tw]
            for tx in range(tw):
                e0, e1, e2, e3 = ti[2 * tx], ti[2 * tx + 1], ti[2 * tx + 2], ti[2 * tx + 3]
                v0[tx] = e0 - e2
                v1[tx] = e1 + e2
                v2[tx] = e2 - e1
                v3[tx] = e1 - e3


@njit(parallel=True, cache=True)
def output_tiles(M, oh, ow, ty0, ty1, tw, col0, out, bias, use_bias, mul, use_mul, slots):
    """out[k, rows of ty0:ty1] = Aᵀ m A of each tile m[i, j] = M[slots[4i+j], k, col0 + t].

    Then + bias, × mul. Parallel over (output channel, tile row); every step runs over the
    row's tiles.
    """
    K = out.shape[0]
    nrows = ty1 - ty0
    for ky in prange(K * nrows):
        k = ky // nrows
        ty = ty0 + ky % nrows
        base = col0 + (ty - ty0) * tw
        b = bias[k] if use_bias else 0.0
        s0 = np.empty((4, tw), M.dtype)
        s1 = np.empty((4, tw), M.dtype)
        for j in range(4):  # Aᵀ m: s0_j = m0j + m1j + m2j, s1_j = m1j - m2j - m3j
            m0 = M[slots[j], k, base:base + tw]
            m1 = M[slots[4 + j], k, base:base + tw]
            m2 = M[slots[8 + j], k, base:base + tw]
            m3 = M[slots[12 + j], k, base:base + tw]
            for tx in range(tw):
                s0[j, tx] = m0[tx] + m1[tx] + m2[tx]
                s1[j, tx] = m1[tx] - m2[tx] - m3[tx]
        y = 2 * ty
        for r in range(2):
            if y + r >= oh:
                break
            s = s0 if r == 0 else s1
            row = out[k, y + r]
            mrow = mul[k, y + r] if use_mul else mul[0, 0]
            for tx in range(ow // 2):
                v = s[0, tx] + s[1, tx] + s[2, tx] + b
                w = s[1, tx] - s[2, tx] - s[3, tx] + b
                if use_mul:
                    v *= mrow[2 * tx]
                    w *= mrow[2 * tx + 1]
                row[2 * tx] = v
                row[2 * tx + 1] = w
            if ow % 2:  # the last, partial tile
                tx = ow // 2
                v = s[0, tx] + s[1, tx] + s[2, tx] + b
                if use_mul:
                    v *= mrow[2 * tx]
                row[2 * tx] = v


def tile_blocks(n: int, th: int, tw: int, channels: int, taps: int, limit: int):
    """(first sample, last sample, first tile row, last tile row) per block of work whose
    transformed data (``taps`` x ``channels`` x tiles) holds at most ``limit`` elements."""
    per_row = taps * channels * tw
    rows = max(1, limit // per_row)
    if rows >= th:  # whole samples fit: stack as many as the block holds
        per = max(1, min(n, rows // th))
        for lo in range(0, n, per):
            yield lo, min(n, lo + per), 0, th
    else:
        for i in range(n):
            for r0 in range(0, th, rows):
                yield i, i + 1, r0, min(th, r0 + rows)


def conv3x3(x: np.ndarray, U: np.ndarray, pads: tuple[int, int, int, int], out_hw: tuple[int, int],
            bias: np.ndarray | None = None, mul: np.ndarray | None = None, ws=None,
            matmul=None, ratio: tuple[np.ndarray, float] | None = None,
            transposed: bool = False) -> np.ndarray:
    """Stride-1 3x3 convolution of ``x`` (N, C, H, W) with a transformed kernel ``U``.

    ``U`` is ``transform_kernel(w)`` of a (K, C, 3, 3) kernel; with ``transposed`` the same
    ``U`` computes the convolution with the flipped, channel-swapped kernel — the transpose
    of the convolution with ``w`` for stride 1 — so a layer's two directions share one
    transformed kernel. Returns (N, K_out, oh, ow) = conv + ``bias``, × ``mul`` when given.
    ``matmul(a, b, out=)`` runs the 16 stacked products (the backend may split them over
    threads). ``ratio=(z, eps)`` convolves ``x / (z + eps·sign z)`` instead of ``x``.
    """
    Um = U.transpose(0, 2, 1) if transposed else U
    slots = SLOTS_FLIPPED if transposed else SLOTS
    return run_blocks(x, Um, 2, pads, out_hw, bias, mul, ws, matmul, ratio, input_tiles, output_tiles,
                      BLOCK_ELEMENTS, "winograd", (slots,))


def run_blocks(x, U, m: int, pads, out_hw, bias, mul, ws, matmul, ratio, input_tiles, output_tiles,
               limit: int, tag: str, extra: tuple = ()) -> np.ndarray:
    """The loop both Winograd kernels share (F(m x m, 3x3), ``U`` of (m+2)² taps): per block
    of samples and tile rows, ``input_tiles`` transforms each sample's tiles, one stacked
    product per tap, ``output_tiles`` transforms back (+ bias, × mul). ``extra``: trailing
    arguments of both tile functions; ``tag`` names the workspace buffers."""
    N, C = x.shape[:2]
    taps, K = U.shape[0], U.shape[1]
    if U.shape[2] != C:
        raise ValueError(f"kernel expects {U.shape[2]} input channels, got {C}")
    oh, ow = out_hw
    th, tw = (oh + m - 1) // m, (ow + m - 1) // m
    out = np.empty((N, K, oh, ow), x.dtype)
    none3 = np.zeros((1, 1, 1), x.dtype)
    b = np.zeros(1, x.dtype) if bias is None else np.ascontiguousarray(bias, x.dtype)
    eps = x.dtype.type(0 if ratio is None else ratio[1])
    for lo, hi, r0, r1 in tile_blocks(N, th, tw, max(C, K), taps, limit):
        cols = (hi - lo) * (r1 - r0) * tw
        V = ws.get((taps, C, cols), x.dtype, f"{tag}_in") if ws else np.empty((taps, C, cols), x.dtype)
        Mt = ws.get((taps, K, cols), x.dtype, f"{tag}_out") if ws else np.empty((taps, K, cols), x.dtype)
        per = (r1 - r0) * tw
        for n in range(lo, hi):
            zn = none3 if ratio is None else ratio[0][n]
            input_tiles(x[n], pads[0], pads[1], r0, r1, tw, V, (n - lo) * per, zn, eps, ratio is not None, *extra)
        (matmul or np.matmul)(U, V, out=Mt)
        for n in range(lo, hi):
            output_tiles(Mt, oh, ow, r0, r1, tw, (n - lo) * per, out[n], b, bias is not None,
                         none3 if mul is None else mul[n], mul is not None, *extra)
    return out
