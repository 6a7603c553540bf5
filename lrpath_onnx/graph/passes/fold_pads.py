"""A zero Pad of H/W feeding only a Conv becomes part of that Conv's own pads (exact).

EfficientNet exports write TF-style "SAME" padding as a ZeroPad2d before the conv; left
standing, the depthwise convs behind it would be taken for first layers (z^B).
"""

from __future__ import annotations

from ...kernels.conv import ConvGeometry
from ..layers import ConvLayer, Layer, PadLayer
from . import PassContext


def run(layers: list[Layer], ctx: PassContext) -> list[Layer]:
    result = list(layers)
    for pad in [l for l in layers if isinstance(l, PadLayer)]:
        p = pad.pads
        if pad.mode != "constant" or len(p) != 8 or any(p[i] for i in (0, 1, 4, 5)):
            continue
        users = [l for l in result if pad.output in l.inputs]
        if len(users) != 1 or not ctx.single_use(pad.output) or not isinstance(users[0], ConvLayer):
            continue
        conv = users[0]
        g = conv.geometry
        pads = tuple(a + b for a, b in zip(g.pads, (p[2], p[3], p[6], p[7])))
        conv.geometry = ConvGeometry(g.strides, pads, g.dilations, g.groups)
        conv.inputs = [pad.inputs[0]]
        conv.nodes[:0] = pad.nodes
        result.remove(pad)
    return result
