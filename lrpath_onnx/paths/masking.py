"""The model with chosen neurons only: a 0/1 mask multiplied in after each graph layer.

A copy of the ONNX graph gets, for every graph layer but the last, an input ``mask:<layer>``
(shape 1×C×1×1 or 1×C) and a Mul right after the layer's output, which every consumer then
reads. onnxruntime runs it with the masks of a path selection; with all masks 1 it is the
original model exactly.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from ..api import Analyzer
from ..ops.emit import mask_node
from ..runtime.fixed_batch import fixed_batch, run_in_chunks
from ..runtime.session import ActivationRuntime
from .neurons import channel_count, graph_layers


class MaskedModel:
    """onnxruntime session of the masked copy of ``an``'s model."""

    def __init__(self, an: Analyzer) -> None:
        self.an = an
        layers = graph_layers(an)[:-1]
        nodes, inputs, rewire = [], [], {}
        self.shapes: dict[str, tuple] = {}
        for layer in layers:
            shape = an.graph.shapes.get(layer.output)
            rank = len(shape) if shape else 4
            channels = channel_count(an, layer)
            mshape = (1, channels) + (1,) * (rank - 2)
            name = f"mask:{layer.name}"
            out = f"{layer.output}::masked"
            nodes.append(mask_node(layer.output, name, out))
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(mshape)))
            rewire[layer.output] = out
            self.shapes[layer.name] = mshape
        self.runtime = ActivationRuntime(an.model, an.graph, set(), "cpu", None, nodes, [], inputs, rewire)

    def run(self, x: np.ndarray, masks: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """The explained output (logits) with the given masks (missing ones are all 1)."""
        masks = masks or {}
        feed = {f"mask:{name}": np.asarray(masks.get(name, np.ones(shape[1])), np.float32).reshape(shape)
                for name, shape in self.shapes.items()}
        x = np.asarray(x, np.float32)
        fixed = fixed_batch(self.an.graph.input_shape)
        if fixed and x.shape[0] != fixed:  # a model exported for a fixed batch size
            return run_in_chunks(lambda part: self.runtime.run(part, feed)[self.an.graph.output], x, fixed)
        return self.runtime.run(x, feed)[self.an.graph.output]
