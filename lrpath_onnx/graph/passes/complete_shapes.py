"""Fill in the shapes onnx's inference left open, where the layers fix them.

tf2onnx computes Flatten's target shape at run time, so every shape after it is open,
though a dense layer's weights say what it reads. Walking the layers in order, each
handler gives its output shape from its inputs' (an activation keeps it, a Transpose
permutes it, a flatten into a dense layer has that layer's input features, a dense layer
its units). Known shapes are never changed.
"""

from __future__ import annotations

from ..layers import Layer
from . import PassContext


def _static(shape) -> bool:
    return shape is not None and all(d is not None for d in shape[1:])


def run(layers: list[Layer], ctx: PassContext) -> list[Layer]:
    readers: dict[str, list[Layer]] = {}
    for layer in layers:
        for t in layer.inputs:
            readers.setdefault(t, []).append(layer)
    shapes = ctx.shapes
    for layer in layers:
        if _static(shapes.get(layer.output)) or not layer.inputs or not _static(shapes.get(layer.inputs[0])):
            continue
        shape = layer.handler.infer_shape(layer, [shapes.get(t) for t in layer.inputs], readers.get(layer.output, []))
        if _static(shape):
            shapes[layer.output] = tuple(shape)
            if hasattr(layer, "out_shape") and layer.out_shape is None:
                layer.out_shape = tuple(shape[1:])
    return layers
