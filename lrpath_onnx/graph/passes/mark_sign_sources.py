"""Find, for each linear layer, a fetched tensor that tells where its output is positive.

The generalized γ explains positive and negative outputs with different weights, so it
needs the sign of every output. When the layer's only reader is a rectifier that is
positive exactly where its input is and 0 elsewhere (ReLU, ReLU6, Hardswish), that
rectifier's output — which the next layer reads anyway — serves; onnxruntime then need not
return the convolution's own output, and keeps Conv+ReLU fused. (Sign-keeping smooth
activations such as SiLU are not used: far below zero their float32 output underflows to 0.)
"""

from __future__ import annotations

from ..layers import ActivationLayer, Layer, LinearLayer
from . import PassContext


def run(layers: list[Layer], ctx: PassContext) -> list[Layer]:
    readers: dict[str, list[Layer]] = {}
    for layer in layers:
        for t in layer.inputs:
            readers.setdefault(t, []).append(layer)
    for layer in layers:
        if not isinstance(layer, LinearLayer) or not ctx.single_use(layer.output):
            continue
        users = readers.get(layer.output, [])
        if len(users) == 1 and isinstance(users[0], ActivationLayer):
            kind = users[0].handler.sign_kind(users[0])
            if kind == "positive":
                layer.sign_tensor = users[0].output
                layer.sign_is_z = users[0].handler.keeps_positive(users[0])
    return layers
