"""ReduceMean / ReduceSum over any axes that are not a global pool: a linear sum of inputs.

A transformer's mean over its tokens (a ViT without a class token) is ``z = c·Σ_i x_i`` with
``c = 1/n`` (mean) or 1 (sum); each input receives ``c·x_i·R / stab(z)``, the ε/LRP-0 rule of
a linear layer without a bias (conservative). A spatial mean of an NCHW map stays a global
average pool (``ops.pool``).
"""

from __future__ import annotations

import numpy as np

from ..graph.layers import ReduceLayer
from .registry import (
    BackwardContext,
    OpHandler,
    OwnLinearMap,
    ParseContext,
    node_layer,
    register,
)


@register
class ReduceSumHandler(OwnLinearMap, OpHandler):
    """ReduceSum, and ReduceMean over axes other than a 4-D map's spatial ones."""

    op_types = ("ReduceSum",)
    def parse(self, node, ctx: ParseContext):
        ctx.data_input(node)
        attrs = ctx.attrs(node)
        axes = attrs.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = ctx.const(node, 1, "axes").reshape(-1).tolist()
        shape = ctx.shape(node.input[0])
        if axes is None or shape is None:
            raise ctx.fail(node, f"{node.op_type} over all axes or of a tensor of unknown rank")
        axes = tuple(sorted(int(a) % len(shape) for a in axes))
        if 0 in axes:
            raise ctx.fail(node, f"{node.op_type} over the batch axis")
        return node_layer(ReduceLayer, node, ctx, REDUCE, [node.input[0]], axes=axes,
                          keepdims=bool(attrs.get("keepdims", 1)), mean=node.op_type == "ReduceMean")

    def needs(self, layer, rule, shapes):
        return {layer.inputs[0]}

    def _scale(self, layer, x) -> float:
        return 1.0 / int(np.prod([x.shape[a] for a in layer.axes])) if layer.mean else 1.0

    def relevance(self, layer, rule, r, ctx: BackwardContext):
        x = ctx.fwd[layer.inputs[0]]
        z = x.sum(axis=layer.axes, keepdims=True) * x.dtype.type(self._scale(layer, x))
        r = r.reshape(z.shape)
        s = ctx.backend.stabilised_divide(r, z, rule.get("epsilon", 0.0))
        return [x * (s * x.dtype.type(self._scale(layer, x)))]

    def gradient(self, layer, g, ctx: BackwardContext):
        shape = ctx.shape_of(layer.inputs[0])
        kept = tuple(1 if i in layer.axes else d for i, d in enumerate(shape))
        return [np.broadcast_to(g.reshape(kept) * g.dtype.type(1.0 / int(np.prod([shape[a] for a in layer.axes]))
                                                               if layer.mean else 1.0), shape).copy()]

    def forward(self, layer, inputs):
        x = inputs[0]
        return (x.mean if layer.mean else x.sum)(axis=layer.axes, keepdims=layer.keepdims)

    def chain_input(self, layer):
        return None


REDUCE = ReduceSumHandler()
