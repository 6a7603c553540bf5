"""Convolution kernels (CPU, numba): forward with any weights, and its transpose.

Two forms each. For ungrouped convolutions the work goes to BLAS: ``im2col`` unfolds the
input so the forward is one GEMM, and ``col2im`` folds the GEMM result of the transposed
product back (optionally multiplied by the activation, which is LRP's last step, so the
product never makes an extra pass over memory). Grouped and depthwise convolutions, and
the average-pool window sums, use direct loops that are parallel over (sample, channel).

All functions take NCHW arrays of float32 or float64 (float64 is what the tests compare
against their references) and the geometry as plain ints:
``(sh, sw)`` strides, ``(pt, pl)`` top/left pads, ``(dh, dw)`` dilations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange


@dataclass(frozen=True)
class ConvGeometry:
    """Strides, pads (top, left, bottom, right), dilations and groups of a 2-D convolution."""

    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)
    groups: int = 1

    def out_size(self, h: int, w: int, kh: int, kw: int, ceil: bool = False) -> tuple[int, int]:
        """Output height/width (``ceil`` as in pooling's ``ceil_mode``)."""
        sizes = []
        for n, k, s, d, p0, p1 in ((h, kh, self.strides[0], self.dilations[0], self.pads[0], self.pads[2]),
                                   (w, kw, self.strides[1], self.dilations[1], self.pads[1], self.pads[3])):
            span = n + p0 + p1 - (d * (k - 1) + 1)
            if ceil:
                o = -(-span // s) + 1
                if (o - 1) * s >= n + p0:  # last window must start inside input or left pad
                    o -= 1
            else:
                o = span // s + 1
            sizes.append(max(o, 0))
        return sizes[0], sizes[1]


# --------------------------------------------------------------------------- im2col / col2im

@njit(cache=True, inline="always")
def _inside(n_out, stride, off, size):
    """Output positions lo:hi whose tap ``o·stride + off`` lies in 0:size."""
    lo = min(n_out, max(0, (-off + stride - 1) // stride))
    hi = max(lo, min(n_out, (size - 1 - off) // stride + 1)) if size - 1 - off >= 0 else lo
    return lo, hi


@njit(parallel=True, cache=True)
def im2col(x, kh, kw, sh, sw, pt, pl, dh, dw, oy0, oy1, ow, cols):
    """Unfold output rows ``oy0:oy1`` of one sample ``x`` (C, H, W) into ``cols``.

    ``cols`` is (C*kh*kw, (oy1-oy0)*ow); taps outside the input are 0. Unfolding a band
    of rows at a time keeps the buffer in cache for the GEMM that reads it.
    """
    C, H, W = x.shape
    for r in prange(C * kh * kw):
        c = r // (kh * kw)
        t = r % (kh * kw)
        i = t // kw
        j = t % kw
        # output columns lo:hi read inside the input (ix = ox·sw − pl + j·dw in 0:W)
        off = j * dw - pl
        lo, hi = _inside(ow, sw, off, W)
        for oy in range(oy0, oy1):
            iy = oy * sh - pt + i * dh
            # views indexed from 0: numba's negative-index wraparound on cols[r, base + ox]
            # and x[c, iy, ix] made LLVM scatter and gather each element
            row = cols[r, (oy - oy0) * ow:(oy - oy0 + 1) * ow]
            if iy < 0 or iy >= H:
                row[:] = 0.0
                continue
            row[:lo] = 0.0
            row[hi:] = 0.0
            src = x[c, iy, lo * sw + off:]
            dst = row[lo:hi]
            for u in range(hi - lo):
                dst[u] = src[u * sw]


@njit(parallel=True, cache=True)
def col2im(cols, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow, out, mul, use_mul):
    """Fold ``cols`` (C*kh*kw, oh*ow) back into ``out`` (C, H, W) by summing overlapping taps.

    Parallel over channels, so no two threads write the same element; each thread
    streams its channel's rows of ``cols`` once (this plain form vectorises better than
    one with precomputed bounds: measured 2x). With ``use_mul`` the result is multiplied
    element-wise by ``mul`` (C, H, W) before it is stored.
    """
    C, H, W = out.shape
    for c in prange(C):
        for y in range(H):
            for x in range(W):
                out[c, y, x] = 0.0
        for i in range(kh):
            for j in range(kw):
                r = (c * kh + i) * kw + j
                for oy in range(oh):
                    iy = oy * sh - pt + i * dh
                    if iy < 0 or iy >= H:
                        continue
                    base = oy * ow
                    for ox in range(ow):
                        ix = ox * sw - pl + j * dw
                        if ix >= 0 and ix < W:
                            out[c, iy, ix] += cols[r, base + ox]
        if use_mul:
            for y in range(H):
                for x in range(W):
                    out[c, y, x] *= mul[c, y, x]


# --------------------------------------------------------------------------- direct loops
#
# Grouped convolutions too narrow for BLAS (depthwise ones above all) run plane by plane.
# Each plane is laid out padded and split by stride phase, ``ph[ry, rx, my·Wq + mx] =
# x[my·sh + ry − pt, mx·sw + rx − pl]`` (0 outside the input), so that every tap reads one
# contiguous run of ``oh·Wq`` values for all output rows at once: the columns past ``ow``
# in each row compute values no one keeps. Short rows (EfficientNet's 7x7 and 14x14 maps)
# and strided taps both became long vector loops: those layers' kernels 2.6x faster on
# efficientnet-lite0 (80 → 31 ms per image at batch 8), each output's taps still summed in
# the same order.


@njit(cache=True, inline="always")
def _phase_len(n_out, stride, dil, k, pad, size):
    """Length of a phase plane along one axis: every tap's run of ``n_out`` rows (plus one,
    for the columns past the output's) and every input position fit."""
    return max(n_out + ((k - 1) * dil) // stride + 1, (size + pad + stride - 1) // stride)


@njit(cache=True, inline="always")
def _phase_cols(W, pl, rx, sw):
    """Columns m0:m1 of phase ``rx`` that hold input (``m·sw + rx − pl`` inside 0:W)."""
    m0 = (pl - rx + sw - 1) // sw if pl > rx else 0
    return m0, max(m0, (W - 1 + pl - rx) // sw + 1)


@njit(parallel=True, cache=True)
def conv_direct(x, w, sh, sw, pt, pl, dh, dw, groups, out):
    """``out`` (N, K, oh, ow) = grouped convolution of ``x`` (N, C, H, W) with ``w`` (K, C/g, kh, kw),
    accumulated in ``out``'s dtype, tap by tap over the phase planes (above); parallel over
    output planes."""
    N, C, H, W = x.shape
    K, Cg, kh, kw = w.shape
    oh, ow = out.shape[2], out.shape[3]
    Kg = K // groups
    Hq = _phase_len(oh, sh, dh, kh, pt, H)
    Wq = _phase_len(ow, sw, dw, kw, pl, W)
    L = oh * Wq
    for nk in prange(N * K):
        n = nk // K
        k = nk % K
        g = k // Kg
        acc = np.zeros(L, out.dtype)
        ph = np.zeros((sh, sw, Hq * Wq), x.dtype)
        for cc in range(Cg):
            plane = x[n, g * Cg + cc]
            for y in range(H):
                yy = y + pt
                base = (yy // sh) * Wq
                for rx in range(sw):
                    m0, m1 = _phase_cols(W, pl, rx, sw)
                    src = plane[y, m0 * sw + rx - pl:]
                    dst = ph[yy % sh, rx, base + m0:]
                    if sw == 1:
                        for u in range(m1 - m0):
                            dst[u] = src[u]
                    else:
                        for u in range(m1 - m0):
                            dst[u] = src[u * sw]
            for i in range(kh):
                for j in range(kw):
                    wv = w[k, cc, i, j]
                    src = ph[(i * dh) % sh, (j * dw) % sw, ((i * dh) // sh) * Wq + (j * dw) // sw:]
                    for t in range(L):
                        acc[t] += src[t] * wv
        res = out[n, k]
        for oy in range(oh):
            a = acc[oy * Wq:]
            for u in range(ow):
                res[oy, u] = a[u]


@njit(parallel=True, cache=True)
def conv_transpose_direct(s, w, sh, sw, pt, pl, dh, dw, groups, out, mul, use_mul):
    """``out`` (N, C, H, W) = transposed grouped convolution of ``s`` (N, K, oh, ow) with ``w``.

    The gradient of ``conv_direct`` with respect to its input: each tap adds ``w * s`` as one
    run into a phase plane of the padded input (``s`` copied into rows of ``Wq``, zeros past
    ``ow``), which are then read back into place. Parallel over (sample, input channel), each
    thread owning its plane; zero weights (z⁺'s w⁺) are skipped. ``use_mul`` multiplies by
    ``mul`` as the result is stored.
    """
    N, C, H, W = out.shape
    K, Cg, kh, kw = w.shape
    oh, ow = s.shape[2], s.shape[3]
    Kg = K // groups
    Hq = _phase_len(oh, sh, dh, kh, pt, H)
    Wq = _phase_len(ow, sw, dw, kw, pl, W)
    L = oh * Wq
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        g = c // Cg
        cc = c % Cg
        acc = np.zeros((sh, sw, Hq * Wq), out.dtype)
        sp = np.zeros(L, s.dtype)
        for kk in range(Kg):
            k = g * Kg + kk
            for oy in range(oh):
                src = s[n, k, oy]
                dst = sp[oy * Wq:]
                for u in range(ow):
                    dst[u] = src[u]
            for i in range(kh):
                for j in range(kw):
                    wv = w[k, cc, i, j]
                    if wv == 0.0:
                        continue
                    dst = acc[(i * dh) % sh, (j * dw) % sw, ((i * dh) // sh) * Wq + (j * dw) // sw:]
                    for t in range(L):
                        dst[t] += wv * sp[t]
        res = out[n, c]
        for y in range(H):
            yy = y + pt
            base = (yy // sh) * Wq
            for rx in range(sw):
                m0, m1 = _phase_cols(W, pl, rx, sw)
                x0 = m0 * sw + rx - pl
                src = acc[yy % sh, rx, base + m0:]
                dst = res[y, x0:]
                if use_mul:
                    m = mul[n, c, y, x0:]
                    for u in range(m1 - m0):
                        dst[u * sw] = src[u] * m[u * sw]
                else:
                    for u in range(m1 - m0):
                        dst[u * sw] = src[u]


# --------------------------------------------------------------------------- dispatch

#: a grouped convolution with at least this many input channels per group goes to BLAS.
GEMM_MIN_CHANNELS = 16
#: elements of one unfolded block: small enough to stay in cache between im2col and GEMM.
TILE_ELEMENTS = 1 << 20


class Workspace:
    """Reusable scratch buffers, so large temporaries are not re-allocated (and re-faulted) per call."""

    def __init__(self) -> None:
        self._buf: dict[tuple[str, np.dtype], np.ndarray] = {}

    def get(self, shape: tuple[int, ...], dtype, slot: str = "cols") -> np.ndarray:
        """A C-contiguous array of ``shape``; one buffer per (slot, dtype), grown on demand."""
        dtype = np.dtype(dtype)
        n = int(np.prod(shape))
        buf = self._buf.get((slot, dtype))
        if buf is None or buf.size < n:
            buf = self._buf[(slot, dtype)] = np.empty(n, dtype)
        return buf[:n].reshape(shape)


def _use_gemm(w: np.ndarray, groups: int) -> bool:
    return groups == 1 or w.shape[1] >= GEMM_MIN_CHANNELS


def _pointwise(w: np.ndarray, geom: ConvGeometry) -> bool:
    """A 1x1, stride-1, unpadded, ungrouped convolution: each sample's (C, H·W) map is
    already the matrix im2col would copy out."""
    return (w.shape[2:] == (1, 1) and tuple(geom.strides) == (1, 1) and not any(geom.pads)
            and geom.groups == 1)


def _conv_gemm(x, w, geom, oh, ow, out, ws, matmul, stacked=None):
    """im2col + BLAS in cache-sized blocks: bands of output rows, or several small samples.
    ``matmul(a, b, out=)`` runs each product (the backend splits it over its threads).
    1x1 convolutions (``_pointwise``) skip im2col: one product per sample straight from the
    maps into the output, a batch's as one stacked ``stacked(a, b, out=)`` (the backend
    splits the stack over its threads; efficientnet-lite0's expand and project layers)."""
    N, C, H, W = x.shape
    K, Cg, kh, kw = w.shape
    g = geom.groups
    (sh, sw), (pt, pl), (dh, dw) = geom.strides, geom.pads[:2], geom.dilations
    Kg, L, rows = K // g, oh * ow, Cg * kh * kw
    wm = w.reshape(g, Kg, rows)
    if _pointwise(w, geom) and (oh, ow) == (H, W) and x.flags.c_contiguous:
        xs, outs = x.reshape(N, C, L), out.reshape(N, K, L)
        if N > 1:
            (stacked or np.matmul)(np.broadcast_to(wm[0], (N, K, C)), xs, out=outs)
        else:
            matmul(wm[0], xs[0], out=outs[0])
        return
    if rows * L <= TILE_ELEMENTS:  # small maps: stack samples into one GEMM
        per = max(1, TILE_ELEMENTS // (rows * L))
        for lo in range(0, N, per):
            hi = min(N, lo + per)
            nb = hi - lo
            cols = ws.get((rows, nb * L), x.dtype)
            for gi in range(g):
                for n in range(lo, hi):
                    im2col(x[n, gi * Cg:(gi + 1) * Cg], kh, kw, sh, sw, pt, pl, dh, dw, 0, oh, ow,
                           cols[:, (n - lo) * L:(n - lo + 1) * L])
                if nb == 1:
                    matmul(wm[gi], cols, out=out[lo, gi * Kg:(gi + 1) * Kg].reshape(Kg, L))
                else:
                    z = matmul(wm[gi], cols, out=np.empty((Kg, nb * L), x.dtype)).reshape(Kg, nb, L)
                    out[lo:hi, gi * Kg:(gi + 1) * Kg] = z.transpose(1, 0, 2).reshape(nb, Kg, oh, ow)
        return
    band = max(1, TILE_ELEMENTS // (rows * ow))
    for n in range(N):
        for gi in range(g):
            flat = out[n, gi * Kg:(gi + 1) * Kg].reshape(Kg, L)
            xg = x[n, gi * Cg:(gi + 1) * Cg]
            for y0 in range(0, oh, band):
                y1 = min(oh, y0 + band)
                cols = ws.get((rows, (y1 - y0) * ow), x.dtype)
                im2col(xg, kh, kw, sh, sw, pt, pl, dh, dw, y0, y1, ow, cols)
                matmul(wm[gi], cols, out=flat[:, y0 * ow:y1 * ow])


def conv2d(x: np.ndarray, w: np.ndarray, geom: ConvGeometry, bias: np.ndarray | None = None,
           out_hw: tuple[int, int] | None = None, ws: Workspace | None = None, matmul=None,
           stacked=None) -> np.ndarray:
    """Grouped 2-D convolution ``x ⋆ w (+ bias)``, NCHW, in ``x``'s dtype. ``matmul(a, b, out=)``
    runs the products (numpy's by default; the backend's splits them over its threads, as BLAS
    runs single-threaded during a backward pass), ``stacked`` a stack of them (1x1 layers)."""
    N, C, H, W = x.shape
    K, Cg, kh, kw = w.shape
    oh, ow = out_hw or geom.out_size(H, W, kh, kw)
    out = np.empty((N, K, oh, ow), x.dtype)
    if _use_gemm(w, geom.groups):
        _conv_gemm(x, w, geom, oh, ow, out, ws or Workspace(), matmul or np.matmul, stacked)
    else:
        (sh, sw), (pt, pl), (dh, dw) = geom.strides, geom.pads[:2], geom.dilations
        conv_direct(x, w, sh, sw, pt, pl, dh, dw, geom.groups, out)
    if bias is not None:
        out += bias.reshape(1, K, 1, 1).astype(x.dtype, copy=False)
    return out


def transpose_as_conv(geom: ConvGeometry, kh: int, kw: int) -> ConvGeometry | None:
    """For a stride-1 convolution, the geometry of the plain convolution equal to its transpose.

    With stride 1 the transpose is a convolution of the output with the flipped, channel-
    swapped kernel (``flip_kernel``) padded by ``d(k-1) - p`` on each side. That form unfolds
    the small side and lets BLAS write the result directly, instead of unfolding into a
    large buffer and folding it back (measured about 2x less memory traffic on VGG16).
    ``None`` when the stride is not 1 or a pad exceeds the kernel's reach.
    """
    if geom.strides != (1, 1):
        return None
    ph, pw = geom.dilations[0] * (kh - 1), geom.dilations[1] * (kw - 1)
    pt, pl, pb, pr = geom.pads
    pads = (ph - pt, pw - pl, ph - pb, pw - pr)
    if min(pads) < 0:
        return None
    return ConvGeometry((1, 1), pads, geom.dilations, geom.groups)


def flip_kernel(w: np.ndarray, groups: int) -> np.ndarray:
    """(K, C/g, kh, kw) → (C, K/g, kh, kw): per group, swap in/out channels and rotate 180°."""
    K, Cg, kh, kw = w.shape
    Kg = K // groups
    wg = w.reshape(groups, Kg, Cg, kh, kw).transpose(0, 2, 1, 3, 4)[:, :, :, ::-1, ::-1]
    return np.ascontiguousarray(wg.reshape(groups * Cg, Kg, kh, kw))


def conv2d_transpose(s: np.ndarray, w: np.ndarray, geom: ConvGeometry, in_hw: tuple[int, int],
                     mul: np.ndarray | None = None, ws: Workspace | None = None,
                     flipped: np.ndarray | None = None, matmul=None, stacked=None) -> np.ndarray:
    """Transposed convolution of ``s`` (N, K, oh, ow) back to (N, C, *in_hw); times ``mul`` if given.

    ``flipped`` (``flip_kernel(w)``, cached by the caller) enables the stride-1 fast path;
    ``matmul`` and ``stacked`` as in ``conv2d``. A 1x1 stride-1 layer is one product per
    sample straight into the output (efficientnet-lite0's expand layers went through im2col's
    fold-back, a copy of every product).
    """
    matmul = matmul or np.matmul
    N, K, oh, ow = s.shape
    _, Cg, kh, kw = w.shape
    g = geom.groups
    C = Cg * g
    H, W = in_hw
    (sh, sw), (pt, pl), (dh, dw) = geom.strides, geom.pads[:2], geom.dilations
    use_mul = mul is not None
    if _pointwise(w, geom) and (oh, ow) == (H, W):  # each sample's map is wᵀ @ s[n]: no folding back
        out = np.empty((N, C, H, W), s.dtype)
        wt, ss, outs = w.reshape(K, C).T, np.ascontiguousarray(s).reshape(N, K, H * W), out.reshape(N, C, H * W)
        if N > 1:
            (stacked or np.matmul)(np.broadcast_to(wt, (N, C, K)), ss, out=outs)
        else:
            matmul(wt, ss[0], out=outs[0])
        if use_mul:
            out *= mul
        return out
    as_conv = transpose_as_conv(geom, kh, kw) if flipped is not None and _use_gemm(flipped, g) else None
    if as_conv is not None:
        out = conv2d(s, flipped, as_conv, None, (H, W), ws, matmul, stacked)
        if use_mul:
            out *= mul
        return out
    out = np.empty((N, C, H, W), s.dtype)
    if _use_gemm(w, g):
        ws = ws or Workspace()
        Kg, L, rows = K // g, oh * ow, Cg * kh * kw
        wm = w.reshape(g, Kg, rows)
        dummy = np.zeros((1, 1, 1), s.dtype)
        cols = ws.get((rows, L), s.dtype)
        for n in range(N):
            for gi in range(g):
                matmul(wm[gi].T, s[n, gi * Kg:(gi + 1) * Kg].reshape(Kg, L), out=cols)
                m = mul[n, gi * Cg:(gi + 1) * Cg] if use_mul else dummy
                col2im(cols, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow, out[n, gi * Cg:(gi + 1) * Cg], m, use_mul)
    else:
        m = mul if use_mul else np.zeros((1, 1, 1, 1), s.dtype)
        conv_transpose_direct(s, w, sh, sw, pt, pl, dh, dw, g, out, m, use_mul)
    return out
