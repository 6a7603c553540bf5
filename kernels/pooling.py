"""MaxPool switches and switch unpooling (CPU, numba): winner-take-all.

ONNX MaxPool's ``Indices`` output holds, for each pooled value, the flat index of its
maximum in the whole NCHW input tensor (batch and channel offsets included). Relevance
(or a deconvolution signal) goes back to exactly that element; when windows overlap, two
outputs can pick the same element and their values add up. ``max_switches`` computes
those indices from the pool's input as onnxruntime does, so the session need not ask for
them (a MaxPool with an ``Indices`` output leaves onnxruntime's blocked NCHWc path).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .conv import _inside


@njit(parallel=True, cache=True)
def _unpool(values, indices, plane_out, out):
    # values/indices: (P, L) with P = N*C planes; out: (P * plane_out,) flat.
    P, L = values.shape
    for p in prange(P):
        base = p * plane_out
        out[base:base + plane_out] = 0.0  # a slice: out[base + i] was a scatter (index wraparound)
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


@njit(cache=True, inline="always")
def _first_max(plane, y0, x0, i0, i1, j0, j1, dh, dw, W):
    """Flat index of the first maximum over taps i0:i1, j0:j1 of the window at (y0, x0): the
    first tap, then each strictly greater one (a NaN first tap stays; a later one never
    wins); row -1, column -1 where the window has no tap inside the input."""
    if i0 >= i1 or j0 >= j1:
        return -W - 1
    best = plane[y0 + i0 * dh, x0 + j0 * dw]
    idx = (y0 + i0 * dh) * W + x0 + j0 * dw
    for i in range(i0, i1):
        y = y0 + i * dh
        for j in range(j0, j1):
            xx = x0 + j * dw
            v = plane[y, xx]
            if v > best:
                best = v
                idx = y * W + xx
    return idx


@njit(parallel=True, cache=True)
def _max_switches(x, kh, kw, sh, sw, pt, pl, dh, dw, first_plane, out):
    # x: (P, H, W) planes; out: (P, oh, ow) flat NCHW indices. As onnxruntime's MaxPool:
    # over the taps inside the input in row-major order, the first one, then each strictly
    # greater one (ties, -inf and a leading NaN keep the first; tested against onnxruntime).
    # Windows wholly inside the input, the common case, skip the bounds: 2x2 and 3x3 ones
    # run over row slices that start at their first column, so every index is provably
    # >= 0, numba adds no negative-index wraparound and the compiler vectorises the loop
    # (VGG16's first pool: 5.4 ms per image with a bounds-checked loop over taps, 0.5 ms).
    P, H, W = x.shape
    oh, ow = out.shape[1], out.shape[2]
    unrolled = dh == 1 and dw == 1 and ((kh == 2 and kw == 2) or (kh == 3 and kw == 3))
    # output columns whose windows lie wholly inside the input's columns: lo:hi
    lo, hi = _inside(ow, sw, -pl, W - (kw - 1) * dw)
    for p in prange(P):
        base = (first_plane + p) * H * W
        plane = x[p]
        for oy in range(oh):
            o = out[p, oy]
            y0 = oy * sh - pt
            i0 = 0 if y0 >= 0 else (-y0 + dh - 1) // dh
            i1 = kh if y0 + (kh - 1) * dh < H else max(0, (H - 1 - y0) // dh + 1)
            inside = unrolled and i0 == 0 and i1 == kh
            a, b = (lo, hi) if inside else (ow, ow)
            for ox in range(0, a):
                _border(plane, o, ox, y0, i0, i1, kw, sw, pl, dh, dw, W, base)
            for ox in range(b, ow):
                _border(plane, o, ox, y0, i0, i1, kw, sw, pl, dh, dw, W, base)
            if not inside or hi == lo:
                continue
            c0 = lo * sw - pl  # column of the first inside window: rows sliced from there, so
            r0 = plane[y0, c0:]  # indices are provably >= 0 and the loops vectorise
            r1 = plane[y0 + 1, c0:]
            r2 = plane[y0 + 2, c0:] if kh == 3 else r1
            at = base + y0 * W + c0
            o = out[p, oy, lo:hi]
            if kh == 2 and sw == 2:
                _windows2(r0, r1, o, at, W, 2)
            elif kh == 2 and sw == 1:
                _windows2(r0, r1, o, at, W, 1)
            elif kh == 2:
                _windows2(r0, r1, o, at, W, sw)
            elif sw == 2:
                _windows3(r0, r1, r2, o, at, W, 2)
            elif sw == 1:
                _windows3(r0, r1, r2, o, at, W, 1)
            else:
                _windows3(r0, r1, r2, o, at, W, sw)


@njit(cache=True, inline="always")
def _windows2(r0, r1, o, at, W, s):
    """2x2 windows inside the input, starting at columns 0, s, 2s, … of rows r0, r1."""
    for k in range(o.shape[0]):
        x0 = s * k
        best, i = r0[x0], at + x0
        if r0[x0 + 1] > best:
            best, i = r0[x0 + 1], at + x0 + 1
        if r1[x0] > best:
            best, i = r1[x0], at + W + x0
        if r1[x0 + 1] > best:
            i = at + W + x0 + 1
        o[k] = i


@njit(cache=True, inline="always")
def _windows3(r0, r1, r2, o, at, W, s):
    """3x3 windows inside the input, starting at columns 0, s, 2s, … of rows r0, r1, r2."""
    for k in range(o.shape[0]):
        x0 = s * k
        best, i = r0[x0], at + x0
        for j in range(1, 3):
            if r0[x0 + j] > best:
                best, i = r0[x0 + j], at + x0 + j
        for j in range(3):
            if r1[x0 + j] > best:
                best, i = r1[x0 + j], at + W + x0 + j
        for j in range(3):
            if r2[x0 + j] > best:
                best, i = r2[x0 + j], at + 2 * W + x0 + j
        o[k] = i


@njit(cache=True, inline="always")
def _border(plane, o, ox, y0, i0, i1, kw, sw, pl, dh, dw, W, base):
    """One output whose window crosses the input's edge (or is not 2x2 / 3x3): taps in bounds only."""
    x0 = ox * sw - pl
    j0 = 0 if x0 >= 0 else (-x0 + dw - 1) // dw
    j1 = kw if x0 + (kw - 1) * dw < W else max(0, (W - 1 - x0) // dw + 1)
    o[ox] = base + _first_max(plane, y0, x0, i0, i1, j0, j1, dh, dw, W)


def max_switches(x: np.ndarray, kernel: tuple[int, int], strides, pads, dilations,
                 out_hw: tuple[int, int], first: int = 0) -> np.ndarray:
    """onnxruntime's MaxPool ``Indices`` (int64, flat over N·C·H·W) for input ``x`` (N, C, H, W)
    and output size ``out_hw``; ``pads`` (top, left, bottom, right), only the first two read.
    ``first``: where ``x``'s first sample sits in the batch it was cut from (a run in slices):
    the indices stay flat over that whole batch."""
    N, C, H, W = x.shape
    planes = np.ascontiguousarray(x).reshape(N * C, H, W)
    out = np.empty((N * C,) + tuple(out_hw), np.int64)
    _max_switches(planes, kernel[0], kernel[1], strides[0], strides[1], pads[0], pads[1],
                  dilations[0], dilations[1], first * C, out)
    return out.reshape((N, C) + tuple(out_hw))


@njit(parallel=True, cache=True)
def _gather(flat, ix, out):
    for i in prange(ix.size):
        out[i] = flat[ix[i]]


def gather(x: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """The max-pool output from its switches: ``x.flat[indices]`` (``max_switches``' flat
    N·C·H·W indices), shaped like ``indices``, in parallel."""
    flat = np.ascontiguousarray(x).reshape(-1)
    ix = np.ascontiguousarray(indices, np.int64)
    out = np.empty(ix.shape, x.dtype)
    _gather(flat, ix.reshape(-1), out.reshape(-1))
    return out
