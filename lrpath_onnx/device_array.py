"""A numpy-like array on the GPU, so the relevance handlers run unchanged on the CUDA backend.

Handlers and rules are written with numpy operations (``a * c``, ``np.maximum(a, 0)``,
``np.split``, ``r.reshape(...)``). ``DeviceArray`` wraps a numba device array and answers
those operations with CUDA kernels (``kernels/cuda/array_ops.py``) through numpy's
``__array_ufunc__``/``__array_function__`` protocols, so relevance stays on the device from
the logits down to the input. Turning it into a host array is explicit
(``DeviceArray.get()``): an accidental ``np.asarray`` raises instead of copying silently.
"""

from __future__ import annotations

import numpy as np

from .kernels.cuda import array_ops as ops  # first: its package patches numpy for numba-cuda
from numba import cuda  # noqa: E402  (isort: skip)

_UFUNC = {np.add: ops.ADD, np.subtract: ops.SUB, np.multiply: ops.MUL, np.true_divide: ops.DIV,
          np.divide: ops.DIV, np.maximum: ops.MAX, np.minimum: ops.MIN}


def _view(d, shape, strides):
    """A view of device array ``d`` with another shape/strides over the same memory."""
    if hasattr(d, "_ary"):  # the CUDA simulator wraps numpy arrays
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        return FakeCUDAArray(np.lib.stride_tricks.as_strided(d._ary, shape, strides))
    from numba.cuda.cudadrv.devicearray import DeviceNDArray

    return DeviceNDArray(shape, strides, d.dtype, gpu_data=d.gpu_data)


def as4(d):
    """Rank-4 view (leading axes of size 1) of a rank ≤ 4 device array."""
    r = len(d.shape)
    if r > 4:
        raise ValueError(f"device arrays of rank {r} are not supported (at most 4)")
    return _view(d, (1,) * (4 - r) + tuple(d.shape), (0,) * (4 - r) + tuple(d.strides))


