"""A float64 forward pass over the canonical LayerGraph, with the handlers' numpy forwards.

Used to show that canonicalisation (BN folding, affine folding, stripping) keeps the
model's function: its logits must equal onnxruntime's on the original graph.
"""

from __future__ import annotations

import numpy as np

from lrpath_onnx.graph.layers import LayerGraph


def canonical_forward(graph: LayerGraph, x: np.ndarray) -> np.ndarray:
    vals = {graph.input: np.asarray(x, np.float64)}
    for layer in graph.layers:
        vals[layer.output] = layer.handler.forward(layer, [vals[i] for i in layer.inputs])
    return vals[graph.output]
