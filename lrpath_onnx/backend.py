"""The compute backend: one object, chosen once, passed to everything that runs kernels.

Relevance handlers never import kernels directly; they call the backend, so the same
handler code runs on the CPU kernels (numba + BLAS) and, where present, on the CUDA ones.
``Backend`` declares the interface both implement; nothing outside the backends asks
which one runs.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from .errors import InputError
from .kernels import conv as _conv
from .kernels import dense as _dense
from .kernels import elementwise as _ew
from .kernels import flow as _flow
from .kernels import pooling as _pool
from .kernels import winograd as _wino
from .kernels import winograd4 as _wino4
from .kernels.conv import ConvGeometry
from .threads import ThreadControl


class Backend(Protocol):
    """What handlers, rules and analyses may ask of a backend. Arrays are the backend's own
    (numpy on the CPU, ``DeviceArray`` on a GPU) and support numpy's element-wise surface."""

    name: str
    #: arrays are host numpy arrays and the forward tensors the caller's own: handlers may
    #: crop them and keep what they compute in the context's forward tensors
    host_arrays: bool
    threads: ThreadControl

    def asarray(self, x, dtype=None) -> Any: ...
    def upload(self, x: np.ndarray) -> Any: ...
    def upload_tensors(self, tensors: dict[str, np.ndarray]) -> dict[str, Any]: ...
    def to_host(self, x) -> np.ndarray: ...
    def sample_sums(self, x) -> Any: ...
    def conv2d(self, x, w, geom: ConvGeometry, bias=None, out_hw=None, exact: bool = False) -> Any: ...
    def conv2d_transpose(self, s, w, geom: ConvGeometry, in_hw, mul=None, exact: bool = False,
                         ratio=None) -> Any: ...
    def dense(self, a, w, bias=None) -> Any: ...
    def dense_transpose(self, s, w, mul=None) -> Any: ...
    def separable(self, x, rows: np.ndarray, cols: np.ndarray) -> Any: ...
    def stabilised_divide(self, r, z, eps: float) -> Any: ...  # host_arrays backends also take out=
    def gate_by_sign(self, r, sign, mode: str) -> Any: ...
    def gated_any(self, r, sign, mode: str) -> bool: ...
    def multiply(self, a, b) -> Any: ...
    def unpool(self, values, indices, in_shape) -> Any: ...
    def conv_flow(self, mul, s, w, geom: ConvGeometry, in_shape, rows, cols) -> Any: ...
    def dense_flow(self, mul, s, w, rows, cols) -> Any: ...


