"""Ops that join branches: residual Add/Sum (split by contribution) and Concat (split by slice)."""

from __future__ import annotations

import numpy as np

from ..graph.layers import ConcatLayer
from ..plan.rules import make_rule
from .arrays import contiguous
from .registry import (BackwardContext, OpHandler, ParseContext, clip_span, input_dims, node_layer, register,
                       static_dims, unbroadcast)


def _abs(x):
    return np.maximum(x, 0) - np.minimum(x, 0)


class MergeHandler(OpHandler):
    """A sum of several tensors ``z = Σ_i x_i (+ c)``, split by one of two rules:

    - ``zero``/``epsilon``: input i receives ``x_i / stab(z) · R`` — each branch in proportion
      to what it contributed (zennit's ``Norm`` rule on its ``Sum`` layer, which its ResNet
      canonizer puts at every residual join); a constant term absorbs its own share, like a
      bias. Where the branches nearly cancel, the shares grow without bound.
    - ``ratio``: input i receives ``|x_i| / Σ_j |x_j| · R``: conserving (a constant term absorbs
      nothing), each share in [0, 1], signs never flipped.
    """

    fixed_rule = None

    def default_rule(self, layer):
        return make_rule("epsilon", 1e-6)

    def needs(self, layer, rule, shapes):
        return set(layer.inputs) | {layer.output}

    def relevance(self, layer, rule, r, ctx: BackwardContext):
        xs = [ctx.fwd[name] for name in layer.inputs]
        if rule.name == "ratio":
            xs = [_abs(x) for x in xs]
            s = ctx.backend.stabilised_divide(r, sum(xs[1:], xs[0]), 0.0)
        else:
            s = ctx.backend.stabilised_divide(r, ctx.fwd[layer.output], rule.get("epsilon", 0.0))
        return [unbroadcast(x * s, x.shape) for x in xs]

    def gradient(self, layer, g, ctx: BackwardContext):
        """A sum's gradient goes to every branch unchanged."""
        return [unbroadcast(g, ctx.shape_of(n)) for n in layer.inputs]

    def deconv(self, layer, s, ctx: BackwardContext):
        """A sum's signal goes back to every branch unchanged (the gradient of a sum)."""
        return self.gradient(layer, s, ctx)

    def forward(self, layer, inputs):
        out = sum(inputs[1:], inputs[0])
        return out if layer.const is None else out + layer.const.astype(out.dtype)

    def tangent(self, layer, ins):
        return self.forward(layer, [v for v, _ in ins]), sum(d for _, d in ins)

    def nonneg_output(self, layer, nonneg_inputs):
        return all(nonneg_inputs) and (layer.const is None or bool((layer.const >= 0).all()))

    def chain_input(self, layer):
        return None


MERGE_HANDLER = MergeHandler()


@register
class ConcatHandler(OpHandler):
    """Concat: each input gets back its own slice of the relevance."""

    op_types = ("Concat",)
    fixed_rule = "route"

    def parse(self, node, ctx: ParseContext):
        names = [n for n in node.input if n]
        if any(ctx.is_const(n) for n in names):
            raise ctx.fail(node, "Concat with a constant input")
        return node_layer(ConcatLayer, node, ctx, self, names, axis=int(ctx.attrs(node)["axis"]))

    def needs(self, layer, rule, shapes):
        return {n for n in layer.inputs if not static_dims(shapes.get(n))}

    def relevance(self, layer, rule, r, ctx: BackwardContext):
        axis = layer.axis % r.ndim
        sizes = [ctx.shape_of(n)[axis] for n in layer.inputs]
        cuts = np.cumsum(sizes)[:-1]
        return [contiguous(p) for p in np.split(r, cuts, axis=axis)]

    def deconv(self, layer, s, ctx):
        return self.relevance(layer, None, s, ctx)

    def gradient(self, layer, g, ctx):
        return self.relevance(layer, None, g, ctx)

    def input_boxes(self, layer, box, shapes):
        """Each input the part of the box on its own slice of the concatenated axis."""
        axis = layer.axis % (len(box) + 1) - 1
        out, start = [], 0
        for name in layer.inputs:
            dims = input_dims(name, shapes)
            span = clip_span(box[axis][0] - start, box[axis][1] - start, dims[axis])
            out.append(None if span is None else box[:axis] + (span,) + box[axis + 1:])
            start += dims[axis]
        return out

    def forward(self, layer, inputs):
        return np.concatenate(inputs, axis=layer.axis)

    def nonneg_output(self, layer, nonneg_inputs):
        return all(nonneg_inputs)

    def chain_input(self, layer):
        return None
