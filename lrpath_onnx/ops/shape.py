"""Ops that only move data: relevance moves back the same way, unchanged in value."""

from __future__ import annotations

import numpy as np

from ..graph.layers import ROUTE
from .registry import (Alias, BackwardContext, OpHandler, ParseContext, Strip, new_layer, register,
                       static_dims)


@register
class ReshapeHandler(OpHandler):
    """Flatten, Reshape, Squeeze, Unsqueeze: relevance is reshaped back to the input's shape."""

    op_types = ("Flatten", "Reshape", "Squeeze", "Unsqueeze")

    def parse(self, node, ctx: ParseContext):
        attrs = ctx.attrs(node)
        if node.op_type == "Flatten":
            attrs.setdefault("axis", 1)
        return new_layer(node, ctx, ROUTE, [node.input[0]], attrs=attrs)

    def needs(self, layer, rule, shapes):
        return set() if static_dims(shapes.get(layer.inputs[0])) else {layer.inputs[0]}

    def relevance(self, layer, rule, r, ctx: BackwardContext):
        return [r.reshape(ctx.shape_of(layer.inputs[0]))]

    def forward(self, layer, inputs):
        x = inputs[0]
        if layer.op == "Flatten":
            ax = layer.attrs["axis"] % max(x.ndim, 1)
            return x.reshape(int(np.prod(x.shape[:ax])), -1)
        raise NotImplementedError("numpy forward needs the target shape; use onnxruntime")


@register
class TransposeHandler(OpHandler):
    """Transpose (tf2onnx's NHWC↔NCHW): relevance takes the inverse permutation."""

    op_types = ("Transpose",)

    def parse(self, node, ctx: ParseContext):
        perm = ctx.attrs(node).get("perm")
        if perm is None:
            shape = ctx.shape(node.input[0])
            if shape is None:
                raise ctx.fail(node, "Transpose without perm on a tensor of unknown rank")
            perm = list(range(len(shape)))[::-1]
        return new_layer(node, ctx, ROUTE, [node.input[0]], attrs={"perm": list(perm)})

    def relevance(self, layer, rule, r, ctx):
        return [np.ascontiguousarray(np.transpose(r, np.argsort(layer.attrs["perm"])))]

    def forward(self, layer, inputs):
        return np.transpose(inputs[0], layer.attrs["perm"])


@register
class IdentityHandler(OpHandler):
    """Identity and inference-mode Dropout: the output is the input."""

    op_types = ("Identity", "Dropout")

    def parse(self, node, ctx):
        return Alias(node.output[0], node.input[0])


@register
class SoftmaxHandler(OpHandler):
    """A trailing Softmax/LogSoftmax is stripped: LRP explains the logits before it."""

    op_types = ("Softmax", "LogSoftmax")

    def parse(self, node, ctx):
        return Strip(node.output[0], node.input[0])
