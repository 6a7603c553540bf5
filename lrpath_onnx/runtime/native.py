"""The forward pass on the analyzer's own CPU kernels, for networks made of layers they run.

onnxruntime hands out inner tensors only as graph outputs: every activation the backward
pass reads is one more output, which keeps onnxruntime from fusing a convolution with its
ReLU and costs a write it would not do. Its forward with VGG16's activations takes 1.1–1.4×
its plain forward (Intel CI type); the backward pass's own Winograd F(4×4, 3×3) kernels run
the same 13 convolutions in about two thirds of onnxruntime's plain forward. So where every
layer of the canonical graph is one of ``NATIVE_OPS``, the CPU analyzer runs the forward
itself. Its tensors then differ from onnxruntime's by float32 rounding (a few 1e-6 relative
on VGG16), as two runtimes' do; ``forward="onnxruntime"`` keeps them onnxruntime's.
"""

from __future__ import annotations

import numpy as np

from ..graph.layers import (ActivationLayer, AffineLayer, AvgPoolLayer, ConvLayer, DenseLayer, Layer,
                            LayerGraph, MaxPoolLayer, MergeLayer, ReshapeLayer)
from ..kernels import elementwise as _ew
from ..kernels import pooling as _pool

#: the engines ``Analyzer(forward=)`` and ``--forward`` choose from
FORWARD_ENGINES = ("auto", "native", "onnxruntime")

#: what ``Explanation.provider`` says for this engine
PROVIDER = "lrpath-cpu-kernels"


def unsupported(layer: Layer) -> str | None:
    """Why the native forward cannot run ``layer`` (None: it can)."""
    if isinstance(layer, ConvLayer):
        return None
    if isinstance(layer, ActivationLayer):
        return None if layer.fn == "relu" and not layer.parts else f"activation {layer.fn}"
    if isinstance(layer, MaxPoolLayer):
        return None
    if isinstance(layer, DenseLayer):
        return None if layer.rank == 2 and not layer.trans_a else "a dense layer over tokens or with transA"
    if isinstance(layer, ReshapeLayer):
        return None if layer.op == "Flatten" and layer.axis == 1 else f"{layer.op} (axis {layer.axis})"
    if isinstance(layer, AffineLayer):
        return None
    if isinstance(layer, MergeLayer):
        return None if layer.op in ("Add", "Sum") else layer.op
    if isinstance(layer, AvgPoolLayer):
        return None if layer.op == "GlobalAveragePool" else layer.op
    return layer.op


def native_reason(graph: LayerGraph, requests: set[str]) -> str | None:
    """Why this graph's forward cannot run natively for ``requests`` (None: it can): a layer
    the kernels do not run, or a requested tensor no layer produces (a rule's forward terms
    computed by onnxruntime nodes)."""
    for layer in graph.layers:
        why = unsupported(layer)
        if why is not None:
            return f"layer '{layer.name}' is {why}"
    made = {graph.input} | {l.output for l in graph.layers}
    made |= {l.indices for l in graph.layers if isinstance(l, MaxPoolLayer)}
    missing = sorted(set(requests) - made)
    return f"tensor '{missing[0]}' is computed by onnxruntime only" if missing else None


class NativeForward:
    """The forward tensors ``ActivationRuntime.run`` returns, from the CPU backend's kernels.

    A ReLU that alone reads a convolution's output, which no one requests, is applied in
    place (the convolution's output is the ReLU's); tensors no later layer reads and no one
    requests are let go as the pass goes on.
    """

    provider = PROVIDER

    def __init__(self, graph: LayerGraph, requests: set[str], backend) -> None:
        self.graph, self.backend = graph, backend
        self.wanted = (set(requests) | {graph.output}) - {graph.input}
        self._in_place: set[str] = set()  # ReLU layers applied in place to their convolution's output
        last_use: dict[str, int] = {}
        for i, layer in enumerate(graph.layers):
            for name in layer.inputs:
                last_use[name] = i
            if (isinstance(layer, ActivationLayer) and isinstance(graph.producer.get(layer.inputs[0]), ConvLayer)
                    and layer.inputs[0] not in self.wanted and len(graph.consumers(layer.inputs[0])) == 1):
                self._in_place.add(layer.name)
        self._drop_after: dict[int, list[str]] = {}
        for name, i in last_use.items():
            if name not in self.wanted and name != graph.input:
                self._drop_after.setdefault(i, []).append(name)

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(x, np.float32)
        values: dict[str, np.ndarray] = {self.graph.input: x}
        out: dict[str, np.ndarray] = {}
        with self.backend.threads.blas_single():
            for i, layer in enumerate(self.graph.layers):
                y = self._step(layer, [values[n] for n in layer.inputs], out)
                values[layer.output] = y
                if layer.output in self.wanted:
                    out[layer.output] = y
                for name in self._drop_after.get(i, ()):
                    values.pop(name, None)
        return out

    def _step(self, layer: Layer, ins: list[np.ndarray], out: dict[str, np.ndarray]) -> np.ndarray:
        be = self.backend
        if isinstance(layer, ConvLayer):
            return be.conv2d(ins[0], layer.weight, layer.geometry, layer.bias)
        if isinstance(layer, ActivationLayer):
            if layer.name in self._in_place:
                return _ew.relu(ins[0], out=ins[0])
            return _ew.relu(ins[0])
        if isinstance(layer, MaxPoolLayer):
            w, g = layer.window, layer.window.geometry
            x = ins[0]
            idx = _pool.max_switches(x, w.kernel, g.strides, g.pads, g.dilations, w.out_size(x.shape[2], x.shape[3]))
            if layer.indices in self.wanted:
                out[layer.indices] = idx
            return _pool.gather(x, idx)
        if isinstance(layer, DenseLayer):
            return self._dense(layer, ins[0])
        if isinstance(layer, AvgPoolLayer):  # global: the mean over the map
            return ins[0].mean(axis=(2, 3), keepdims=True, dtype=np.float32)
        return layer.handler.forward(layer, ins).astype(np.float32, copy=False)

    def _dense(self, layer: DenseLayer, a: np.ndarray) -> np.ndarray:
        """``a · W + b``, the weight's columns split over the threads (VGG16's fc6 streams
        411 MB of weights: on every core, not one)."""
        w = layer.weight if layer.weight.dtype == np.float32 else layer.weight.astype(np.float32)
        z = np.empty((a.shape[0], w.shape[1]), np.float32)
        self.backend.threads.matmul_columns(np.ascontiguousarray(a, np.float32), w, out=z)
        if layer.bias is not None:
            z += layer.bias.astype(np.float32, copy=False)
        return z
