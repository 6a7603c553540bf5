"""Shared-memory tiled GEMM (CUDA, numba): ``C = (alpha·op(A)·op(B) + bias) ⊙ mul + beta·C``.

One kernel source per tile shape, written out by ``_kernel_source`` and compiled once per
dtype (float32 and float64). A block computes a ``BM`` x ``BN`` tile of C with ``TY`` x ``TX``
threads, each thread a ``BM/TY`` x ``BN/TX`` micro-tile whose accumulators are plain
variables (registers). Its rows are groups of four neighbours spaced by ``4·TY`` (columns
likewise), read from shared memory with 16-byte vector loads (``vector_load.load4``). K is
walked in ``BK`` slices through double-buffered shared tiles: the next slice's global values
wait in registers while the current one is multiplied, one barrier per slice. Global loads
are bounds-checked (zero fill), so any shape works, and follow the operand's layout
(``trans_a``/``trans_b``) so neighbouring threads read neighbouring addresses.

Tiles (``choose_tile``): ``large`` 128x128 (16x16 threads, 8x8 each, BK 16) above 64 rows,
``mid`` 64x128 (8x16 threads, 8x8 each) for 33-64 rows (VGG16's first block: 15.5 TFLOP/s
where the 128-row tile, half of it padding, gave 9.9), ``thin`` 32x128 (8x16 threads, 4x8
each) for at most 32 rows (dense layers at small batch sizes); ``small`` 32x32 (8x8
threads, 4x4 each, BK 8) is the default under numba's CUDA simulator, which runs every
thread in Python (the tests run all four). On an H200, float32 (2026-12-04,
``tests/results/gpu-2026-12-04.json``): a 4096³ product 21.4 TFLOP/s (the earlier kernel,
with scalar shared loads and a loop numba kept rolled, 12.6; cuBLAS without TF32 49.7);
VGG16's transposed-convolution products at batch 8 9.8-12.6 (7.9-10.8), but 5.8 (7.6) for
conv1_2's, whose K of 64 leaves each tile four slices and an epilogue of uncoalesced stores.

Products with few output tiles and a long K (a dense layer at small batch) are split along
K (``split_k``): each split writes its partial tile to a scratch buffer and a second kernel
sums the partials in a fixed order (deterministic) and applies the epilogue.
"""

from __future__ import annotations

import math

import numpy as np
from numba import config, cuda

from .launch import MAX_BLOCKS, SIMULATED, DeviceWorkspace, as_device, grid1, scratch
from .vector_load import load4

#: name: (BM, BN, BK, TY, TX); each thread computes (BM/TY) x (BN/TX) outputs.
TILES = {
    "large": (128, 128, 16, 16, 16),
    "mid": (64, 128, 16, 8, 16),
    "thin": (32, 128, 16, 8, 16),
    "small": (32, 32, 8, 8, 8),
}
#: at most this many rows of C use the ``thin`` tile, at most MID_ROWS the ``mid`` one.
THIN_ROWS = 32
MID_ROWS = 64
PAD = 4  # shared-memory row padding (a multiple of 4 keeps rows 16-byte aligned)

#: split K when the grid has fewer output tiles than this (two waves on 132 SMs) ...
TARGET_BLOCKS = 264
#: ... and each split still gets at least this much of K; at most MAX_SPLIT splits.
SPLIT_MIN_K = 512
MAX_SPLIT = 32


