"""The forward pass on the analyzer's own CPU kernels, for networks made of layers they run.

onnxruntime hands out inner tensors only as graph outputs: every activation the backward
pass reads is one more output, which keeps onnxruntime from fusing a convolution with its
ReLU and costs a write it would not do. Its forward with VGG16's activations takes 1.1–1.4×
its plain forward (Intel CI type); the backward pass's own Winograd F(4×4, 3×3) kernels run
the same 13 convolutions in about two thirds of onnxruntime's plain forward. So where every
layer of the canonical graph is one it runs (``unsupported``), the CPU analyzer runs the forward
itself. Its tensors then differ from onnxruntime's by float32 rounding (a few 1e-6 relative
on VGG16), as two runtimes' do; ``forward_engine="onnxruntime"`` keeps them onnxruntime's.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..errors import InputError, first_line
from ..graph.layers import (ActivationLayer, AffineLayer, AvgPoolLayer, ConcatLayer, ConvLayer, DenseLayer, Layer,
                            LayerGraph, MaxPoolLayer, MergeLayer, ReshapeLayer, TransposeLayer)
from ..kernels import elementwise as _ew
from ..kernels import pooling as _pool
from ..kernels import winograd as _wino

#: the engines ``Analyzer(forward_engine=)`` and ``--forward-engine`` choose from
FORWARD_ENGINES = ("auto", "native", "onnxruntime")

#: what ``Explanation.provider`` says for this engine
PROVIDER = "lrpath-cpu-kernels"


def _batch_led(graph: LayerGraph, *names: str) -> bool:
    """Whether every one of these tensors has its open batch axis first (static shapes)."""
    return all((graph.shapes.get(n) or (0,))[0] is None for n in names)


def _keeps_batch(layer: ReshapeLayer, graph: LayerGraph) -> bool:
    """Whether a Reshape keeps each sample apart, batch first. A constant shape operand must
    copy the batch dim (0) or infer it (-1) from the other dims, which then hold exactly one
    sample's values (not a Reshape to (1, …), as an export for one sample bakes in). One
    computed at run time (``x.view(x.size(0), -1)``: Shape → Gather → Concat) is taken as
    shape inference saw it: the batch open and first on both sides, one sample's size kept."""
    t, src = layer.target, graph.shapes.get(layer.inputs[0])
    if not src or any(d is None for d in src[1:]) or layer.out_shape is None:
        return False
    if t is None:
        return (_batch_led(graph, layer.inputs[0], layer.output)
                and int(np.prod(layer.out_shape)) == int(np.prod(src[1:])))
    if not t or t[0] not in (0, -1):
        return False
    if t[0] == 0:  # the batch copied: the other dims hold one sample's values
        return True
    rest = [src[i] if d == 0 else d for i, d in enumerate(t) if i > 0]
    return all(d > 0 for d in rest) and int(np.prod(rest)) == int(np.prod(src[1:]))


def unsupported(layer: Layer, graph: LayerGraph) -> str | None:
    """Why the native forward cannot run ``layer`` (None: it can). Reshapes and transposes only
    where the batch axis stays first and open (a Reshape to (1, …) inside a model exported
    for one sample is onnxruntime's to refuse)."""
    if isinstance(layer, ConvLayer):
        return None
    if isinstance(layer, ActivationLayer):
        return None if layer.fn in ("relu", "clip") and not layer.parts else f"activation {layer.fn}"
    if isinstance(layer, MaxPoolLayer):
        return None
    if isinstance(layer, DenseLayer):
        src = graph.shapes.get(layer.inputs[0])
        ok = layer.rank == 2 and not layer.trans_a and src is not None and len(src) == 2
        return None if ok else "a dense layer over tokens, of an input of unknown rank, or with transA"
    if isinstance(layer, ReshapeLayer):
        if layer.op == "Flatten":
            return None if layer.axis == 1 else f"Flatten (axis {layer.axis})"
        ok = layer.op == "Reshape" and _keeps_batch(layer, graph)
        return None if ok else f"{layer.op} not keeping an open batch axis first"
    if isinstance(layer, TransposeLayer):
        ok = layer.perm[:1] == (0,) and _batch_led(graph, layer.inputs[0], layer.output)
        return None if ok else f"Transpose {list(layer.perm)}"
    if isinstance(layer, AffineLayer):
        return None
    if isinstance(layer, MergeLayer):
        return None if layer.op in ("Add", "Sum") else layer.op
    if isinstance(layer, AvgPoolLayer):
        return None if layer.op in ("GlobalAveragePool", "AveragePool") else layer.op
    if isinstance(layer, ConcatLayer):
        rank = len(graph.shapes.get(layer.output) or ())
        ok = not layer.constants and rank and layer.axis % rank != 0
        return None if ok else "Concat with constant pieces, of unknown rank or along the batch"
    return layer.op


