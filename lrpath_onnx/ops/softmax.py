"""Softmax: stripped where it ends the graph, AttnLRP's rule where it is inside (attention).

A trailing Softmax/LogSoftmax is removed: LRP explains the logits before it. Inside the
network (attention weights ``s = softmax(x)``), relevance crosses it by its first-order
Taylor decomposition at the input (AttnLRP, Achtibat et al. 2024, Prop. 3.3):
``R_in = x ⊙ (R_out − s ⊙ Σ R_out)`` along the softmax axis. The softmax is not
conservative (its bias term is dropped); the flows in every explanation show how much.
"""

from __future__ import annotations

import numpy as np

from ..graph.layers import SoftmaxLayer
from .registry import (
    BackwardContext,
    OpHandler,
    ParseContext,
    Strip,
    node_layer,
    register,
)


@register
class SoftmaxHandler(OpHandler):
    """Softmax and LogSoftmax: ``parse`` strips a final one, ``parse_inner`` reads one inside."""

    op_types = ("Softmax", "LogSoftmax")
    fixed_rule = "softmax"
    drops_relevance = True

    def parse(self, node, ctx):
        return Strip(node.output[0], node.input[0])

    def parse_inner(self, node, ctx: ParseContext):
        """The layer of a Softmax that other layers read; None for LogSoftmax (not explainable here)."""
        if node.op_type != "Softmax":
            return None
        default = -1 if ctx.opset >= 13 else 1
        axis = int(ctx.attrs(node).get("axis", default))
        if ctx.opset < 13:
            shape = ctx.shape(node.input[0])
            if shape is None or axis % len(shape) != len(shape) - 1:
                raise ctx.fail(node, "a Softmax before opset 13 over more than the last axis")
        return node_layer(SoftmaxLayer, node, ctx, self, [node.input[0]], axis=axis)

    def needs(self, layer, rule, shapes):
        return {layer.inputs[0], layer.output}

    def _output(self, layer, ctx: BackwardContext):
        x = ctx.fwd[layer.inputs[0]]
        return ctx.fwd[layer.output] if ctx.reuse_forward else self.forward(layer, [x])

    def relevance(self, layer, rule, r, ctx: BackwardContext):
        x, s = ctx.fwd[layer.inputs[0]], self._output(layer, ctx)
        return [x * (r - s * r.sum(axis=layer.axis, keepdims=True))]

    def gradient(self, layer, g, ctx: BackwardContext):
        s = self._output(layer, ctx)
        return [s * (g - (s * g).sum(axis=layer.axis, keepdims=True))]

    def forward(self, layer, inputs):
        x = inputs[0]
        e = np.exp(x - x.max(axis=layer.axis, keepdims=True))
        return e / e.sum(axis=layer.axis, keepdims=True)

    def nonneg_output(self, layer, nonneg_inputs):
        return True

    def infer_shape(self, layer, in_shapes, readers):
        return in_shapes[0]

    def chain_input(self, layer):
        return None
