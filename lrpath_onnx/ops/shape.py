"""Ops that only move data: relevance moves back the same way, unchanged in value."""

from __future__ import annotations

import numpy as np

from ..graph.layers import PadLayer, ReshapeLayer, TransposeLayer
from .arrays import contiguous
from .registry import (Alias, BackwardContext, OpHandler, ParseContext, Strip, clip_span, full_box, input_dims,
                       node_layer, register, static_dims)


class RouteHandler(OpHandler):
    """Data moves without arithmetic: relevance and deconvolution signals move back alike."""

    fixed_rule = "route"

    def deconv(self, layer, s, ctx):
        return self.relevance(layer, None, s, ctx)

    def gradient(self, layer, g, ctx):
        return self.relevance(layer, None, g, ctx)

    def nonneg_output(self, layer, nonneg_inputs):
        return all(nonneg_inputs)


@register
class ReshapeHandler(RouteHandler):
    """Flatten, Reshape, Squeeze, Unsqueeze: relevance is reshaped back to the input's shape."""

    op_types = ("Flatten", "Reshape", "Squeeze", "Unsqueeze")

    def parse(self, node, ctx: ParseContext):
        attrs = ctx.attrs(node)
        static = ctx.shape(node.output[0])
        return node_layer(ReshapeLayer, node, ctx, self, [node.input[0]], axis=int(attrs.get("axis", 1)),
                          out_shape=tuple(static[1:]) if static_dims(static) else None)

    def relevance(self, layer, rule, r, ctx: BackwardContext):
        return [r.reshape(ctx.shape_of(layer.inputs[0]))]

    def forward(self, layer, inputs):
        x = inputs[0]
        if layer.op == "Flatten":
            ax = layer.axis % max(x.ndim, 1)
            return x.reshape(int(np.prod(x.shape[:ax])), -1)
        if layer.out_shape is None:
            raise NotImplementedError(f"'{layer.name}' has no static output shape")
        return x.reshape((x.shape[0],) + tuple(layer.out_shape))

    def infer_shape(self, layer, in_shapes, readers):
        """A flatten into a dense layer has that layer's input features (tf2onnx computes the
        target shape at run time, leaving every later shape open)."""
        src = in_shapes[0]
        if len(readers) == 1 and readers[0].handler.neurons(readers[0]) is not None and src is not None:
            features = readers[0].handler.neurons(readers[0])[0]
            if int(np.prod(src[1:])) == features:
                return (src[0], features)
        return None

    def channel_map(self, layer, ids, out_shape):
        return ids.reshape(tuple(out_shape[1:]))

    def input_boxes(self, layer, box, shapes):
        """The same box where the shape is unchanged; otherwise all of the input (a flatten
        spreads any box over every axis)."""
        dims = input_dims(layer.inputs[0], shapes)
        out = shapes.get(layer.output)
        return [box if out is not None and tuple(out[1:]) == dims else full_box(dims)]


@register
class TransposeHandler(RouteHandler):
    """Transpose (tf2onnx's NHWC↔NCHW): relevance takes the inverse permutation."""

    op_types = ("Transpose",)

    def parse(self, node, ctx: ParseContext):
        perm = ctx.attrs(node).get("perm")
        if perm is None:
            shape = ctx.shape(node.input[0])
            if shape is None:
                raise ctx.fail(node, "Transpose without perm on a tensor of unknown rank")
            perm = list(range(len(shape)))[::-1]
        return node_layer(TransposeLayer, node, ctx, self, [node.input[0]], perm=tuple(int(p) for p in perm))

    def relevance(self, layer, rule, r, ctx):
        return [contiguous(np.transpose(r, np.argsort(layer.perm)))]

    def forward(self, layer, inputs):
        return np.transpose(inputs[0], layer.perm)

    def infer_shape(self, layer, in_shapes, readers):
        src = in_shapes[0]
        return None if src is None else tuple(src[p] for p in layer.perm)

    def input_boxes(self, layer, box, shapes):
        """The box's spans move back to the axes they came from."""
        spans = [None] * len(box)
        for out_axis, in_axis in enumerate(layer.perm[1:]):
            spans[in_axis - 1] = box[out_axis]
        return [tuple(spans)]

    def channel_map(self, layer, ids, out_shape):
        # ids carry no batch axis: the permutation's batch entry (0) stays in front
        return np.transpose(ids[None], layer.perm)[0]


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
class PadHandler(RouteHandler):
    """Constant zero Pad (e.g. PyTorch's ZeroPad2d for TF-style "SAME"): relevance of the
    padded border goes nowhere (those inputs are constant zeros), the rest is cropped back.
    A Pad feeding only a Conv is folded into the Conv's own pads by ``graph.passes.fold_pads``."""

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
        return node_layer(PadLayer, node, ctx, self, [node.input[0]], pads=tuple(pads))

    def relevance(self, layer, rule, r, ctx):
        pads = layer.pads
        rank = len(pads) // 2
        index = tuple(slice(pads[i], r.shape[i] - pads[rank + i]) for i in range(rank))
        return [contiguous(r[index])]

    def input_boxes(self, layer, box, shapes):
        """Spans shifted back by the leading pads; a box inside the padding reads nothing."""
        dims = input_dims(layer.inputs[0], shapes)
        rank = len(layer.pads) // 2
        spans = tuple(clip_span(lo - layer.pads[a + 1], hi - layer.pads[a + 1], n)
                      for a, ((lo, hi), n) in enumerate(zip(box, dims)))
        return [None if None in spans or rank != len(box) + 1 else spans]

    def forward(self, layer, inputs):
        pads = layer.pads
        rank = len(pads) // 2
        return np.pad(inputs[0], [(pads[i], pads[rank + i]) for i in range(rank)])

    def chain_input(self, layer):
        rank = len(layer.pads) // 2  # padding the batch or channel axis would move channels
        return None if any(layer.pads[i] for i in (0, 1, rank, rank + 1)) else layer.inputs[0]