class DeviceArray:
    """A numba device array with the numpy surface the relevance handlers use."""

    __array_priority__ = 100

    def __init__(self, d) -> None:
        self.d = d

    # -- construction -------------------------------------------------------------
    @classmethod
    def empty(cls, shape, dtype) -> "DeviceArray":
        return cls(cuda.device_array(tuple(int(s) for s in shape), dtype=np.dtype(dtype)))

    @classmethod
    def full(cls, shape, value, dtype) -> "DeviceArray":
        out = cls.empty(shape, dtype)
        if out.size:
            ops.launch_fill(out.d.reshape(out.size), np.dtype(dtype).type(value))
        return out

    @classmethod
    def from_host(cls, x) -> "DeviceArray":
        return cls(cuda.to_device(np.ascontiguousarray(x)))

    # -- numpy surface ------------------------------------------------------------
    shape = property(lambda self: tuple(self.d.shape))
    dtype = property(lambda self: np.dtype(self.d.dtype))
    ndim = property(lambda self: len(self.d.shape))
    size = property(lambda self: int(np.prod(self.d.shape)))

    def get(self) -> np.ndarray:
        return self.d.copy_to_host()

    def __array__(self, *args, **kwargs):
        raise TypeError("a DeviceArray stays on the GPU; use .get() (backend.to_host) to copy it")

    def __repr__(self) -> str:
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype})"

    def contiguous(self) -> "DeviceArray":
        if self.d.is_c_contiguous():
            return self
        out = DeviceArray.empty(self.shape, self.dtype)
        ops.launch_transpose(as4(self.d), as4(out.d), (0, 1, 2, 3))
        return out

    def reshape(self, *shape) -> "DeviceArray":
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        shape = tuple(int(s) for s in shape)
        if -1 in shape:
            known = int(np.prod([s for s in shape if s != -1]))
            shape = tuple(self.size // known if s == -1 else s for s in shape)
        return DeviceArray(self.contiguous().d.reshape(shape))

    def transpose(self, *axes) -> "DeviceArray":
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        axes = tuple(axes) if axes else tuple(range(self.ndim))[::-1]
        pad = 4 - self.ndim
        perm = tuple(range(pad)) + tuple(a + pad for a in axes)
        out = DeviceArray.empty(tuple(self.shape[a] for a in axes), self.dtype)
        ops.launch_transpose(as4(self.d), as4(out.d), perm)
        return out

    @property
    def T(self) -> "DeviceArray":
        return self.transpose()

    def __getitem__(self, key) -> "DeviceArray":
        return DeviceArray(self.d[key])

    def astype(self, dtype, copy: bool = True) -> "DeviceArray":
        dtype = np.dtype(dtype)
        if dtype == self.dtype:
            return self
        host = self.get().astype(dtype)  # only weights and bounds change dtype; small and rare
        return DeviceArray.from_host(host)

    def sum(self, axis=None, dtype=None, keepdims: bool = False):
        """Sums via a row-sum kernel after moving the summed axes last (always float64)."""
        axes = tuple(range(self.ndim)) if axis is None else tuple(np.atleast_1d(axis) % self.ndim)
        keep = [a for a in range(self.ndim) if a not in axes]
        moved = self.transpose(keep + list(axes)) if keep + list(axes) != list(range(self.ndim)) else self.contiguous()
        rows = int(np.prod([self.shape[a] for a in keep])) if keep else 1
        out = DeviceArray.empty((rows,), np.float64)
        ops.launch_row_sums(moved.d.reshape(rows, self.size // max(rows, 1)), out.d)
        shape = tuple(1 if (a in axes) else self.shape[a] for a in range(self.ndim)) if keepdims else \
            tuple(self.shape[a] for a in keep)
        return out.reshape(shape) if shape else out.get()[0]

    def any(self) -> bool:
        return bool(abs_sum(self) != 0)

    # -- arithmetic ---------------------------------------------------------------
    def _binary(self, other, op: int, reverse: bool = False) -> "DeviceArray":
        other = _operand(other, self.dtype)
        a, b = (other, self) if reverse else (self, other)
        shape = np.broadcast_shapes(a.shape, b.shape)
        out = DeviceArray.empty(shape, np.result_type(a.dtype, b.dtype))
        ops.launch_binary(as4(a.d), as4(b.d), as4(out.d), op)
        return out

    __add__ = lambda self, o: self._binary(o, ops.ADD)
    __radd__ = lambda self, o: self._binary(o, ops.ADD, True)
    __sub__ = lambda self, o: self._binary(o, ops.SUB)
    __rsub__ = lambda self, o: self._binary(o, ops.SUB, True)
    __mul__ = lambda self, o: self._binary(o, ops.MUL)
    __rmul__ = lambda self, o: self._binary(o, ops.MUL, True)
    __truediv__ = lambda self, o: self._binary(o, ops.DIV)
    __rtruediv__ = lambda self, o: self._binary(o, ops.DIV, True)
    __neg__ = lambda self: self._binary(-1, ops.MUL)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method != "__call__" or ufunc not in _UFUNC or kwargs.get("out") is not None or len(inputs) != 2:
            return NotImplemented
        a, b = inputs
        if isinstance(a, DeviceArray):
            return a._binary(b, _UFUNC[ufunc])
        return b._binary(a, _UFUNC[ufunc], reverse=True)

    def __array_function__(self, func, types, args, kwargs):
        impl = _FUNCTIONS.get(func)
        return NotImplemented if impl is None else impl(*args, **kwargs)


def _operand(x, dtype) -> DeviceArray:
    if isinstance(x, DeviceArray):
        return x
    host = np.asarray(x, dtype=dtype)
    return DeviceArray.from_host(host.reshape(1) if host.ndim == 0 else host)


def abs_sum(x: DeviceArray) -> float:
    return float((np.maximum(x, 0) - np.minimum(x, 0)).sum())


def _split(x, indices_or_sections, axis=0):
    n = x.shape[axis]
    cuts = list(range(0, n, n // indices_or_sections))[1:] if isinstance(indices_or_sections, int) else \
        list(indices_or_sections)
    edges = [0] + [int(c) for c in cuts] + [n]
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        key = tuple(slice(None) if a != axis else slice(lo, hi) for a in range(x.ndim))
        out.append(x[key].contiguous())
    return out


_FUNCTIONS = {
    np.split: _split,
    np.ones_like: lambda x, dtype=None: DeviceArray.full(x.shape, 1, dtype or x.dtype),
    np.zeros_like: lambda x, dtype=None: DeviceArray.full(x.shape, 0, dtype or x.dtype),
    np.ascontiguousarray: lambda x, dtype=None: x.astype(dtype).contiguous() if dtype else x.contiguous(),
    np.asarray: lambda x, dtype=None: x.astype(dtype) if dtype else x,
    np.transpose: lambda x, axes=None: x.transpose(axes) if axes is not None else x.transpose(),
}
