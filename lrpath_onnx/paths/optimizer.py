"""GetOptimizer, the paper's Algorithm 1: keep the neurons of a layer whose
forward-minus-backward contribution is not far below the layer's mean.

The paper (section IV-C) states the algorithm in prose only; this module fixes the
points it leaves open and says so in :func:`get_optimizer`'s docstring.
"""

from __future__ import annotations

import numbers

import numpy as np

from lrpath_onnx.errors import InputError

__all__ = ["PathInputError", "get_optimizer", "neuron_scores", "select_getoptimizer"]


class PathInputError(InputError, ValueError):
    """A path-analysis input (array, index, option) is invalid.

    It is both an :class:`~lrpath_onnx.errors.InputError` (so the CLI reports it as one
    line and exit code 2) and a :class:`ValueError` (so plain-Python callers can catch
    the usual exception).
    """


def finite_number(name: str, value: object) -> float:
    """``value`` as a float, or a PathInputError naming ``name`` (bools, NaN and inf refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PathInputError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise PathInputError(f"{name} must be finite, got {value!r}")
    return value


def _check_index(idx: object, n: int) -> int:
    if isinstance(idx, bool) or not isinstance(idx, numbers.Integral):
        raise PathInputError(f"idx must be an integer, got {idx!r}")
    idx = int(idx)
    if not -n <= idx < n:
        raise PathInputError(f"idx {idx} is out of range for a batch of {n} (valid: {-n}..{n - 1})")
    return idx


def _difference(forward: np.ndarray, backward: np.ndarray, idx: int) -> np.ndarray:
    """Validate the inputs and return ``d = forward[idx] - backward[idx]``."""
    forward = np.asarray(forward)
    backward = np.asarray(backward)
    for name, arr in (("forward", forward), ("backward", backward)):
        if arr.dtype.kind not in "biuf":
            raise PathInputError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if forward.shape != backward.shape:
        raise PathInputError(
            f"forward and backward must have the same shape, got {forward.shape} and {backward.shape}"
        )
    if forward.ndim not in (2, 4):
        raise PathInputError(
            f"forward/backward must be rank 2 (N, C) or rank 4 (N, C, H, W), got shape {forward.shape}"
        )
    n, c = forward.shape[:2]
    if n == 0:
        raise PathInputError(f"the batch is empty (shape {forward.shape})")
    if c == 0:
        raise PathInputError(f"the layer has no neurons (shape {forward.shape})")
    if forward.ndim == 4 and forward.shape[2] * forward.shape[3] == 0:
        raise PathInputError(f"the feature maps are empty (shape {forward.shape})")
    idx = _check_index(idx, n)
    dtype = np.result_type(forward.dtype, backward.dtype, np.float32)
    f = forward[idx].astype(dtype, copy=False)
    b = backward[idx].astype(dtype, copy=False)
    for name, arr in (("forward", f), ("backward", b)):
        if not np.all(np.isfinite(arr)):
            raise PathInputError(f"{name}[{idx}] holds NaN or infinite values")
    d = f - b
    if not np.all(np.isfinite(d)):
        raise PathInputError(f"forward[{idx}] - backward[{idx}] overflows {dtype}")
    return d


def _scores(d: np.ndarray) -> np.ndarray:
    """One float64 value per neuron: ``d`` summed over the spatial axes (if any)."""
    d64 = d.astype(np.float64, copy=False)
    return d64.sum(axis=(1, 2)) if d64.ndim == 3 else d64.copy()


def _keep(s: np.ndarray, threshold: float) -> np.ndarray:
    if np.all(s == s[0]):  # sigma = 0: nothing is below anything, keep every neuron
        return np.ones(s.shape, dtype=bool)
    mu = s.mean()
    sigma = s.std(ddof=0)
    return s > mu - threshold * sigma


def neuron_scores(forward: np.ndarray, backward: np.ndarray, idx: int) -> np.ndarray:
    """Per-neuron value GetOptimizer thresholds: ``sum over H, W of forward[idx] - backward[idx]``.

    Args
    ----
    forward, backward : np.ndarray
        Activations and relevance of one layer for a batch, shape (N, C, H, W) or (N, C).
    idx : int
        Which sample of the batch.

    Returns
    -------
    np.ndarray
        float64 array of shape (C,).
    """
    return _scores(_difference(forward, backward, idx))


def get_optimizer(
    forward: np.ndarray, backward: np.ndarray, idx: int, threshold: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Algorithm 1 of the paper ("GetOptimizer"): mask the neurons that contribute little.

    Steps, as in the paper: ``d = forward[idx] - backward[idx]``; sum ``d`` over the
    spatial dimensions, giving one value ``s_c`` per neuron (a channel of a conv layer, a
    unit of a dense layer); compute the mean ``mu`` and standard deviation ``sigma`` of
    the ``s_c``; keep the neurons with ``s_c > mu - threshold * sigma`` and set the others
    to the neutral value zero.

    Decisions on what the paper leaves open:

    * ``sigma`` is the population standard deviation (``ddof=0``), as ``numpy.std``
      computes by default (the paper's implementation is NumPy-based).
    * The comparison is strict (``>``): a neuron exactly ``threshold`` standard
      deviations below the mean is dropped ("above one standard deviation below").
    * If ``sigma = 0`` (every ``s_c`` is equal, including a layer of one neuron) every
      neuron is kept: with a strict comparison all would otherwise be dropped, although
      none is below any other. "Equal" is tested exactly on the ``s_c``, not on the
      computed ``sigma``, so rounding in ``mean``/``std`` cannot drop equal neurons.
    * Dense layers (N, C) have no spatial dimensions: ``s_c = d_c``.
    * ``threshold`` generalises the paper's fixed "one standard deviation" (``1.0``).
      Any finite value is accepted; a negative one keeps only neurons above
      ``mu + |threshold| * sigma``.
    * ``d`` is computed in the inputs' floating dtype (float32 stays float32); the sums,
      ``mu`` and ``sigma`` in float64. ``idx`` may be negative (NumPy indexing).

    Args
    ----
    forward : np.ndarray
        The layer's activations for a batch, shape (N, C, H, W) or (N, C).
    backward : np.ndarray
        The layer's relevance for the same batch, same shape.
    idx : int
        The sample of the batch to analyse.
    threshold : float
        How many standard deviations below the mean a neuron may lie and be kept.

    Returns
    -------
    mask : np.ndarray
        bool array of shape (C,), True for the kept neurons.
    filtered : np.ndarray
        ``d`` (shape (C, H, W) or (C,)) with the dropped neurons set to zero.

    Raises
    ------
    PathInputError
        (a ``ValueError``) if the shapes differ, the rank is not 2 or 4, the batch,
        layer or feature maps are empty, ``idx`` is out of range or not an integer,
        ``threshold`` is not a finite number, or the inputs hold NaN/inf.
    """
    threshold = finite_number("threshold", threshold)
    d = _difference(forward, backward, idx)
    mask = _keep(_scores(d), threshold)
    sel = mask.reshape(mask.shape + (1,) * (d.ndim - 1))
    filtered = np.where(sel, d, np.zeros((), dtype=d.dtype))
    return mask, filtered


def select_getoptimizer(
    forward: np.ndarray, backward: np.ndarray, idx: int, threshold: float = 1.0
) -> np.ndarray:
    """Indices of the neurons GetOptimizer keeps, by summed value, largest first.

    The neuron selector of the neuron graph. Ties keep ascending index order.

    Args
    ----
    forward, backward, idx, threshold
        As in :func:`get_optimizer`.

    Returns
    -------
    np.ndarray
        int64 array of the kept neurons' channel indices.
    """
    threshold = finite_number("threshold", threshold)
    s = _scores(_difference(forward, backward, idx))
    mask = _keep(s, threshold)
    order = np.argsort(-s, kind="stable")
    return order[mask[order]].astype(np.int64)
