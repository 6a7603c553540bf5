"""Gemm and MatMul as dense layers ``z = a·W + b`` (W stored as (in, out))."""

from __future__ import annotations

import numpy as np
from onnx import helper

from ..graph.layers import DenseLayer
from .arrays import contiguous
from .linear import LinearHandler
from .registry import BackwardContext, ParseContext, node_layer, register


class DenseMap:
    """``linear_rules.LinearMap`` of a dense layer."""

    def __init__(self, layer: DenseLayer, backend):
        self.weight = layer.weight
        self.bias = layer.bias
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


def matmul_node(b, x: str, w: str, transpose_w: bool) -> str:
    """``x · w`` (``x · wᵀ`` with ``transpose_w``) as a node of builder ``b`` (``lrpath compile``)."""
    if transpose_w:
        return b.node("Gemm", [x, w], transB=1)[0]
    return b.node("MatMul", [x, w])[0]


@register
class DenseHandler(LinearHandler):
    """Gemm (alpha, beta, transA, transB, bias C) and MatMul with a constant right operand.

    A MatMul's bias Add (and any constant Mul/Add after it, e.g. tf2onnx's folded BN) is
    folded in by the graph walker. A MatMul may read tokens (batch × tokens × features, any
    rank ≥ 2): the weight applies to the last axis, each token a row of one big batch. A
    MatMul of two activations is a bilinear layer (``ops.bilinear``).
    """

    op_types = ("Gemm", "MatMul")
    shared_weight_input = 1  # big classifier matrices are bound to onnxruntime, not copied

    def parse(self, node, ctx: ParseContext):
        if ctx.is_const(node.input[0]):
            raise ctx.fail(node, "a constant left operand with a non-constant weight")
        gemm = node.op_type == "Gemm"
        if not gemm and len(node.input) > 1 and not ctx.is_const(node.input[1]):
            from .bilinear import BILINEAR

            return BILINEAR.parse(node, ctx)
        B = ctx.const(node, 1, "weight (B)")
        shape = ctx.shape(node.input[0])
        attrs = ctx.attrs(node)
        trans_a = bool(attrs.get("transA", 0)) if gemm else False
        if B.ndim != 2:
            raise ctx.fail(node, f"weight of rank {B.ndim} (need a matrix)")
        if shape is not None and (len(shape) < 2 or (gemm and len(shape) != 2)):
            raise ctx.fail(node, f"input of rank {len(shape)} (need batch × features)")
        rank = 2 if shape is None else len(shape)
        bias = None
        if gemm:
            W = B.T if attrs.get("transB", 0) else B  # a view: the weights stay shared
            alpha = attrs.get("alpha", 1.0)
            if alpha != 1.0:
                W = W * np.float32(alpha)
            C = ctx.optional_const(node, 2, "bias (C)")
            if C is not None:
                C = np.asarray(C, np.float64) * attrs.get("beta", 1.0)
                if C.ndim == 2 and C.shape[0] != 1:
                    raise ctx.fail(node, f"bias C of shape {C.shape} varies over the batch")
                bias = np.ascontiguousarray(np.broadcast_to(C.reshape(-1) if C.ndim else C, (W.shape[1],)),
                                            np.float32)
        else:
            W = B
        return node_layer(DenseLayer, node, ctx, self, [node.input[0]],
                          weight=W if W.dtype == np.float32 else W.astype(np.float32), bias=bias, trans_a=trans_a,
                          rank=rank, sources=tuple(i for i in node.input[1:3] if i))

    def input_activation(self, layer, ctx: BackwardContext) -> np.ndarray:
        a = ctx.fwd[layer.inputs[0]]
        if layer.rank > 2:
            return a.reshape(-1, a.shape[-1])
        return contiguous(a.T) if layer.trans_a else a

    def output_view(self, layer, t):
        """Token outputs as rows (batch × tokens, features)."""
        return t.reshape(-1, t.shape[-1]) if layer.rank > 2 else t

    def terms(self, layer, rule):
        """Token layers compute their rule terms here (onnxruntime's Gemm takes matrices only)."""
        return [] if layer.rank > 2 else super().terms(layer, rule)

    def linear_map(self, layer, a, r, backend) -> DenseMap:
        return DenseMap(layer, backend)

    def relevance(self, layer, rule, r, ctx: BackwardContext):
        rows = self.output_view(layer, r)
        rin = super().relevance(layer, rule, rows, ctx)[0]
        if layer.rank > 2:
            return [rin.reshape(r.shape[:-1] + (layer.in_channels,))]
        return [contiguous(rin.T) if layer.trans_a else rin]

    def gradient(self, layer, g, ctx: BackwardContext, exact: bool = False):
        out = super().gradient(layer, self.output_view(layer, g), ctx, exact)[0]
        if layer.rank > 2:
            return [out.reshape(g.shape[:-1] + (layer.in_channels,))]
        return [contiguous(out.T) if layer.trans_a else out]

    def forward(self, layer, inputs):
        x = inputs[0].T if layer.trans_a else inputs[0]
        b = layer.bias
        return x @ layer.weight.astype(x.dtype) + (0 if b is None else b.astype(x.dtype))

    def native_refusal(self, layer, shapes):
        src = shapes.get(layer.inputs[0])
        ok = layer.rank == 2 and not layer.trans_a and src is not None and len(src) == 2
        return None if ok else "a dense layer over tokens, of an input of unknown rank, or with transA"

    def native_forward(self, layer, inputs, backend, in_place=False):
        """``a · W + b``, the weight's columns split over the threads (VGG16's fc6 streams
        411 MB of weights: on every core, not one)."""
        w = np.asarray(layer.weight, np.float32)
        z = np.empty((inputs[0].shape[0], w.shape[1]), np.float32)
        backend.threads.matmul_columns(np.ascontiguousarray(inputs[0], np.float32), w, out=z)
        if layer.bias is not None:
            z += layer.bias.astype(np.float32, copy=False)
        return {layer.output: z}

    def multiply_adds(self, layer, shapes):
        return float(layer.weight.size), 0.0

    def infer_shape(self, layer, in_shapes, readers):
        src = in_shapes[0]
        return tuple(src[:-1]) + (layer.out_channels,) if src is not None and len(src) == layer.rank else None

    def neurons(self, layer):
        return None if layer.trans_a or layer.rank > 2 else (layer.in_channels, layer.out_channels)

    def channel_axis(self, layer, in_axes, shapes):
        """Its units are the last axis: (N, C), tokens (N, T, C), channels-last maps (N, H, W, C)."""
        return layer.rank - 1

    def modified_forward_node(self, layer, inputs: list[str], output: str):
        """This layer's product over other inputs/weights, as one ONNX Gemm node."""
        return helper.make_node("Gemm", inputs, [output], name=output, transA=int(layer.trans_a))
