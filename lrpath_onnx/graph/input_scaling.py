"""Whether a model rescales its pixels itself, as Keras models with a ``Rescaling(1/255)`` layer
(``keras.applications``' EfficientNets and MobileNetV3s among them) do.

Such a model wants raw 0–255 pixels. Fed the usual 0–1 values, it sees images 255 times too
dark and still predicts something, so nothing fails and every explanation is of the wrong
input. The leading element-wise layers say it: one of them scales by 1/255 (or 1/127.5 with a
shift of −1, the ``[-1, 1]`` convention); a normalisation of 0–1 values by a standard
deviation (×4.4) or a caffe-style mean subtraction (×1) is not that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .layers import ROUTE, AffineLayer, LayerGraph

#: a leading scale this small maps 0–255 pixels to about [0, 1] or [-1, 1]: 1/255 is 0.0039,
#: 1/127.5 is 0.0078, dividing raw pixels by ImageNet's std in pixels (58.4) 0.017; normalising
#: 0–1 values by a standard deviation scales by more than 1
RAW_PIXELS_SCALE = 1 / 16


@dataclass(frozen=True)
class InputScaling:
    """The model's own leading rescaling: its overall scale and the layer doing it."""

    scale: float
    layer: str


def input_scaling(graph: LayerGraph) -> InputScaling | None:
    """The rescaling the model's first element-wise layers apply to its input when one of them,
    or all together, scale as little as a ``Rescaling(1/255)`` (``RAW_PIXELS_SCALE``); None
    otherwise."""
    total, found, tensor = 1.0, None, graph.input
    while True:
        readers = graph.consumers(tensor)
        if len(readers) != 1:
            break
        layer = readers[0]
        if isinstance(layer, AffineLayer):
            scale = float(np.abs(np.asarray(layer.scale, np.float64)).max(initial=0.0))
        else:  # a scaling folded into the first conv's weights (x / 255 before it) is one too
            scale = layer.input_scale
        if not scale > 0:
            break
        total *= scale
        # a Rescaling(1/255) followed by a normalisation by ImageNet's std (×4.5) is still one
        if found is None and (scale <= RAW_PIXELS_SCALE or total <= RAW_PIXELS_SCALE):
            found = layer.name
        if not isinstance(layer, AffineLayer) and layer.kind != ROUTE:
            break
        tensor = layer.output
    return None if found is None else InputScaling(total, found)


def raw_pixel_options(graph: LayerGraph, options: dict) -> InputScaling | None:
    """The model's rescaling when it wants 0–255 pixels and ``options`` (the preprocessing
    asked for: scale, mean, std) leave the pixel scale open; then ``options`` get ``scale=1``."""
    if any(options.get(k) is not None for k in ("scale", "mean", "std")):
        return None
    scaled = input_scaling(graph)
    if scaled is not None:
        options["scale"] = 1.0
    return scaled
