"""Gemm and MatMul as dense layers ``z = a·W + b`` (W stored as (in, out))."""

from __future__ import annotations

import numpy as np

from ..graph.layers import LINEAR
from .arrays import contiguous
from .linear import LinearHandler
from .registry import BackwardContext, ParseContext, new_layer, register


class DenseMap:
    """``linear_rules.LinearMap`` of a dense layer."""

    def __init__(self, layer, backend):
        self.weight = layer.params["weight"]
        self.bias = layer.params.get("bias")
        self.backend = backend
        self.stackable = True  # weights may be stacked along the input axis

    def forward(self, x, w, b=None, exact=False):
        return self.backend.dense(x, w, b)

    def transpose(self, s, w, mul=None, exact=False, ratio=None):
        if ratio is not None:
            s = self.backend.stabilised_divide(s, *ratio)
        return self.backend.dense_transpose(s, w, mul)

    def flow(self, s, w, mul, rows, cols):
        """Unit-pair flows ``m_i w_ij s_j`` between input ``rows`` and output ``cols``."""
        return self.backend.dense_flow(mul, s, w, rows, cols)


@register
class DenseHandler(LinearHandler):
    """Gemm (alpha, beta, transA, transB, bias C) and MatMul with a constant right operand.

    A MatMul's bias Add (and any constant Mul/Add after it, e.g. tf2onnx's folded BN) is
    folded in by the graph walker.
    """

    op_types = ("Gemm", "MatMul")

    def parse(self, node, ctx: ParseContext):
        if ctx.is_const(node.input[0]):
            raise ctx.fail(node, "a constant left operand with a non-constant weight")
        B = ctx.const(node, 1, "weight (B)")
        shape = ctx.shape(node.input[0])
        attrs = ctx.attrs(node)
        trans_a = int(attrs.get("transA", 0)) if node.op_type == "Gemm" else 0
        if B.ndim != 2:
            raise ctx.fail(node, f"weight of rank {B.ndim} (need a matrix)")
        if shape is not None and len(shape) != 2:
            raise ctx.fail(node, f"input of rank {len(shape)} (need batch × features)")
        if node.op_type == "Gemm":
            W = B.T if attrs.get("transB", 0) else B  # a view: the weights stay shared
            alpha = attrs.get("alpha", 1.0)
            if alpha != 1.0:
                W = W * np.float32(alpha)
            C = ctx.optional_const(node, 2, "bias (C)")
            bias = None
            if C is not None:
                C = np.asarray(C, np.float64) * attrs.get("beta", 1.0)
                if C.ndim == 2 and C.shape[0] != 1:
                    raise ctx.fail(node, f"bias C of shape {C.shape} varies over the batch")
                bias = np.broadcast_to(C.reshape(-1) if C.ndim else C, (W.shape[1],))
        else:
            W, bias = B, None
        params = {"weight": W if W.dtype == np.float32 else W.astype(np.float32)}
        if bias is not None:
            params["bias"] = np.ascontiguousarray(bias, np.float32)
        return new_layer(node, ctx, LINEAR, [node.input[0]], params=params,
                         attrs={"transA": trans_a})

    def input_activation(self, layer, ctx: BackwardContext) -> np.ndarray:
        a = ctx.fwd[layer.inputs[0]]
        return contiguous(a.T) if layer.attrs.get("transA") else a

    def linear_map(self, layer, a, r, backend) -> DenseMap:
        return DenseMap(layer, backend)

    def relevance(self, layer, rule, r, ctx: BackwardContext):
        rin = super().relevance(layer, rule, r, ctx)[0]
        return [contiguous(rin.T) if layer.attrs.get("transA") else rin]

    def deconv(self, layer, s, ctx: BackwardContext):
        out = super().deconv(layer, s, ctx)[0]
        return [contiguous(out.T) if layer.attrs.get("transA") else out]

    def forward(self, layer, inputs):
        x = inputs[0].T if layer.attrs.get("transA") else inputs[0]
        b = layer.params.get("bias")
        return x @ layer.params["weight"].astype(x.dtype) + (0 if b is None else b.astype(x.dtype))
