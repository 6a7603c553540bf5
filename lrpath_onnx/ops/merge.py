"""Ops that join branches: residual Add/Sum (split by contribution) and Concat (split by slice)."""

from __future__ import annotations

import numpy as np

from ..graph.layers import MERGE, PASS, ROUTE
from ..plan.rules import make_rule
from .arrays import contiguous
from .elementwise import AffineHandler, PassHandler, affine_layer
from .registry import BackwardContext, OpHandler, ParseContext, new_layer, register, static_dims, unbroadcast


@register
class AddHandler(OpHandler):
    """Add/Sum. With one non-constant input it is a constant shift (a PASS layer).

    With several, ``z = Σ_i x_i (+ c)`` and input i receives ``x_i / stab(z) · R``: each
    branch gets relevance in proportion to what it contributed; a constant term absorbs
    its own share, like a bias.
    """

    op_types = ("Add", "Sum")

    def parse(self, node, ctx: ParseContext):
        names = [n for n in node.input if n]
        dyn = [n for n in names if not ctx.is_const(n)]
        consts = [np.asarray(ctx.consts[n], np.float64) for n in names if ctx.is_const(n)]
        if len(dyn) == 1:
            shift = sum(consts[1:], consts[0]) if consts else np.zeros(())
            return affine_layer(node, ctx, dyn[0], np.ones_like(shift), shift)
        return new_layer(node, ctx, MERGE, dyn, attrs={"has_const": bool(consts)})

    def default_rule(self, layer):
        return make_rule("epsilon", 1e-6) if layer.kind == MERGE else make_rule("pass")

    def needs(self, layer, rule, shapes):
        if layer.kind == PASS:
            return PassHandler().needs(layer, rule, shapes)
        return set(layer.inputs) | {layer.output}

    def relevance(self, layer, rule, r, ctx: BackwardContext):
        if layer.kind == PASS:
            return PassHandler().relevance(layer, rule, r, ctx)
        z = ctx.fwd[layer.output]
        s = ctx.backend.stabilised_divide(r, z, rule.get("epsilon", 0.0))
        out = []
        for name in layer.inputs:
            x = ctx.fwd[name]
            out.append(unbroadcast(x * s, x.shape))
        return out

    def deconv(self, layer, s, ctx: BackwardContext):
        """A sum's signal goes back to every branch unchanged (the gradient of a sum)."""
        if layer.kind == PASS:
            return PassHandler().relevance(layer, None, s, ctx)
        return [unbroadcast(s, ctx.shape_of(n)) for n in layer.inputs]

    def forward(self, layer, inputs):
        if layer.kind == PASS:
            return AffineHandler().forward(layer, inputs)
        return sum(inputs[1:], inputs[0])


@register
class ConcatHandler(OpHandler):
    """Concat: each input gets back its own slice of the relevance."""

    op_types = ("Concat",)

    def parse(self, node, ctx: ParseContext):
        names = [n for n in node.input if n]
        if any(ctx.is_const(n) for n in names):
            raise ctx.fail(node, "Concat with a constant input")
        return new_layer(node, ctx, ROUTE, names, attrs={"axis": int(ctx.attrs(node)["axis"])})

    def needs(self, layer, rule, shapes):
        return {n for n in layer.inputs if not static_dims(shapes.get(n))}

    def relevance(self, layer, rule, r, ctx: BackwardContext):
        axis = layer.attrs["axis"] % r.ndim
        sizes = [ctx.shape_of(n)[axis] for n in layer.inputs]
        cuts = np.cumsum(sizes)[:-1]
        return [contiguous(p) for p in np.split(r, cuts, axis=axis)]

    def forward(self, layer, inputs):
        return np.concatenate(inputs, axis=layer.attrs["axis"])
