"""Element-wise kernels (CPU, numba): the stabilised divide at the heart of every LRP rule, the sign gate."""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def _stabilised_divide(r, z, eps, out):
    for i in prange(r.size):
        zi = z[i]
        d = zi + eps if zi >= 0.0 else zi - eps
        out[i] = r[i] / d if d != 0.0 else 0.0


def stabilised_divide(r: np.ndarray, z: np.ndarray, eps: float, out: np.ndarray | None = None) -> np.ndarray:
    """``s = r / (z + eps·sign(z))`` with ``sign(0) = 1``; where the denominator is 0, ``s = 0``.

    ``eps = 0`` is LRP-0's plain division, made safe: a zero denominator (only possible
    when ``z`` is exactly 0) gives zero instead of ``inf``. ``out``: a contiguous array of
    ``r``'s shape and dtype to write into (``z`` itself may be it: each element is read
    before it is written).
    """
    r = np.ascontiguousarray(r)
    z = np.ascontiguousarray(z, dtype=r.dtype)
    if out is None:
        out = np.empty_like(r)
    elif out.shape != r.shape or out.dtype != r.dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be a contiguous {r.dtype} array of shape {r.shape}")
    _stabilised_divide(r.reshape(-1), z.reshape(-1), r.dtype.type(eps), out.reshape(-1))
    return out


@njit(parallel=True, cache=True)
def _multiply(a, b, out):
    for i in prange(a.size):
        out[i] = a[i] * b[i]


def multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise ``a * b`` of two same-shape arrays, in parallel."""
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b, dtype=a.dtype)
    out = np.empty_like(a)
    _multiply(a.reshape(-1), b.reshape(-1), out.reshape(-1))
    return out


#: where ``gate_by_sign`` keeps relevance: sign > 0, < 0, ≤ 0 (a ReLU's output standing for z), == 0
GATE_MODES = {"pos": 0, "neg": 1, "nonpos": 2, "zero": 3}


@njit(parallel=True, cache=True)
def _gate(r, sign, mode, out):
    for i in prange(r.size):
        v = sign[i]
        if mode == 0:
            keep = v > 0
        elif mode == 1:
            keep = v < 0
        elif mode == 2:
            keep = v <= 0
        else:
            keep = v == 0
        out[i] = r[i] if keep else 0.0


def gate_by_sign(r: np.ndarray, sign: np.ndarray, mode: str) -> np.ndarray:
    """``r`` where ``sign`` is as ``mode`` says (``GATE_MODES``), 0 elsewhere.

    How the generalized γ routes each output's relevance to the group that explains it.
    """
    r = np.ascontiguousarray(r)
    sign = np.ascontiguousarray(sign, dtype=r.dtype)
    out = np.empty_like(r)
    _gate(r.reshape(-1), sign.reshape(-1), GATE_MODES[mode], out.reshape(-1))
    return out


def sample_sums(x: np.ndarray, row_sums=None) -> np.ndarray:
    """Per-sample float64 totals of ``x`` (batch first); NaN/inf anywhere makes its total non-finite.

    One pass serves both the conservation bookkeeping and the NaN/inf check. By default
    numpy's pairwise reduce in float64 (2x faster than a numba loop of scalar float64 adds,
    which ran at a quarter of memory speed: VGG16's relevance sums at batch 8, 110 → 40 ms
    per batch); ``row_sums(x2)``, the backend's ``ThreadControl.row_sums``, splits large
    arrays over its threads.
    """
    x2 = np.ascontiguousarray(x).reshape(x.shape[0], -1)
    if row_sums is None:
        return np.add.reduce(x2, axis=1, dtype=np.float64)
    return row_sums(x2)
