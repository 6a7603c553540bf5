"""Ops that only move data: relevance moves back the same way, unchanged in value."""

from __future__ import annotations

import numpy as np

from ..graph.layers import ROUTE
from .arrays import contiguous
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
        return [contiguous(np.transpose(r, np.argsort(layer.attrs["perm"])))]

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


@register
class PadHandler(OpHandler):
    """Constant zero Pad (e.g. PyTorch's ZeroPad2d for TF-style "SAME"): relevance of the
    padded border goes nowhere (those inputs are constant zeros), the rest is cropped back.
    A Pad feeding only a Conv is folded into the Conv's own pads by the graph walker."""

    op_types = ("Pad",)

    def parse(self, node, ctx: ParseContext):
        attrs = ctx.attrs(node)
        mode = attrs.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode != "constant":
            raise ctx.fail(node, f"Pad mode '{mode}' (only constant zero padding)")
        if ctx.opset >= 11:
            pads = ctx.const(node, 1, "pads")
            value = ctx.optional_const(node, 2, "constant value")
            axes = ctx.optional_const(node, 3, "axes")
        else:
            pads, value, axes = np.asarray(attrs.get("pads", [])), attrs.get("value", 0.0), None
        if value is not None and float(np.asarray(value).reshape(-1)[0] if np.size(value) else 0.0) != 0.0:
            raise ctx.fail(node, "Pad with a non-zero constant")
        shape = ctx.shape(node.input[0])
        rank = len(shape) if shape is not None else len(pads) // 2
        pads = [int(p) for p in np.asarray(pads).reshape(-1)]
        if axes is not None:
            full = [0] * (2 * rank)
            ax = [int(a) % rank for a in np.asarray(axes).reshape(-1)]
            for i, a in enumerate(ax):
                full[a], full[rank + a] = pads[i], pads[len(ax) + i]
            pads = full
        if len(pads) != 2 * rank or min(pads) < 0:
            raise ctx.fail(node, f"pads {pads} (negative pads crop; not supported)")
        return new_layer(node, ctx, ROUTE, [node.input[0]], attrs={"pad_amounts": pads})

    def relevance(self, layer, rule, r, ctx):
        pads = layer.attrs["pad_amounts"]
        rank = len(pads) // 2
        index = tuple(slice(pads[i], r.shape[i] - pads[rank + i]) for i in range(rank))
        return [contiguous(r[index])]

    def forward(self, layer, inputs):
        pads = layer.attrs["pad_amounts"]
        rank = len(pads) // 2
        return np.pad(inputs[0], [(pads[i], pads[rank + i]) for i in range(rank)])
