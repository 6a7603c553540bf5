"""MatMul of two activations: attention's ``q·kᵀ`` and ``weights·v``.

``y = a @ b`` is linear in each operand with the other held fixed, but not in both: the
contributions ``a_mn·b_np`` would be counted twice if each operand took them all. Two rules:

- ``uniform`` (AttnLRP, Achtibat et al. 2024): each operand gets half of the relevance, by
  ε-LRP with the other operand held constant. Both halves together conserve.
- ``cp`` (CP-LRP, Ali et al. 2022): the attention weights (the operand a Softmax made) are a
  constant, so all relevance goes to the other operand (the values) and none through the
  softmax to the queries and keys; a product without an attention operand is split uniformly.
"""

from __future__ import annotations

import numpy as np

from ..graph.layers import BilinearLayer
from ..plan.rules import make_rule
from .registry import (
    BackwardContext,
    OpHandler,
    ParseContext,
    full_box,
    input_dims,
    node_layer,
    unbroadcast,
)


def _swap(x):
    return np.swapaxes(x, -1, -2)


class BilinearHandler(OpHandler):
    """``[a, b] → a @ b`` (numpy's matmul semantics: batch dims broadcast, rank ≥ 2)."""

    fixed_rule = None

    def parse(self, node, ctx: ParseContext):
        a, b = node.input[0], node.input[1]
        for name in (a, b):
            shape = ctx.shape(name)
            if shape is not None and len(shape) < 2:
                raise ctx.fail(node, f"an operand of rank {len(shape)} (need a matrix or a batch of them)")
        return node_layer(BilinearLayer, node, ctx, self, [a, b], op="MatMul")

    def default_rule(self, layer):
        return make_rule("uniform")

    def needs(self, layer, rule, shapes):
        return {*layer.inputs, layer.output}

    def shares(self, layer, rule) -> tuple[float, float]:
        """The part of the relevance each operand receives."""
        if rule.name == "cp" and layer.attention is not None:
            return (0.0, 1.0) if layer.attention == 0 else (1.0, 0.0)
        return 0.5, 0.5

    def relevance(self, layer, rule, r, ctx: BackwardContext):
        a, b = ctx.fwd[layer.inputs[0]], ctx.fwd[layer.inputs[1]]
        z = ctx.fwd[layer.output] if ctx.reuse_forward else a @ b
        s = ctx.backend.stabilised_divide(r, z, rule.get("epsilon", 0.0))
        share_a, share_b = self.shares(layer, rule)
        ra = unbroadcast(a * (s @ _swap(b)) * share_a, a.shape) if share_a else None
        rb = unbroadcast(b * (_swap(a) @ s) * share_b, b.shape) if share_b else None
        return [ra, rb]

    def gradient(self, layer, g, ctx: BackwardContext):
        a, b = ctx.fwd[layer.inputs[0]], ctx.fwd[layer.inputs[1]]
        return [unbroadcast(g @ _swap(b), a.shape), unbroadcast(_swap(a) @ g, b.shape)]

    def forward(self, layer, inputs):
        return inputs[0] @ inputs[1]

    def tangent(self, layer, ins):
        (a, da), (b, db) = ins
        return a @ b, da @ b + a @ db

    def infer_shape(self, layer, in_shapes, readers):
        sa, sb = in_shapes
        if sa is None or sb is None:
            return None
        lead = np.broadcast_shapes(tuple(d or 1 for d in sa[:-2]), tuple(d or 1 for d in sb[:-2]))
        return tuple(None if i == 0 and (sa[0] is None) else d for i, d in enumerate(lead)) + (sa[-2], sb[-1])

    def input_boxes(self, layer, box, shapes):
        return [full_box(input_dims(n, shapes)) for n in layer.inputs]

    def chain_input(self, layer):
        return None


BILINEAR = BilinearHandler()
