"""Array helpers the handlers share so one handler serves host and GPU arrays alike."""

from __future__ import annotations

import numpy as np


def contiguous(x):
    """A C-contiguous ``x``, on whichever device it lives.

    ``np.ascontiguousarray`` creates arrays, and numpy's creation functions never dispatch
    ``__array_function__`` on their argument, so a GPU ``DeviceArray`` would be pulled to the host
    (which it refuses). Arrays that know how to make themselves contiguous do it.
    """
    make = getattr(x, "contiguous", None)
    return make() if make is not None else np.ascontiguousarray(x)


def absolute(x):
    """``|x|`` through ufuncs both host and GPU arrays take (``np.abs`` alone is not among a
    ``DeviceArray``'s)."""
    return np.maximum(x, 0) - np.minimum(x, 0)