def native_reason(graph: LayerGraph, requests: set[str]) -> str | None:
    """Why this graph's forward cannot run natively for ``requests`` (None: it can): a layer
    the kernels do not run, or a requested tensor no layer produces (a rule's forward terms
    computed by onnxruntime nodes)."""
    for layer in graph.layers:
        why = unsupported(layer, graph)
        if why is not None:
            return f"layer '{layer.name}' is {why}"
    made = {graph.input} | {l.output for l in graph.layers}
    made |= {l.indices for l in graph.layers if isinstance(l, MaxPoolLayer)}
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
    convolutions and dense layers, from its static shapes (None where one is unknown)."""
    total = winograd = 0.0
    for layer in graph.layers:
        if isinstance(layer, ConvLayer):
            out = graph.shapes.get(layer.output)
            if not out or any(d is None for d in out[1:]):
                return None
            _, c, kh, kw = layer.weight.shape
            macs = float(np.prod(out[1:])) * c * kh * kw
            g = layer.geometry
            if _wino.applies(kh, kw, g.strides, g.dilations, g.groups):
                winograd += macs
            total += macs
        elif isinstance(layer, DenseLayer):
            total += float(layer.weight.size)
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
        self._in_place: set[str] = set()  # ReLU/Clip layers applied in place to their convolution's output
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

    @property
    def backend(self):
        return self._backend_of()

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The requested tensors for ``x``; an input the layers cannot take (a size the model's
        dense layers do not fit) is an ``InputError`` naming the layer, as onnxruntime's is."""
        x = np.ascontiguousarray(x, np.float32)
        values: dict[str, np.ndarray] = {self.graph.input: x}
        out: dict[str, np.ndarray] = {}
        with self.backend.threads.blas_single():
            for i, layer in enumerate(self.graph.layers):
                try:
                    y = self._step(layer, [values[n] for n in layer.inputs], out)
                except (ValueError, IndexError) as exc:
                    raise InputError(f"the forward pass failed on this input at layer '{layer.name}' "
                                     f"({layer.op}): {first_line(exc)}") from None
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
            lo, hi = (0.0, np.inf) if layer.fn == "relu" else _clip_bounds(layer.params)
            return _ew.clamp(ins[0], lo, hi, out=ins[0] if layer.name in self._in_place else None)
        if isinstance(layer, MaxPoolLayer):
            w, g = layer.window, layer.window.geometry
            x = ins[0]
            idx = _pool.max_switches(x, w.kernel, g.strides, g.pads, g.dilations, w.out_size(x.shape[2], x.shape[3]))
            if layer.indices in self.wanted:
                out[layer.indices] = idx
            return _pool.gather(x, idx)
        if isinstance(layer, DenseLayer):
            return self._dense(layer, ins[0])
        if isinstance(layer, AvgPoolLayer) and layer.op == "GlobalAveragePool":
            return ins[0].mean(axis=(2, 3), keepdims=True, dtype=np.float32)
        if isinstance(layer, TransposeLayer):
            return np.ascontiguousarray(np.transpose(ins[0], layer.perm))
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


def _clip_bounds(params: dict) -> tuple[float, float]:
    """A Clip's (min, max), open ends as ∓inf."""
    lo, hi = params.get("min"), params.get("max")
    return (-np.inf if lo is None else float(lo)), (np.inf if hi is None else float(hi))
