"""The backend whose kernels are ONNX nodes: the same interface as ``CpuBackend``, on ``Sym``s.

Every product a rule asks for becomes the standard operators that compute it, written by
the op family that owns them (``ops.conv``, ``ops.dense``, ``ops.pool``, ``ops.resize``,
``ops.emit``): a Conv with the rule's modified weights (an initializer), the transposed
product as a Conv with the flipped kernel or a ConvTranspose, MatMul/Gemm for dense
layers, the stabilised divide as ``Where``, MaxPool switches through ``ScatterElements`` on
onnxruntime's own ``Indices``. Operands that are constants on both sides (z^B's bound
terms) are folded here with the CPU kernels, in float64.
"""

from __future__ import annotations

import numpy as np

from ..kernels.conv import ConvGeometry, flip_kernel, transpose_as_conv
from ..ops.conv import conv_nodes, conv_transpose_nodes
from ..ops.dense import matmul_node
from ..ops.emit import divide_nodes, gate_nodes
from ..ops.pool import unpool_nodes
from ..ops.resize import separable_nodes
from ..graph.symbolic import Builder, Sym


def _is_const(x) -> bool:
    return not isinstance(x, Sym)


class GraphBackend:
    """Kernels that append ONNX nodes to ``builder`` and return ``Sym`` results."""

    name = "onnx"
    host_arrays = False  # symbols of a graph being written, not values

    def __init__(self, builder: Builder) -> None:
        from ..backend import CpuBackend

        self.b = builder
        self._fold = CpuBackend()  # constant operands are computed, not emitted
        self.threads = self._fold.threads
        self._flipped: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    # conversions ---------------------------------------------------------------------
    def asarray(self, x, dtype=None):
        if isinstance(x, Sym):
            return x.astype(dtype) if dtype is not None else x
        return np.asarray(x, dtype=dtype)

    def upload(self, x):
        return x

    def upload_tensors(self, tensors):
        return dict(tensors)

    def to_host(self, x):
        return x

    def sample_sums(self, x):
        raise TypeError("the compiled pass keeps no per-sample sums")

    # products ------------------------------------------------------------------------
    def _weight(self, w, hint: str) -> str:
        return self.b.const(w, hint)

    def conv2d(self, x, w, geom: ConvGeometry, bias=None, out_hw=None, exact: bool = False):
        if _is_const(x) and _is_const(bias):
            return self._fold.conv2d(np.asarray(x, np.float64), np.asarray(w, np.float64), geom,
                                     None if bias is None else np.asarray(bias, np.float64), out_hw,
                                     exact=True).astype(np.float32)
        x = self._sym(x)
        K, _, kh, kw = w.shape
        out_hw = out_hw or geom.out_size(x.shape[2], x.shape[3], kh, kw)
        ins = [x.name, self._weight(w, "w")] + ([self._weight(bias, "b")] if bias is not None else [])
        out = x._new(conv_nodes(self.b, ins, (kh, kw), geom), (x.shape[0], K) + tuple(out_hw))
        if tuple(out_hw) != tuple(geom.out_size(x.shape[2], x.shape[3], kh, kw)):
            raise ValueError(f"conv output {out_hw} does not follow from its geometry")
        return out

    def conv2d_transpose(self, s, w, geom: ConvGeometry, in_hw, mul=None, exact: bool = False, ratio=None):
        s = self._sym(s)
        if ratio is not None:
            s = self.stabilised_divide(s, ratio[0], ratio[1])
        K, Cg, kh, kw = w.shape
        as_conv = transpose_as_conv(geom, kh, kw)
        if as_conv is not None:  # stride 1: a Conv with the flipped kernel (onnxruntime's Conv
            # is about twice as fast as its ConvTranspose here)
            hit = self._flipped.get(id(w))
            if hit is None or hit[0] is not w:
                hit = self._flipped[id(w)] = (w, flip_kernel(np.asarray(w, np.float32), geom.groups))
            out = self.conv2d(s, hit[1], as_conv, out_hw=tuple(int(v) for v in in_hw))
            return out if mul is None else out * mul
        name = conv_transpose_nodes(self.b, s.name, self._weight(w, "w"), (kh, kw), geom, s.shape[2:], in_hw)
        out = s._new(name, (s.shape[0], Cg * geom.groups) + tuple(int(v) for v in in_hw))
        return out if mul is None else out * mul

    def dense(self, a, w, bias=None):
        if _is_const(a) and _is_const(bias):
            out = np.asarray(a, np.float64) @ np.asarray(w, np.float64)
            return (out if bias is None else out + np.asarray(bias, np.float64)).astype(np.float32)
        a = self._sym(a)
        out = a._new(self._matmul(a.name, w, transpose=False), (a.shape[0], w.shape[1]))
        return out if bias is None else out + np.asarray(bias, np.float32)

    def dense_transpose(self, s, w, mul=None):
        s = self._sym(s)
        out = s._new(self._matmul(s.name, w, transpose=True), (s.shape[0], w.shape[0]))
        return out if mul is None else out * mul

    def _matmul(self, x: str, w: np.ndarray, transpose: bool) -> str:
        """``x · w`` (or ``x · wᵀ``), reading a model weight in place where ``w`` is one or
        its transpose (Gemm's ``transB``), so no weight is stored twice."""
        shared = self.b.find(w)
        name, flipped = shared if shared is not None else (self._weight(w, "w"), False)
        return matmul_node(self.b, x, name, transpose != flipped)

    def separable(self, x, rows, cols):
        x = self._sym(x)
        cols_t = self._weight(np.ascontiguousarray(np.asarray(cols, np.float32).T), "cols")
        name = separable_nodes(self.b, x.name, self._weight(np.asarray(rows, np.float32), "rows"), cols_t)
        return x._new(name, x.shape[:-2] + (rows.shape[0], cols.shape[0]))

    # element-wise ----------------------------------------------------------------------
    def stabilised_divide(self, r, z, eps: float):
        """``r / (z + eps·sign z)`` with sign(0) = 1, and 0 where that denominator is 0."""
        r = self._sym(r)
        zname, zshape, _ = r.operand(z)
        return r._new(divide_nodes(self.b, r.name, zname, eps), np.broadcast_shapes(r.shape, zshape))

    def gate_by_sign(self, r, sign, mode: str):
        r = self._sym(r)
        return r._new(gate_nodes(self.b, r.name, r.operand(sign)[0], mode), r.shape)

    def gated_any(self, r, sign, mode: str) -> bool:
        """Data-dependent, so true (the graph computes the term) unless both are constants."""
        return self._fold.gated_any(r, sign, mode) if _is_const(r) and _is_const(sign) else True

    def multiply(self, a, b):
        return self._sym(a) * b if isinstance(a, Sym) else self._sym(b) * a

    def unpool(self, values, indices, in_shape):
        v = self._sym(values)
        return v._new(unpool_nodes(self.b, v.name, self._sym(indices).name, in_shape), tuple(in_shape))

    def _sym(self, x) -> Sym:
        if isinstance(x, Sym):
            return x
        raise TypeError("expected a compiled tensor")
