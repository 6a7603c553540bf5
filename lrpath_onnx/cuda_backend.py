"""The CUDA backend: numba-cuda kernels on ``DeviceArray``s, the same interface as ``CpuBackend``.

Weights are copied to the GPU once (through the analyzer's WeightCache), the forward
tensors of a batch once (``upload``), and relevance never leaves the device until the
explanation is handed back (``to_host``).
"""

from __future__ import annotations

import numpy as np

from .device_array import DeviceArray
from .errors import InputError
from .kernels.conv import ConvGeometry
from .threads import ThreadControl


def cuda_usable(allow_simulator: bool = True) -> bool:
    """Whether numba can run CUDA kernels here: a GPU and its driver, or (when allowed) the
    simulator that ``NUMBA_ENABLE_CUDASIM=1`` turns on, which tests use and ``auto`` never picks."""
    try:
        from .kernels.cuda import numpy_compat  # noqa: F401  (numba-cuda on newer NumPy)
        from numba import config, cuda

        if config.ENABLE_CUDASIM and not allow_simulator:
            return False
        return bool(cuda.is_available())
    except Exception:
        return False


def _d(x):
    """The numba device array inside ``x`` (uploading host arrays)."""
    if isinstance(x, DeviceArray):
        return x.contiguous().d
    return DeviceArray.from_host(x).d


class CudaBackend:
    """numba-cuda kernels; arrays are ``DeviceArray``s."""

    name = "cuda"
    host_arrays = False  # device arrays, and a copy of the forward tensors

    def __init__(self) -> None:
        from .kernels.cuda import conv, dense, elementwise, flow, pooling

        self._conv, self._dense, self._ew, self._pool, self._flow = conv, dense, elementwise, pooling, flow
        self.threads = ThreadControl(1)  # nothing to split on the host

    # conversions ---------------------------------------------------------------
    def asarray(self, x, dtype=None):
        if isinstance(x, DeviceArray):
            return x.astype(dtype) if dtype is not None else x
        return DeviceArray.from_host(np.asarray(x, dtype=dtype))

    def upload(self, x: np.ndarray):
        return DeviceArray.from_host(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x

    def upload_tensors(self, tensors):
        return {k: self.upload(v) for k, v in tensors.items()}

    def to_host(self, x):
        return x.get() if isinstance(x, DeviceArray) else np.asarray(x)

    # kernels ---------------------------------------------------------------------
    def conv2d(self, x, w, geom: ConvGeometry, bias=None, out_hw=None, exact: bool = False):
        b = None if bias is None else _d(np.asarray(bias, x.dtype) if not isinstance(bias, DeviceArray) else bias)
        return DeviceArray(self._conv.conv2d(_d(x), _d(w), geom, b, out_hw))

    def conv2d_transpose(self, s, w, geom: ConvGeometry, in_hw, mul=None, exact: bool = False, ratio=None):
        m = None if mul is None else _d(mul)
        r = None if ratio is None else (_d(ratio[0]), float(ratio[1]))
        return DeviceArray(self._conv.conv2d_transpose(_d(s), _d(w), geom, tuple(in_hw), m, r))

    def dense(self, a, w, bias=None):
        return DeviceArray(self._dense.dense(_d(a), _d(w), None if bias is None else _d(bias)))

    def dense_transpose(self, s, w, mul=None):
        return DeviceArray(self._dense.dense_transpose(_d(s), _d(w), None if mul is None else _d(mul)))

    def stabilised_divide(self, r, z, eps: float):
        return DeviceArray(self._ew.stabilised_divide(_d(r), _d(z), float(eps)))

    def separable(self, x, rows, cols):
        """``rows · x · colsᵀ`` over the last two axes: resizes are rare and small, done on the host."""
        host = self.to_host(x)
        return DeviceArray.from_host(np.ascontiguousarray(np.matmul(np.matmul(rows, host), cols.T), host.dtype))

    def gate_by_sign(self, r, sign, mode: str):
        return DeviceArray(self._ew.gate_by_sign(_d(r), _d(sign), mode))

    def gated_any(self, r, sign, mode: str) -> bool:
        return bool(self.gate_by_sign(r, sign, mode).any())

    def multiply(self, a, b):
        return DeviceArray(self._ew.multiply(_d(a), _d(b)))

    def sample_sums(self, x):
        return DeviceArray(self._ew.sample_sums(_d(x)))

    def unpool(self, values, indices, in_shape):
        return DeviceArray(self._pool.unpool(_d(values), _d(indices), tuple(in_shape)))

    def conv_flow(self, mul, s, w, geom: ConvGeometry, in_shape, rows, cols):
        return DeviceArray(self._flow.conv_flow(None if mul is None else _d(mul), _d(s), _d(w), geom,
                                                tuple(in_shape), np.asarray(rows), np.asarray(cols)))

    def dense_flow(self, mul, s, w, rows, cols):
        return DeviceArray(self._flow.dense_flow(None if mul is None else _d(mul), _d(s), _d(w),
                                                 np.asarray(rows), np.asarray(cols)))


def make_cuda_backend() -> CudaBackend:
    if not cuda_usable():
        raise InputError("--device cuda: no usable CUDA GPU (numba cannot reach a driver); use --device cpu or auto")
    return CudaBackend()
