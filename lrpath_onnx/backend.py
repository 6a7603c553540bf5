"""The compute backend: one object, chosen once, passed to everything that runs kernels.

Relevance handlers never import kernels directly; they call the backend, so the same
handler code runs on the CPU kernels (numba + BLAS) and, where present, on the CUDA ones.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError
from .kernels import conv as _conv
from .kernels import dense as _dense
from .kernels import elementwise as _ew
from .kernels import pooling as _pool
from .kernels.conv import ConvGeometry


class CpuBackend:
    """numba CPU kernels and numpy's BLAS; arrays are numpy arrays."""

    name = "cpu"

    def __init__(self) -> None:
        self.workspace = _conv.Workspace()
        self._flipped: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _flip(self, w: np.ndarray, groups: int) -> np.ndarray:
        """``flip_kernel(w)``, computed once per weight array (weights live as long as the cache)."""
        hit = self._flipped.get(id(w))
        if hit is None or hit[0] is not w:
            hit = self._flipped[id(w)] = (w, _conv.flip_kernel(w, groups))
        return hit[1]

    # conversions ---------------------------------------------------------------
    def asarray(self, x: np.ndarray, dtype=None) -> np.ndarray:
        """Host arrays stay as they are (a transposed weight view is not copied)."""
        return np.asarray(x, dtype=dtype)

    def to_host(self, x: np.ndarray) -> np.ndarray:
        return x

    # kernels ---------------------------------------------------------------------
    def conv2d(self, x, w, geom: ConvGeometry, bias=None, out_hw=None):
        return _conv.conv2d(np.ascontiguousarray(x), np.ascontiguousarray(w, x.dtype), geom,
                            bias, out_hw, self.workspace)

    def conv2d_transpose(self, s, w, geom: ConvGeometry, in_hw, mul=None):
        m = None if mul is None else np.ascontiguousarray(mul, s.dtype)
        w = np.ascontiguousarray(w, s.dtype)
        flipped = self._flip(w, geom.groups) if geom.strides == (1, 1) else None
        return _conv.conv2d_transpose(np.ascontiguousarray(s), w, geom, in_hw, m, self.workspace, flipped)

    def dense(self, a, w, bias=None):
        return _dense.dense(a, w, bias)

    def dense_transpose(self, s, w, mul=None):
        return _dense.dense_transpose(s, w, mul)

    def stabilised_divide(self, r, z, eps: float):
        return _ew.stabilised_divide(r, z, eps)

    def multiply(self, a, b):
        return _ew.multiply(a, b)

    def unpool(self, values, indices, in_shape):
        return _pool.unpool(values, indices, in_shape)


def make_backend(device: str = "cpu") -> CpuBackend:
    """The backend for ``--device``: ``cpu``, ``cuda`` or ``auto`` (CUDA only where usable)."""
    if device in ("cpu", "auto"):
        return CpuBackend()
    if device == "cuda":
        raise InputError("--device cuda: the CUDA kernels are not available in this build; "
                         "use --device cpu or auto")
    raise InputError(f"unknown device '{device}'; choose cpu, cuda or auto")
