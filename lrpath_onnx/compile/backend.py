"""The backend whose kernels are ONNX nodes: the same interface as ``CpuBackend``, on ``Sym``s.

Every product a rule asks for becomes the standard operator that computes it: a Conv with
the rule's modified weights (an initializer), a ConvTranspose for the transposed product,
MatMul/Gemm for dense layers, the stabilised divide as ``Where``/``Sign``, MaxPool switches
through ``ScatterElements`` on onnxruntime's own ``Indices``. Operands that are constants
on both sides (z^B's bound terms) are folded here with the CPU kernels, in float64.
"""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from ..kernels.conv import ConvGeometry, flip_kernel, transpose_as_conv
from .symbolic import Builder, Sym


def _is_const(x) -> bool:
    return not isinstance(x, Sym)


class GraphBackend:
    """Kernels that append ONNX nodes to ``builder`` and return ``Sym`` results."""

    name = "onnx"

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
        name = self.b.node("Conv", ins, kernel_shape=[kh, kw], strides=list(geom.strides), pads=list(geom.pads),
                           dilations=list(geom.dilations), group=geom.groups)[0]
        out = x._new(name, (x.shape[0], K) + tuple(out_hw))
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
        # rows -p0 … reach-1-p0 of the input are reached; crop the end to the input, and pad
        # with zeros past the reach (rows no window reads get no relevance)
        begin, end, extra = list(geom.pads[:2]), [], []
        for i, (o, k) in enumerate(zip(s.shape[2:], (kh, kw))):
            reach = geom.strides[i] * (o - 1) + geom.dilations[i] * (k - 1) + 1
            end.append(max(0, reach - begin[i] - int(in_hw[i])))
            extra.append(max(0, int(in_hw[i]) - (reach - begin[i])))
        name = self.b.node("ConvTranspose", [s.name, self._weight(w, "w")], kernel_shape=[kh, kw],
                           strides=list(geom.strides), pads=begin + end, dilations=list(geom.dilations),
                           group=geom.groups)[0]
        if max(extra) > 0:
            name = self.b.node("Pad", [name, self.b.ints([0, 0, 0, 0, 0, 0, extra[0], extra[1]], "pads")])[0]
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
        if transpose != flipped:
            return self.b.node("Gemm", [x, name], transB=1)[0]
        return self.b.node("MatMul", [x, name])[0]

    def separable(self, x, rows, cols):
        x = self._sym(x)
        y = self.b.node("MatMul", [self._weight(np.asarray(rows, np.float32), "rows"), x.name])[0]
        y = self.b.node("MatMul", [y, self._weight(np.ascontiguousarray(np.asarray(cols, np.float32).T), "cols")])[0]
        return x._new(y, x.shape[:-2] + (rows.shape[0], cols.shape[0]))

    # element-wise ----------------------------------------------------------------------
    def stabilised_divide(self, r, z, eps: float):
        """``r / (z + eps·sign z)`` with sign(0) = 1, and 0 where that denominator is 0."""
        r = self._sym(r)
        zname, zshape, _ = r.operand(z)
        b = self.b
        zero, one = b.const(np.float32(0)), b.const(np.float32(1))
        shape = np.broadcast_shapes(r.shape, zshape)
        if eps > 0:  # |z + eps·sign z| ≥ eps: never 0
            nonneg = b.node("GreaterOrEqual", [zname, zero])[0]
            den = b.node("Where", [nonneg, b.const(np.float32(eps)), b.const(np.float32(-eps))])[0]
            return r._new(b.node("Div", [r.name, b.node("Add", [zname, den])[0]])[0], shape)
        den = zname
        is_zero = b.node("Equal", [den, zero])[0]
        safe = b.node("Where", [is_zero, one, den])[0]
        quot = b.node("Div", [r.name, safe])[0]
        return r._new(b.node("Where", [is_zero, zero, quot])[0], shape)

    def gate_by_sign(self, r, sign, mode: str):
        r = self._sym(r)
        sname, _, _ = r.operand(sign)
        zero = self.b.const(np.float32(0))
        op = {"pos": "Greater", "neg": "Less", "nonpos": "LessOrEqual", "zero": "Equal"}[mode]
        keep = self.b.node(op, [sname, zero])[0]
        return r._new(self.b.node("Where", [keep, r.name, zero])[0], r.shape)

    def multiply(self, a, b):
        return self._sym(a) * b if isinstance(a, Sym) else self._sym(b) * a

    def unpool(self, values, indices, in_shape):
        """Scatter-add ``values`` at onnxruntime's MaxPool ``Indices`` (flat over N·C·H·W)."""
        v = self._sym(values)
        b = self.b
        plane = int(np.prod(in_shape[1:]))
        n = b.node("Slice", [b.node("Shape", [v.name])[0], b.ints([0]), b.ints([1]), b.ints([0])])[0]
        size = b.node("Mul", [n, b.ints([plane], "plane")])[0]
        zeros = b.node("ConstantOfShape", [size], value=numpy_helper.from_array(np.zeros(1, np.float32)))[0]
        flat_v = b.node("Reshape", [v.name, b.ints([-1])])[0]
        flat_i = b.node("Reshape", [self._sym(indices).name, b.ints([-1])])[0]
        out = b.node("ScatterElements", [zeros, flat_i, flat_v], axis=0, reduction="add")[0]
        out = b.node("Reshape", [out, b.ints([-1] + [int(d) for d in in_shape[1:]])])[0]
        return v._new(out, tuple(in_shape))

    def _sym(self, x) -> Sym:
        if isinstance(x, Sym):
            return x
        raise TypeError("expected a compiled tensor")
