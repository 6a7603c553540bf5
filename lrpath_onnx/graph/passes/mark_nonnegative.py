"""Mark linear layers whose input is ≥ 0 by construction (after a ReLU, a pool of it …).

Then a⁺ = a and the rules that split the input by sign (z⁺, αβ, generalized γ) skip the a⁻
parts. Each layer's handler says whether its output is non-negative given its inputs.
"""

from __future__ import annotations

from ..layers import Layer, LinearLayer
from . import PassContext


def run(layers: list[Layer], ctx: PassContext) -> list[Layer]:
    nonneg: set[str] = set()
    for layer in layers:
        if isinstance(layer, LinearLayer):
            layer.nonneg_input = layer.inputs[0] in nonneg
        if layer.handler.nonneg_output(layer, [i in nonneg for i in layer.inputs]):
            nonneg.add(layer.output)
    return layers
