"""Mark which operand of each MatMul of two activations is a Softmax's output.

That operand holds attention weights: CP-LRP treats it as a constant (``ops.bilinear``).
"""

from __future__ import annotations

from ..layers import BilinearLayer, Layer, SoftmaxLayer
from . import PassContext


def run(layers: list[Layer], ctx: PassContext) -> list[Layer]:
    softmax = {l.output for l in layers if isinstance(l, SoftmaxLayer)}
    for layer in layers:
        if isinstance(layer, BilinearLayer):
            hits = [i for i, name in enumerate(layer.inputs) if name in softmax]
            layer.attention = hits[0] if len(hits) == 1 else None
    return layers