class CpuBackend:
    """numba CPU kernels and numpy's BLAS; arrays are numpy arrays."""

    name = "cpu"
    host_arrays = True

    def __init__(self, threads: ThreadControl | None = None, exact: bool = False) -> None:
        self.threads = threads or ThreadControl()
        #: every product by im2col + GEMM, no Winograd rounding (slower; ``lrpath compile --check``)
        self.exact = exact
        self.workspace = _conv.Workspace()
        self._derived: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}

    def _derive(self, w: np.ndarray, kind: str, fn) -> np.ndarray:
        """``fn(w)`` computed once per weight array and kind (flipped, Winograd-transformed).

        Keyed by identity: the entry holds ``w`` itself, so its id cannot be reused while
        cached. Weights come from the analyzer's WeightCache and live as long as it does.
        """
        hit = self._derived.get((id(w), kind))
        if hit is None or hit[0] is not w:
            hit = self._derived[(id(w), kind)] = (w, fn(w))
        return hit[1]

    # conversions ---------------------------------------------------------------
    def asarray(self, x: np.ndarray, dtype=None) -> np.ndarray:
        """Host arrays stay as they are (a transposed weight view is not copied)."""
        return np.asarray(x, dtype=dtype)

    def to_host(self, x: np.ndarray) -> np.ndarray:
        return x

    def upload(self, x: np.ndarray) -> np.ndarray:
        """Forward tensors for the backward pass: on the CPU they stay where they are."""
        return x

    def upload_tensors(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A batch's forward tensors: the same dict (what the backward adds to it stays visible)."""
        return tensors

    def sample_sums(self, x: np.ndarray) -> np.ndarray:
        return _ew.sample_sums(x)

    # kernels ---------------------------------------------------------------------
    def conv2d(self, x, w, geom: ConvGeometry, bias=None, out_hw=None, exact: bool = False):
        """Convolution; Winograd for stride-1 3x3 layers unless ``exact`` (zeros stay zeros):
        F(4x4, 3x3) where it applies, else F(2x2, 3x3)."""
        x = np.ascontiguousarray(x)
        w = np.ascontiguousarray(w, x.dtype)
        exact = exact or self.exact
        K, _, kh, kw = w.shape
        out_hw = out_hw or geom.out_size(x.shape[2], x.shape[3], kh, kw)
        if not exact and _wino4.applies(kh, kw, geom.strides, geom.dilations, geom.groups, K, w.shape[1], out_hw):
            U4 = self._derive(w, "winograd4", _wino4.transform_kernel)
            return _wino4.conv3x3(x, U4, geom.pads, out_hw, bias, None, self.workspace, self.threads.matmul)
        if not exact and _wino.applies(kh, kw, geom.strides, geom.dilations, geom.groups):
            U = self._derive(w, "winograd", _wino.transform_kernel)
            return _wino.conv3x3(x, U, geom.pads, out_hw, bias, None, self.workspace, self.threads.matmul)
        return _conv.conv2d(x, w, geom, bias, out_hw, self.workspace, self.threads.matmul_split, self.threads.matmul)

    def conv2d_transpose(self, s, w, geom: ConvGeometry, in_hw, mul=None, exact: bool = False,
                         ratio=None):
        """Transposed convolution (times ``mul``); Winograd for stride-1 3x3 unless ``exact``
        (F(4x4, 3x3) on the flipped kernel where it applies, else F(2x2, 3x3)).

        ``ratio=(z, eps)``: transpose ``s / (z + eps·sign z)`` (fused into Winograd's loads).
        """
        s = np.ascontiguousarray(s)
        m = None if mul is None else np.ascontiguousarray(mul, s.dtype)
        w = np.ascontiguousarray(w, s.dtype)
        exact = exact or self.exact
        kh, kw = w.shape[2:]
        as_conv = _conv.transpose_as_conv(geom, kh, kw)
        if not exact and as_conv is not None and _wino4.applies(kh, kw, as_conv.strides, as_conv.dilations,
                                                                geom.groups, w.shape[0], w.shape[1], in_hw):
            # F(4x4, 3x3) cannot reuse the forward's transformed kernel: it transforms the flipped one
            U4 = self._derive(w, "winograd4-transposed", lambda a: _wino4.transform_kernel(_conv.flip_kernel(a, 1)))
            rz = None if ratio is None else (np.ascontiguousarray(ratio[0], s.dtype), ratio[1])
            return _wino4.conv3x3(s, U4, as_conv.pads, tuple(in_hw), None, m, self.workspace, self.threads.matmul, rz)
        if not exact and as_conv is not None and _wino.applies(kh, kw, as_conv.strides, as_conv.dilations,
                                                               geom.groups):
            U = self._derive(w, "winograd", _wino.transform_kernel)  # shared with conv2d
            rz = None if ratio is None else (np.ascontiguousarray(ratio[0], s.dtype), ratio[1])
            return _wino.conv3x3(s, U, as_conv.pads, tuple(in_hw), None, m, self.workspace,
                                 self.threads.matmul, rz, transposed=True)
        if ratio is not None:
            s = self.stabilised_divide(s, ratio[0], ratio[1])
        # as a convolution with the flipped kernel (unfolds the K-channel signal) only where K ≤ C:
        # otherwise folding the C-channel columns back moves less memory (VGG16's conv1_1 under
        # z^B, K = 64 against 2 × 3: 54 → 10 ms; conv2_1's 128 → 64: 42 → 24 ms)
        flipped = self._derive(w, f"flip{geom.groups}", lambda a: _conv.flip_kernel(a, geom.groups)) \
            if as_conv is not None and w.shape[0] <= w.shape[1] * geom.groups else None
        return _conv.conv2d_transpose(s, w, geom, in_hw, m, self.workspace, flipped, self.threads.matmul_split,
                                      self.threads.matmul)

    def conv_flow(self, mul, s, w, geom: ConvGeometry, in_shape, rows, cols):
        return _flow.conv_flow(mul, np.ascontiguousarray(s), np.asarray(w, s.dtype), geom, in_shape, rows, cols)

    def dense_flow(self, mul, s, w, rows, cols):
        return _flow.dense_flow(mul, s, w, rows, cols)

    def dense(self, a, w, bias=None):
        return _dense.dense(a, w, bias)

    def dense_transpose(self, s, w, mul=None):
        return _dense.dense_transpose(s, w, mul, self.threads.matmul_columns)

    def separable(self, x, rows, cols):
        """``rows · x · colsᵀ`` over the last two axes (a resize's interpolation)."""
        return np.ascontiguousarray(np.matmul(np.matmul(rows, x), cols.T), dtype=x.dtype)

    def stabilised_divide(self, r, z, eps: float, out=None):
        return _ew.stabilised_divide(r, z, eps, out)

    def gate_by_sign(self, r, sign, mode: str):
        return _ew.gate_by_sign(r, sign, mode)

    def gated_any(self, r, sign, mode: str) -> bool:
        return _ew.gated_any(r, sign, mode)

    def multiply(self, a, b):
        return _ew.multiply(a, b)

    def unpool(self, values, indices, in_shape):
        return _pool.unpool(values, indices, in_shape)


def make_backend(device: str = "cpu"):
    """The backend for ``--device``: ``cpu``, ``cuda`` or ``auto`` (CUDA where a GPU is usable)."""
    if device == "cpu":
        return CpuBackend()
    if device in ("cuda", "auto"):
        from .cuda_backend import cuda_usable, make_cuda_backend

        if device == "cuda" or cuda_usable(allow_simulator=False):
            return make_cuda_backend()
        return CpuBackend()
    raise InputError(f"unknown device '{device}'; choose cpu, cuda or auto")
