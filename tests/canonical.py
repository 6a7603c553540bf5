"""A float64 forward pass over the canonical LayerGraph, with the handlers' numpy forwards.

Used to show that canonicalisation (BN folding, affine folding, stripping) keeps the
model's function: its logits must equal onnxruntime's on the original graph.
"""

from __future__ import annotations

import numpy as np

from lrpath_onnx.graph.layers import LayerGraph
from lrpath_onnx.ops import handler_for


def canonical_forward(graph: LayerGraph, x: np.ndarray) -> np.ndarray:
    vals = {graph.input: np.asarray(x, np.float64)}
    for layer in graph.layers:
        ins = [vals[i] for i in layer.inputs]
        if layer.op in ("Reshape", "Squeeze", "Unsqueeze"):
            shape = graph.shapes[layer.output]
            vals[layer.output] = ins[0].reshape((ins[0].shape[0],) + tuple(shape[1:]))
        else:
            vals[layer.output] = handler_for(layer.op).forward(layer, ins)
    return vals[graph.output]
