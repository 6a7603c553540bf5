"""The forward pass on the analyzer's own CPU kernels, for networks made of layers they run.

onnxruntime hands out inner tensors only as graph outputs: every activation the backward
pass reads is one more output, which keeps onnxruntime from fusing a convolution with its
ReLU and costs a write it would not do. Its forward with VGG16's activations takes 1.1–1.4×
its plain forward (Intel CI type); the backward pass's own Winograd F(4×4, 3×3) kernels run
the same 13 convolutions in about two thirds of onnxruntime's plain forward. So where every
layer of the canonical graph is one they run (its handler's ``native_refusal`` is None), the
CPU analyzer runs the forward itself, each layer by its handler's ``native_forward``. Its
tensors then differ from onnxruntime's by float32 rounding (a few 1e-6 relative on VGG16),
as two runtimes' do; ``forward_engine="onnxruntime"`` keeps them onnxruntime's.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..errors import InputError, first_line
from ..graph.layers import ConvLayer, LayerGraph

#: the engines ``Analyzer(forward_engine=)`` and ``--forward-engine`` choose from
FORWARD_ENGINES = ("auto", "native", "onnxruntime")

#: what ``Explanation.provider`` says for this engine
PROVIDER = "lrpath-cpu-kernels"


def native_reason(graph: LayerGraph, requests: set[str]) -> str | None:
    """Why this graph's forward cannot run natively for ``requests`` (None: it can): a layer
    the kernels do not run (its handler's ``native_refusal``), or a requested tensor no layer
    produces (a rule's forward terms computed by onnxruntime nodes)."""
    made = {graph.input}
    for layer in graph.layers:
        why = layer.handler.native_refusal(layer, graph.shapes)
        if why is not None:
            return f"layer '{layer.name}' is {why}"
        made.update(layer.handler.native_outputs(layer))
    missing = sorted(set(requests) - made)
    return f"tensor '{missing[0]}' is computed by onnxruntime only" if missing else None


#: ``auto`` runs the forward natively only where Winograd carries it: at least this share of
#: its multiply-adds in 3x3 stride-1 convolutions (VGG16: all but 1 %; efficientnet-lite0's
#: 1x1 and depthwise layers run faster in onnxruntime: 17.3 against 10.8 ms per image at
#: batch 8, Intel CI type) …
WINOGRAD_SHARE = 0.8
#: … and at least this many multiply-adds per sample (a small network's forward is mostly
#: per-call overhead, where onnxruntime's is lower: mnist-vgg 0.6 against 0.2 ms per image)
MIN_MACS = 1e9


def multiply_adds(graph: LayerGraph) -> tuple[float, float] | None:
    """(all, in Winograd's 3x3 stride-1 convolutions) multiply-adds per sample of the graph's
    products (each handler's ``multiply_adds``), from its static shapes (None where one is
    unknown)."""
    total = winograd = 0.0
    for layer in graph.layers:
        macs = layer.handler.multiply_adds(layer, graph.shapes)
        if macs is None:
            return None
        total, winograd = total + macs[0], winograd + macs[1]
    return total, winograd


def slower_reason(graph: LayerGraph) -> str | None:
    """Why onnxruntime's forward is likely the faster one here (None: the native one is)."""
    macs = multiply_adds(graph)
    if macs is None:
        return "the graph's shapes are not all known"
    total, winograd = macs
    if total < MIN_MACS:
        return f"{total / 1e9:.2g} G multiply-adds per sample: onnxruntime's lower overhead wins"
    if winograd < WINOGRAD_SHARE * total:
        return f"only {winograd / total:.0%} of the multiply-adds in 3x3 stride-1 convolutions"
    return None


class NativeForward:
    """The forward tensors ``ActivationRuntime.run`` returns, from the CPU backend's kernels.

    A ReLU that alone reads a convolution's output, which no one requests, is applied in
    place (the convolution's output is the ReLU's); tensors no later layer reads and no one
    requests are let go as the pass goes on.
    """

    provider = PROVIDER

    def __init__(self, graph: LayerGraph, requests: set[str], backend_of: Callable[[], Any]) -> None:
        """``backend_of()``: the analyzer's backend at each run (``compile --check`` swaps in
        an exact one for a comparison)."""
        self.graph, self._backend_of = graph, backend_of
        self.wanted = (set(requests) | {graph.output}) - {graph.input}
        #: layers that overwrite their input: element-wise ones (ReLU, Clip) alone reading a
        #: convolution's fresh output that no one requests
        self._in_place: set[str] = set()
        last_use: dict[str, int] = {}
        for i, layer in enumerate(graph.layers):
            for name in layer.inputs:
                last_use[name] = i
            if (layer.handler.native_in_place and isinstance(graph.producer.get(layer.inputs[0]), ConvLayer)
                    and layer.inputs[0] not in self.wanted and len(graph.consumers(layer.inputs[0])) == 1):
                self._in_place.add(layer.name)
        self._drop_after: dict[int, list[str]] = {}
        for name, i in last_use.items():
            if name not in self.wanted and name != graph.input:
                self._drop_after.setdefault(i, []).append(name)

    @property
    def backend(self):
        return self._backend_of()

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The requested tensors for ``x``; an input the layers cannot take (a size the model's
        dense layers do not fit) is an ``InputError`` naming the layer, as onnxruntime's is."""
        x = np.ascontiguousarray(x, np.float32)
        values: dict[str, np.ndarray] = {self.graph.input: x}
        out: dict[str, np.ndarray] = {}
        be = self.backend
        with be.threads.blas_single():
            for i, layer in enumerate(self.graph.layers):
                try:
                    made = layer.handler.native_forward(layer, [values[n] for n in layer.inputs], be,
                                                        in_place=layer.name in self._in_place)
                except (ValueError, IndexError) as exc:
                    raise InputError(f"the forward pass failed on this input at layer '{layer.name}' "
                                     f"({layer.op}): {first_line(exc)}") from None
                values.update(made)
                out.update((name, v) for name, v in made.items() if name in self.wanted)
                for name in self._drop_after.get(i, ()):
                    values.pop(name, None)
        return out
