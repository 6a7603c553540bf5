"""Turn products of a signal and a squashed side branch into gates; refuse other products.

A squeeze-excitation block multiplies a feature map by ``σ(f(pool(x)))`` (or a hard
sigmoid): the operand that comes out of a bounded squashing function (sigmoid, hard
sigmoid, tanh, a clip with both bounds, possibly scaled/shifted after) is the gate; the
other is the signal. For the backward pass the gate is a constant (``ops.gate``). When
both operands are squashed the smaller one (broadcast over the other) is the gate.
"""

from __future__ import annotations

import numpy as np

from ...errors import UnsupportedOpError
from ..layers import ActivationLayer, AffineLayer, GateLayer, Layer, ProductLayer
from . import PassContext

_SQUASHING = ("sigmoid", "hardsigmoid", "tanh")


def _squashed(tensor: str, producer: dict[str, Layer]) -> bool:
    layer = producer.get(tensor)
    while isinstance(layer, AffineLayer) or (isinstance(layer, ActivationLayer) and layer.fn == "fakequant"):
        layer = producer.get(layer.inputs[0])  # scaled, shifted or quantized (QDQ) after: still bounded
    if not isinstance(layer, ActivationLayer):
        return False
    if layer.fn == "clip":
        return layer.params["min"] is not None and layer.params["max"] is not None
    return layer.fn in _SQUASHING


def _size(tensor: str, shapes: dict[str, tuple]) -> float:
    shape = shapes.get(tensor)
    if shape is None or any(d is None for d in shape[1:]):
        return np.inf
    return float(np.prod(shape[1:]))


def run(layers: list[Layer], ctx: PassContext) -> list[Layer]:
    from ...ops.gate import GATE

    producer = {l.output: l for l in layers}
    out = []
    for layer in layers:
        if not isinstance(layer, ProductLayer):
            out.append(layer)
            continue
        a, b = layer.inputs
        sq = [_squashed(a, producer), _squashed(b, producer)]
        if not any(sq):
            ctx.errors.append(UnsupportedOpError(layer.op, layer.name, "a product of two non-constant tensors "
                                                 "that is neither an activation of one tensor nor a gate "
                                                 "(one operand a sigmoid-like function)"))
            continue
        if all(sq):
            gate_is_b = _size(b, ctx.shapes) <= _size(a, ctx.shapes)
        else:
            gate_is_b = sq[1]
        signal, gate = (a, b) if gate_is_b else (b, a)
        out.append(GateLayer(name=layer.name, op=layer.op, inputs=[signal, gate], output=layer.output,
                             nodes=layer.nodes, handler=GATE))
    return out
