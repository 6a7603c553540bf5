"""Ops that join branches: residual Add/Sum (split by contribution) and Concat (split by slice)."""

from __future__ import annotations

import numpy as np

from ..graph.layers import ConcatLayer
from ..plan.rules import make_rule
from .arrays import absolute, contiguous
from .registry import (BackwardContext, OpHandler, ParseContext, clip_span, input_dims, node_layer, register,
                       static_dims, unbroadcast)


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
            xs = [absolute(x) for x in xs]
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

    def native_refusal(self, layer, shapes):
        return None

    def tangent(self, layer, ins):
        return self.forward(layer, [v for v, _ in ins]), sum(d for _, d in ins)

    def nonneg_output(self, layer, nonneg_inputs):
        return all(nonneg_inputs) and (layer.const is None or bool((layer.const >= 0).all()))

    def chain_input(self, layer):
        return None

    def joins(self, layer, shapes):
        """A sum of two or more branches of the same channels (a broadcast over the channels
        has no channel-by-channel reading)."""
        out = shapes.get(layer.output)
        if len(layer.inputs) < 2 or not out or len(out) < 2 or out[1] is None:
            return None
        for name in layer.inputs:
            s = shapes.get(name)
            if not s or len(s) != len(out) or s[1] != out[1]:
                return None
        return [0] * len(layer.inputs)


MERGE_HANDLER = MergeHandler()


@register
class ConcatHandler(OpHandler):
    """Concat: each input gets back its own slice of the relevance. Pieces that do not depend
    on the model input (a ViT's class token, concatenated before the patch tokens) are
    constants: their slice of the relevance is dropped, as a bias's share is. A constant whose
    size only onnxruntime knows (broadcast to the batch by an Expand) is fetched for its shape."""

    op_types = ("Concat",)
    fixed_rule = "route"

    def parse(self, node, ctx: ParseContext):
        names = [n for n in node.input if n]
        axis = int(ctx.attrs(node)["axis"])
        constants = []
        for i, n in enumerate(names):
            if ctx.depends_on_input(n):
                continue
            shape = ctx.shape(n)
            size = None if shape is None or shape[axis] is None else int(shape[axis])
            value = ctx.consts.get(n)
            constants.append((i, n, size, None if value is None else np.asarray(value)))
        data = [n for n in names if ctx.depends_on_input(n)]
        if not data:
            raise ctx.fail(node, "every input is constant")
        return node_layer(ConcatLayer, node, ctx, self, data, axis=axis, constants=tuple(constants))

    def needs(self, layer, rule, shapes):
        return ({n for n in layer.inputs if not static_dims(shapes.get(n))}
                | {name for _, name, size, _ in layer.constants if size is None})

    @staticmethod
    def _pieces(layer):
        """Every piece in order: (input name, None, None), or (None, constant name, static size or None)."""
        fixed = {pos: (name, size) for pos, name, size, _ in layer.constants}
        data = iter(layer.inputs)
        for pos in range(len(layer.inputs) + len(layer.constants)):
            yield (None, *fixed[pos]) if pos in fixed else (next(data), None, None)

    def _sizes(self, layer, ndim: int, ctx: BackwardContext) -> list[tuple[str | None, int]]:
        """(input name or None for a constant, size along the axis) for every piece in order."""
        axis = layer.axis % ndim
        return [(None, size if size is not None else ctx.shape_of(const)[axis]) if name is None
                else (name, ctx.shape_of(name)[axis]) for name, const, size in self._pieces(layer)]

    def relevance(self, layer, rule, r, ctx: BackwardContext):
        pieces = self._sizes(layer, r.ndim, ctx)
        cuts = np.cumsum([size for _, size in pieces])[:-1]
        parts = np.split(r, cuts, axis=layer.axis % r.ndim)
        return [contiguous(p) for (name, _), p in zip(pieces, parts) if name is not None]

    def deconv(self, layer, s, ctx):
        return self.relevance(layer, None, s, ctx)

    def joins(self, layer, shapes):
        """A concat along the channels: each input's channels follow the pieces before it."""
        out = shapes.get(layer.output)
        if not out or len(out) < 2 or layer.axis % len(out) != 1:
            return None
        offsets, start = [], 0
        for name, _, size in self._pieces(layer):
            if name is not None:
                s = shapes.get(name)
                size = None if not s or len(s) != len(out) else s[1]
                offsets.append(start)
            if size is None:
                return None
            start += size
        return offsets

    def gradient(self, layer, g, ctx):
        return self.relevance(layer, None, g, ctx)

    def input_boxes(self, layer, box, shapes):
        """Each input the part of the box on its own slice of the concatenated axis."""
        axis = layer.axis % (len(box) + 1) - 1
        out, start = [], 0
        for name, _, size in self._pieces(layer):
            if name is None:
                if size is None:
                    raise ValueError(f"'{layer.name}': the size of a constant piece is known at run time only")
                start += size
                continue
            dims = input_dims(name, shapes)
            span = clip_span(box[axis][0] - start, box[axis][1] - start, dims[axis])
            out.append(None if span is None else box[:axis] + (span,) + box[axis + 1:])
            start += dims[axis]
        return out

    def native_refusal(self, layer, shapes):
        rank = len(shapes.get(layer.output) or ())
        ok = not layer.constants and rank and layer.axis % rank != 0
        return None if ok else "Concat with constant pieces, of unknown rank or along the batch"

    def forward(self, layer, inputs):
        batch = inputs[0].shape[0]
        values = {pos: value for pos, _, _, value in layer.constants}
        if any(v is None for v in values.values()):
            raise NotImplementedError(f"'{layer.name}' concatenates a constant only onnxruntime computes")
        data = iter(inputs)
        pieces = [np.broadcast_to(values[pos], (batch,) + values[pos].shape[1:]).astype(inputs[0].dtype)
                  if pos in values else next(data) for pos in range(len(inputs) + len(values))]
        return np.concatenate(pieces, axis=layer.axis)

    def nonneg_output(self, layer, nonneg_inputs):
        return all(nonneg_inputs) and all(v is not None and (v >= 0).all() for *_, v in layer.constants)

    def chain_input(self, layer):
        return None