def _kernel_source(BM: int, BN: int, BK: int, TY: int, TX: int) -> str:
    """Python source of the tiled GEMM kernel for one tile shape, its inner loops written out.

    numba leaves a loop over a compile-time range as a loop, with a ``cuda.local.array``
    accumulator in local memory around it; written out, the ``TM·TN`` accumulators and the
    operands are plain variables (registers), and every shared-memory address is a base
    plus a constant. A thread's micro-tile rows are groups of four neighbours (rows
    ``4·ty + 4·TY·g + 0..3``, columns likewise), read with ``load4``: per slice of K a thread
    issues ``(TM + TN)/4`` shared loads for ``TM·TN`` multiply-adds, where scalar loads
    took as many shared-memory cycles as the multiply-adds. Shared tiles are
    double-buffered: while a thread multiplies slice ``k0`` it holds slice ``k0 + BK``'s
    global values in registers and stores them into the other buffer afterwards, so one
    ``syncthreads`` per slice suffices (the buffer written in slice t was last read in
    slice t − 1, before the barrier that ended it).
    """
    NT = TX * TY
    TM, TN = BM // TY, BN // TX
    LA, LB = BM * BK // NT, BN * BK // NT
    SA, SB = BM + PAD, BN + PAD
    align = "" if SIMULATED else ", alignment=16"
    body = [
        "tx = cuda.threadIdx.x",
        "ty = cuda.threadIdx.y",
        f"tid = ty * {TX} + tx",
        "M = c.shape[0]",
        "N = c.shape[1]",
        "K = b.shape[1] if trans_b else b.shape[0]",
        f"row0 = cuda.blockIdx.y * {BM}",
        f"col0 = cuda.blockIdx.x * {BN}",
        "k_lo = cuda.blockIdx.z * k_chunk",
        "k_hi = min(K, k_lo + k_chunk)",
        f"As = cuda.shared.array({2 * BK * SA}, dtype=c.dtype{align})",
        f"Bs = cuda.shared.array({2 * BK * SB}, dtype=c.dtype{align})",
        "zero = c.dtype.type(0)",
        # the element of a tile a thread stages as its l-th: (row or column, k) = base + l·step;
        # neighbouring threads take neighbours along the operand's contiguous axis
        "if trans_a:",
        f"    am = tid % {BM}", f"    ak = tid // {BM}", "    sm = 0", f"    sk = {NT // BM}",
        "else:",
        f"    am = tid // {BK}", f"    ak = tid % {BK}", f"    sm = {NT // BK}", "    sk = 0",
        "if trans_b:",
        f"    bn = tid // {BK}", f"    bk = tid % {BK}", f"    sn = {NT // BK}", "    tk = 0",
        "else:",
        f"    bn = tid % {BN}", f"    bk = tid // {BN}", "    sn = 0", f"    tk = {NT // BN}",
    ]

    def stage(k0: str) -> list[str]:
        out = []
        for l in range(LA):
            out += [f"gm = row0 + am + {l} * sm", f"gk = {k0} + ak + {l} * sk", f"pa{l} = zero",
                    "if gm < M and gk < k_hi:", f"    pa{l} = a[gk, gm] if trans_a else a[gm, gk]"]
        for l in range(LB):
            out += [f"gn = col0 + bn + {l} * sn", f"gk = {k0} + bk + {l} * tk", f"pb{l} = zero",
                    "if gn < N and gk < k_hi:", f"    pb{l} = b[gn, gk] if trans_b else b[gk, gn]"]
        return out

    def store(buf: str) -> list[str]:
        return ([f"As[({buf} * {BK} + ak + {l} * sk) * {SA} + am + {l} * sm] = pa{l}" for l in range(LA)]
                + [f"Bs[({buf} * {BK} + bk + {l} * tk) * {SB} + bn + {l} * sn] = pb{l}" for l in range(LB)])

    body += [f"c{i}_{j} = zero" for i in range(TM) for j in range(TN)]
    body += stage("k_lo") + store("0") + ["cuda.syncthreads()", "buf = 0", f"for k0 in range(k_lo, k_hi, {BK}):"]
    loop = [f"nxt = k0 + {BK}", "more = nxt < k_hi", "if more:"] + ["    " + t for t in stage("nxt")]
    loop += [f"abase = buf * {BK * SA} + 4 * ty", f"bbase = buf * {BK * SB} + 4 * tx"]
    for kk in range(BK):
        for g in range(TM // 4):
            loop.append(", ".join(f"a{4 * g + e}" for e in range(4)) + f" = load4(As, abase + {kk * SA + 4 * TY * g})")
        for g in range(TN // 4):
            loop.append(", ".join(f"b{4 * g + e}" for e in range(4)) + f" = load4(Bs, bbase + {kk * SB + 4 * TX * g})")
        loop += [f"c{i}_{j} += a{i} * b{j}" for i in range(TM) for j in range(TN)]
    loop += ["if more:"] + ["    " + t for t in store("(1 - buf)")] + ["cuda.syncthreads()", "buf = 1 - buf"]
    body += ["    " + t for t in loop]
    # epilogue, as in splitk_reduce (kernels cannot share device functions and still compile
    # to PTX without a GPU); split products write their raw partials. Written as a loop over a
    # local copy of the accumulators: once per tile, and a fraction of the code written out.
    body.append(f"acc = cuda.local.array(({TM}, {TN}), dtype=c.dtype)")
    body += [f"acc[{i}, {j}] = c{i}_{j}" for i in range(TM) for j in range(TN)]
    body += ["split = cuda.gridDim.z > 1",
             f"for i in range({TM}):",
             f"    r = row0 + 4 * ty + {4 * TY} * (i // 4) + i % 4",
             "    if r < M:",
             f"        for j in range({TN}):",
             f"            q = col0 + 4 * tx + {4 * TX} * (j // 4) + j % 4",
             "            if q < N:",
             "                if split:",
             "                    part[cuda.blockIdx.z, r, q] = acc[i, j]",
             "                    continue",
             "                v = alpha * acc[i, j]",
             "                if bias_axis == 0:",
             "                    v += bias[r]",
             "                elif bias_axis == 1:",
             "                    v += bias[q]",
             "                if has_mul:",
             "                    v *= mul[r, q]",
             "                if beta != 0:",
             "                    v += beta * c[r, q]",
             "                c[r, q] = v"]
    head = (f"def {kernel_name(BM, BN, BK, TY, TX)}(a, b, c, part, alpha, beta, trans_a, trans_b, k_chunk, bias, "
            "bias_axis, mul, has_mul):")
    return "\n".join([head] + ["    " + t for t in body]) + "\n"


def kernel_name(BM: int, BN: int, BK: int, TY: int, TX: int) -> str:
    """The kernel's name in PTX and in profilers (Nsight lists each tile shape apart)."""
    return f"gemm_{BM}x{BN}x{BK}_{TY}x{TX}"


def check_tile(BM: int, BN: int, BK: int, TY: int, TX: int) -> None:
    """Refuse a tile shape the kernel would compute wrongly: each thread takes groups of
    four rows and columns, and the threads stage every element of both shared tiles
    (``BM·BK`` and ``BK·BN`` divided evenly, along whole rows)."""
    NT = TX * TY
    if min(BM, BN, BK, TY, TX) < 1 or BM % (4 * TY) or BN % (4 * TX) or NT % BM or NT % BN or NT % BK \
            or BK * BM % NT or BK * BN % NT:
        raise ValueError(f"tile {(BM, BN, BK, TY, TX)}: each thread takes groups of four rows and "
                         "columns, and the threads must stage whole rows of each tile")


def _make_gemm_kernel(BM: int, BN: int, BK: int, TY: int, TX: int):
    """The tiled GEMM kernel for one tile shape (the sizes are compile-time constants)."""
    check_tile(BM, BN, BK, TY, TX)
    source = _kernel_source(BM, BN, BK, TY, TX)
    namespace = {"cuda": cuda, "load4": load4, "__name__": __name__}
    exec(compile(source, f"<gemm kernel {BM}x{BN}x{BK}, {TY}x{TX} threads>", "exec"), namespace)
    return cuda.jit(namespace[kernel_name(BM, BN, BK, TY, TX)])


#: one kernel per tile shape (module attributes, so the PTX test finds and compiles each)
gemm_kernel = _make_gemm_kernel(*TILES["large"])
gemm_kernel_mid = _make_gemm_kernel(*TILES["mid"])
gemm_kernel_thin = _make_gemm_kernel(*TILES["thin"])
gemm_kernel_small = _make_gemm_kernel(*TILES["small"])
KERNELS = {"large": gemm_kernel, "mid": gemm_kernel_mid, "thin": gemm_kernel_thin, "small": gemm_kernel_small}


@cuda.jit
def splitk_reduce(part, c, alpha, beta, bias, bias_axis, mul, has_mul):
    """C = epilogue(alpha · Σ_z part[z]); grid-stride over the elements of C."""
    S, M, N = part.shape
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < M * N:
        r = i // N
        q = i % N
        v = part[0, r, q]
        for z in range(1, S):
            v += part[z, r, q]
        v *= alpha
        if bias_axis == 0:
            v += bias[r]
        elif bias_axis == 1:
            v += bias[q]
        if has_mul:
            v *= mul[r, q]
        if beta != 0:
            v += beta * c[r, q]
        c[r, q] = v
        i += step


#: static shared memory a block may hold (CUDA's limit without opting in to more)
SHARED_BYTES = 48 * 1024


def shared_bytes(tile: str, dtype) -> int:
    """Static shared memory of a ``tile`` kernel in ``dtype``: two buffers of each operand."""
    BM, BN, BK = TILES[tile][:3]
    return 2 * BK * (BM + PAD + BN + PAD) * np.dtype(dtype).itemsize


def choose_tile(m: int, dtype=np.float32) -> str:
    """Tile for an ``m``-row product: ``small`` under the simulator, else the narrowest of
    ``thin``, ``mid`` and ``large`` that is not mostly padding and whose shared tiles fit
    (in float64 only ``thin``'s do)."""
    if config.ENABLE_CUDASIM:
        return "small"
    tile = "thin" if m <= THIN_ROWS else "mid" if m <= MID_ROWS else "large"
    return tile if shared_bytes(tile, dtype) <= SHARED_BYTES else "thin"  # float64's large tiles do not fit


def choose_split(m: int, n: int, k: int, tile: str = "large") -> int:
    """Number of K splits: 1 unless the output has too few tiles to fill the GPU and K is long."""
    BM, BN = TILES[tile][:2]
    tiles = math.ceil(m / BM) * math.ceil(n / BN)
    if tiles >= TARGET_BLOCKS or k < 2 * SPLIT_MIN_K:
        return 1
    return max(1, min(math.ceil(TARGET_BLOCKS / tiles), k // SPLIT_MIN_K, MAX_SPLIT))


def gemm(a, b, out=None, trans_a: bool = False, trans_b: bool = False, alpha: float = 1.0,
         beta: float = 0.0, bias=None, bias_axis: int = 0, mul=None, split_k: int | None = None,
         ws: DeviceWorkspace | None = None, tile: str | None = None):
    """``out = (alpha·op(a)·op(b) + bias) ⊙ mul + beta·out`` on 2-D row-major device arrays.

    Parameters
    ----------
    a, b : (M, K) and (K, N) arrays, or their transposes with ``trans_a``/``trans_b``
        (any strides: a transposed view works as well as a copy).
    out : (M, N) device array in the operands' dtype; allocated when None (then ``beta`` must be 0).
    bias : optional vector added per row (``bias_axis=0``, length M) or per column (1, length N).
    mul : optional (M, N) array multiplied in element-wise after the bias.
    split_k : K splits (None: ``choose_split``). ``beta = 0`` never reads ``out``.
    tile : a key of ``TILES`` (None: ``choose_tile``).

    Returns
    -------
    ``out``.
    """
    a = as_device(a)
    dtype = np.dtype(a.dtype)
    b = as_device(b, dtype)
    M, K = (a.shape[1], a.shape[0]) if trans_a else a.shape
    Kb, N = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if K != Kb:
        raise ValueError(f"gemm: inner dimensions differ ({M}x{K} times {Kb}x{N})")
    if out is None:
        if beta != 0:
            raise ValueError("gemm: beta != 0 needs an existing out")
        out = cuda.device_array((M, N), dtype=dtype)
    elif tuple(out.shape) != (M, N) or np.dtype(out.dtype) != dtype:
        raise ValueError(f"gemm: out must be ({M}, {N}) {dtype}, got {tuple(out.shape)} {out.dtype}")
    if M == 0 or N == 0:
        return out
    has_mul = mul is not None
    mul = as_device(mul, dtype) if has_mul else out
    if has_mul and tuple(mul.shape) != (M, N):
        raise ValueError(f"gemm: mul must be ({M}, {N})")
    if bias is None:
        bias_axis, bias = -1, out[0]
    else:
        bias = as_device(bias, dtype)
    tile = tile or choose_tile(M, dtype)
    if shared_bytes(tile, dtype) > SHARED_BYTES:
        raise ValueError(f"gemm: the {tile} tile needs {shared_bytes(tile, dtype)} bytes of shared memory in {dtype}")
    BM, BN, BK, TY, TX = TILES[tile]
    split = max(1, int(split_k)) if split_k else choose_split(M, N, K, tile)
    k_chunk = math.ceil(max(K, 1) / split / BK) * BK
    split = max(1, math.ceil(K / k_chunk))
    if split > 1:
        part = scratch(ws, (split, M, N), dtype, "splitk")
    else:  # unused by the kernel; any 3-D array of the dtype will do
        part = out.reshape(1, M, N) if out.is_c_contiguous() else scratch(ws, (1, 1, 1), dtype, "splitk")
    al, be = dtype.type(alpha), dtype.type(beta)
    grid = (math.ceil(N / BN), math.ceil(M / BM), split)
    KERNELS[tile][grid, (TX, TY)](a, b, out, part, al, be, bool(trans_a), bool(trans_b), k_chunk,
                                  bias, bias_axis, mul, has_mul)
    if split > 1:
        blk, thr = grid1(M * N, cap=MAX_BLOCKS)
        splitk_reduce[blk, thr](part, out, al, be, bias, bias_axis, mul, has_mul)
    return out
