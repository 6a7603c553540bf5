"""Products of two tensors: squeeze-excitation gates, and products not yet resolved.

A gate ``y = x · g`` where ``g = σ(f(pool(x)))`` (squeeze-excitation, also with a hard
sigmoid) rescales channels by a squashed function of a side branch. LRP treats the gate
as a constant for the backward pass: ``y`` is then a constant rescaling of ``x``, and all of
``y``'s relevance goes to ``x`` (Pahde et al., CVPRW 2023, canonizing SE blocks); the gate
branch receives none. The result equals the explanation of the same network with the gate
frozen to the values it takes on that input.
"""

from __future__ import annotations

from ..errors import UnsupportedOpError
from .registry import BackwardContext, OpHandler, unbroadcast


class GateHandler(OpHandler):
    """``[signal, gate] → signal · gate``, the gate held constant."""

    fixed_rule = "gate"

    def needs(self, layer, rule, shapes):
        return {layer.inputs[0], layer.inputs[1]}  # the gate's value serves deconvolution

    def relevance(self, layer, rule, r, ctx: BackwardContext):
        return [unbroadcast(r, ctx.shape_of(layer.inputs[0])), None]

    def deconv(self, layer, s, ctx: BackwardContext):
        """The signal is rescaled by the gate's value, as the forward pass did."""
        g = ctx.fwd[layer.inputs[1]]
        return [s * g, None]

    def gradient(self, layer, g, ctx: BackwardContext):
        """The product rule: the gradient is no constant, so the gate branch gets its share."""
        signal, gate = ctx.fwd[layer.inputs[0]], ctx.fwd[layer.inputs[1]]
        return [unbroadcast(g * gate, signal.shape), unbroadcast(g * signal, gate.shape)]

    def forward(self, layer, inputs):
        return inputs[0] * inputs[1]

    def nonneg_output(self, layer, nonneg_inputs):
        return all(nonneg_inputs)

    def chain_input(self, layer):
        return layer.inputs[0]

    def relevance_inputs(self, layer):
        return layer.inputs[:1]

    def infer_shape(self, layer, in_shapes, readers):
        return in_shapes[0]


class ProductHandler(OpHandler):
    """``a · b`` of two non-constant tensors, as parsed; the canonical passes turn it into an
    activation or a gate. One that reaches the backward pass is a bug, not a model error."""

    def relevance(self, layer, rule, r, ctx):
        raise UnsupportedOpError(layer.op, layer.name, "a product of two non-constant tensors")

    def forward(self, layer, inputs):
        return inputs[0] * inputs[1]

    def tangent(self, layer, ins):
        (a, da), (b, db) = ins
        return a * b, da * b + a * db

    def chain_input(self, layer):
        return None


GATE = GateHandler()
PRODUCT = ProductHandler()
