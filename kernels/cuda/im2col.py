"""Layout kernels of the GEMM forms of the convolution (CUDA, numba): unfold and fold.

``im2col_kernel`` unfolds input patches into a column buffer for the forward GEMM and
``unstack_kernel`` moves a multi-sample GEMM result into NCHW; ``stack_kernel`` lays the
transposed convolution's signal out as a matrix (applying LRP's stabilised divide) and
``col2im_kernel`` folds the Wᵀ·S columns back onto the input, each thread gathering the
taps of one input element (no atomics), times ``mul``. One thread per element written
(``im2col_kernel``: a block row per row of the buffer), ``launch.THREADS`` per block;
columns index ``b·oh·ow + oy·ow + ox`` for sample ``n0 + b``.
"""

from __future__ import annotations

from numba import cuda


@cuda.jit
def im2col_kernel(x, n0, c0, sh, sw, pt, pl, dh, dw, kh, kw, oh, ow, cols):
    """cols[(cc·kh + i)·kw + j, b·oh·ow + oy·ow + ox] = x[n0 + b, c0 + cc, iy, ix], 0 outside.

    A block row (``blockIdx.y``, grid-stride) is one row of ``cols``: its threads share the
    row's channel and tap and each splits only its column into (b, oy, ox), two divisions
    where a thread per element of the whole buffer took nine."""
    T = cols.shape[1]
    col = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if col >= T:
        return
    L = oh * ow
    b = col // L
    l = col - b * L
    oy = l // ow
    ox = l - oy * ow
    r = cuda.blockIdx.y
    while r < cols.shape[0]:
        tap = r % (kh * kw)
        iy = oy * sh - pt + (tap // kw) * dh
        ix = ox * sw - pl + (tap % kw) * dw
        if iy >= 0 and iy < x.shape[2] and ix >= 0 and ix < x.shape[3]:
            cols[r, col] = x[n0 + b, c0 + r // (kh * kw), iy, ix]
        else:
            cols[r, col] = 0
        r += cuda.gridDim.y


@cuda.jit
def unstack_kernel(tmp, out, n0, k0):
    """out[n0 + b, k0 + k, oy, ox] = tmp[k, b·oh·ow + oy·ow + ox]."""
    t = cuda.grid(1)
    T = tmp.shape[1]
    if t >= tmp.shape[0] * T:
        return
    ow = out.shape[3]
    L = out.shape[2] * ow
    k = t // T
    col = t % T
    l = col % L
    out[n0 + col // L, k0 + k, l // ow, l % ow] = tmp[k, col]


@cuda.jit
def stack_kernel(s, n0, k0, z, eps, use_ratio, buf):
    """buf[k, b·oh·ow + l] = ratio(s)[n0 + b, k0 + k, l] (plain ``s`` unless ``use_ratio``)."""
    t = cuda.grid(1)
    T = buf.shape[1]
    if t >= buf.shape[0] * T:
        return
    ow = s.shape[3]
    L = s.shape[2] * ow
    k = t // T
    col = t % T
    n = n0 + col // L
    oy = (col % L) // ow
    ox = col % ow
    v = s[n, k0 + k, oy, ox]
    if use_ratio:
        zi = z[n, k0 + k, oy, ox]
        d = zi + eps if zi >= 0 else zi - eps
        if d != 0:
            v = v / d
        else:
            v = buf.dtype.type(0)
    buf[k, col] = v


@cuda.jit
def col2im_kernel(cols, n0, c0, sh, sw, pt, pl, dh, dw, kh, kw, oh, ow, mul, has_mul, out):
    """out[n0 + b, c0 + cc, y, x] = Σ_taps cols[(cc·kh + i)·kw + j, b·oh·ow + oy·ow + ox] (· mul).

    Stride 1 (most layers) takes a branch without the divisions by the stride: up to four
    per tap otherwise."""
    t = cuda.grid(1)
    H = out.shape[2]
    W = out.shape[3]
    L = oh * ow
    Cg = cols.shape[0] // (kh * kw)
    nb = cols.shape[1] // L
    if t >= nb * Cg * H * W:
        return
    x = t % W
    y = (t // W) % H
    cc = (t // (W * H)) % Cg
    b = t // (W * H * Cg)
    acc = out.dtype.type(0)
    base = b * L
    if sh == 1 and sw == 1:
        for i in range(kh):
            oy = y + pt - i * dh
            if oy < 0:
                break
            if oy < oh:
                row = (cc * kh + i) * kw
                for j in range(kw):
                    ox = x + pl - j * dw
                    if ox < 0:
                        break
                    if ox < ow:
                        acc += cols[row + j, base + oy * ow + ox]
    else:
        for i in range(kh):
            ty = y + pt - i * dh
            if ty < 0:
                break
            if ty % sh != 0 or ty // sh >= oh:
                continue
            for j in range(kw):
                tx = x + pl - j * dw
                if tx < 0:
                    break
                if tx % sw != 0 or tx // sw >= ow:
                    continue
                acc += cols[(cc * kh + i) * kw + j, base + (ty // sh) * ow + tx // sw]
    if has_mul:
        acc *= mul[n0 + b, c0 + cc, y, x]
    out[n0 + b, c0 + cc, y, x] = acc
