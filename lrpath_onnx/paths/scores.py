"""Error scores for K-path fidelity (MSE, SMAPE), the normalisations they are applied
after, and the choice of the smallest sufficient K (paper, sections IV-B and IV-D)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

from lrpath_onnx.paths.optimizer import PathInputError, finite_number

__all__ = ["choose_k", "mse", "smape", "softmax", "spearman", "unit_l1"]


def _real_array(name: str, x: object) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise PathInputError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise PathInputError(f"{name} holds NaN or infinite values")
    return arr


def _pair(p: object, a: object) -> tuple[np.ndarray, np.ndarray]:
    p, a = _real_array("p", p), _real_array("a", a)
    if p.shape != a.shape:
        raise PathInputError(f"p and a must have the same shape, got {p.shape} and {a.shape}")
    if p.size == 0:
        raise PathInputError("p and a are empty")
    return p, a


def mse(p: np.ndarray, a: np.ndarray) -> float:
    """Mean squared error over all elements, in float64.

    Args
    ----
    p, a : array-like
        Prediction and reference, same (non-empty) shape, finite. No broadcasting.

    Returns
    -------
    float
        ``mean((p - a) ** 2)``.
    """
    p, a = _pair(p, a)
    return float(np.mean((p - a) ** 2))


def smape(p: np.ndarray, a: np.ndarray) -> float:
    """Symmetric mean absolute percentage error, in percent, in [0, 200].

    ``mean(2 |p - a| / (|p| + |a|)) * 100`` over all elements, with an element where
    ``p = a = 0`` counted as 0 (a perfect match). So ``p = 0, a != 0`` gives 200 for that
    element, as does a sign flip ``p = -a``. Symmetric in ``p`` and ``a`` and invariant to
    a common non-zero scale. Computed in float64; values too large for ``|p| + |a|`` to be
    finite are halved first, so no element gives NaN.

    Args
    ----
    p, a : array-like
        Prediction and reference, same (non-empty) shape, finite. No broadcasting.

    Returns
    -------
    float
    """
    p, a = _pair(p, a)
    with np.errstate(over="ignore"):
        num = np.abs(p - a)
        den = np.abs(p) + np.abs(a)
    big = ~(np.isfinite(num) & np.isfinite(den))
    if np.any(big):  # only near float64's max; halving is exact for such values
        num[big] = np.abs(p[big] / 2 - a[big] / 2)
        den[big] = np.abs(p[big] / 2) + np.abs(a[big] / 2)
    ratio = np.divide(num, den, out=np.zeros_like(num), where=den > 0)  # in [0, 1]
    return float(np.mean(2.0 * ratio) * 100.0)


def unit_l1(x: np.ndarray, axis: int | tuple[int, ...] | None = None) -> np.ndarray:
    """Scale ``x`` to unit L1 norm: ``x / sum(|x|)``; an all-zero ``x`` stays zero.

    Heatmaps are compared (MSE, SMAPE) after this normalisation, so the scores measure
    where relevance lies, not how much of it there is.

    Args
    ----
    x : array-like
        Finite real values.
    axis : int, tuple of int or None
        Axes the norm is taken over; None (default) means all elements. E.g. ``(1, 2)``
        for a batch of (N, H, W) heatmaps normalises each one separately; each all-zero
        slice stays zero.

    Returns
    -------
    np.ndarray
        float64 array of ``x``'s shape.
    """
    x = _real_array("x", x)
    norm = np.sum(np.abs(x), axis=axis, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along ``axis`` (the maximum is subtracted first).

    Args
    ----
    z : array-like
        Finite logits.
    axis : int
        The class axis.

    Returns
    -------
    np.ndarray
        float64 probabilities of ``z``'s shape, summing to 1 along ``axis``.
    """
    z = _real_array("z", z)
    if z.ndim == 0:
        raise PathInputError("softmax needs at least one axis, got a scalar")
    if z.shape[axis] == 0:
        raise PathInputError(f"softmax axis {axis} is empty (shape {z.shape})")
    e = np.exp(z - np.max(z, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def choose_k(
    ks: Sequence[int],
    errors: Sequence[float] | np.ndarray,
    reference_error: float,
    tolerance: float = 0.05,
    relative: bool = True,
) -> int | None:
    """The smallest K whose mean error is within ``tolerance`` of the full model's error.

    ``errors[i]`` is the error for ``ks[i]``: a number (already averaged over the images)
    or, if ``errors`` is 2-D of shape (len(ks), n_images), a row averaged here.
    ``reference_error`` is the error of the full model, measured the same way (0 when
    the full model is the reference itself). A K qualifies when its mean error ``e_K``
    satisfies ``e_K <= bound`` with

    * ``relative=True`` (default): ``bound = reference_error + tolerance *
      max(|reference_error|, scale)``, where ``scale = max_K |e_K - reference_error|`` is
      the spread of the sweep around the reference. When the reference is 0, ``scale`` is
      the largest error in the sweep, so the rule reads "within 5 % of the error range";
      when it is not, the larger of the two scales is used, so the bound never vanishes
      for a non-trivial sweep and moves continuously with the reference.
    * ``relative=False``: ``bound = reference_error + tolerance`` (absolute units).

    The answer is the smallest qualifying K, even on a non-monotone curve where a larger
    K falls outside the bound again (the curve is for the reader to judge). ``ks`` need
    not be sorted.

    Args
    ----
    ks : sequence of int
        The distinct K values of the sweep.
    errors : sequence of float or 2-D array
        Mean error per K (or errors per K and image), finite.
    reference_error : float
        The full model's error, finite.
    tolerance : float
        Non-negative, finite; a fraction when ``relative``, error units otherwise.
    relative : bool
        Which of the two bounds above.

    Returns
    -------
    int or None
        The smallest qualifying K, or None when none qualifies.

    Raises
    ------
    PathInputError
        (a ``ValueError``) on an empty sweep, non-integer or repeated K, a length
        mismatch, non-finite errors, or a negative or non-finite tolerance.
    """
    ks_list = list(ks)
    if not ks_list:
        raise PathInputError("choose_k needs at least one K")
    for k in ks_list:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise PathInputError(f"every K must be an integer, got {k!r}")
    ks_arr = np.array([int(k) for k in ks_list], dtype=np.int64)
    if np.unique(ks_arr).size != ks_arr.size:
        raise PathInputError(f"ks must be distinct, got {ks_list}")
    err = _real_array("errors", errors)
    if err.ndim == 2:
        if err.shape[1] == 0:
            raise PathInputError(f"errors has no images (shape {err.shape})")
        err = err.mean(axis=1)
    elif err.ndim != 1:
        raise PathInputError(f"errors must be 1-D (per K) or 2-D (per K and image), got shape {err.shape}")
    if err.shape[0] != ks_arr.size:
        raise PathInputError(f"got {ks_arr.size} K values but {err.shape[0]} errors")
    ref = finite_number("reference_error", reference_error)
    tol = finite_number("tolerance", tolerance)
    if tol < 0:
        raise PathInputError(f"tolerance must be >= 0, got {tol}")
    if relative:
        scale = float(np.max(np.abs(err - ref)))
        bound = ref + tol * max(abs(ref), scale)
    else:
        bound = ref + tol
    ok = err <= bound
    return int(ks_arr[ok].min()) if np.any(ok) else None


def spearman(a: np.ndarray, b: np.ndarray, support: bool = False) -> float:
    """Spearman's rank correlation (ties get their mean rank). ``support``: only over pixels
    where either map is non-zero — input-multiplied maps and occlusion are exactly 0 on a blank
    background whatever the network, and those tied zeros alone would make any two maps look alike."""
    a, b = np.ravel(a), np.ravel(b)
    if support:
        keep = (a != 0) | (b != 0)
        if keep.sum() < 3:
            return 1.0
        a, b = a[keep], b[keep]
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else 0.0


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v))
    uniq, inv, counts = np.unique(v, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return (sums / counts)[inv]
