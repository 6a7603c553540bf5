"""Reconstruct in pixel space what one neuron responds to (Zeiler & Fergus deconvolution).

Forward to the chosen layer with onnxruntime (every MaxPool's ``Indices`` output are the
switches), zero every activation of that layer but the chosen neuron's strongest one (or
its whole map), then go back down through the network's own layers: ReLU on the signal,
transposed convolution with the layer's own filters, switch unpooling, reshapes undone,
down to the input. Each layer's handler does its step (``OpHandler.deconv``), with the same
transposed-convolution and unpooling kernels the LRP backward pass uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..api import Analyzer
from ..errors import InputError
from ..ops.registry import BackwardContext, OpHandler
from ..paths.neurons import activation_tensor
from ..runtime.replicate import replicate_forward


@dataclass
class Neuron:
    """A chosen neuron: a channel of a layer, and where its activation is strongest."""

    layer: str
    channel: int
    y: int | None
    x: int | None
    activation: float

    def label(self) -> str:
        pos = "" if self.y is None else f" ({self.y},{self.x})"
        return f"{self.layer} c{self.channel}{pos}"


def layer_activation(an: Analyzer, fwd: dict, layer_name: str) -> tuple[str, np.ndarray]:
    """(tensor name, activation of one sample) a layer's neurons are read from."""
    layer = an.graph.find(layer_name)
    tensor = activation_tensor(an, layer)
    return tensor, fwd[tensor][0]


def neurons_on_paths(record: dict) -> dict[str, list[int]]:
    """Layer → channels on the paths of a paths.json record, in path order, each once."""
    out: dict[str, list[int]] = {}
    for p in record["paths"]:
        for n in p["neurons"]:
            chans = out.setdefault(n["layer"], [])
            if int(n["neuron"]) not in chans:
                chans.append(int(n["neuron"]))
    return out


def deepest_first(chosen: dict[str, list[int]], limit: int) -> dict[str, list[int]]:
    """Which of ``chosen`` (layer → channels, shallow layers first) to show, deepest layer
    first: one neuron of every layer, then further ones round by round, up to ``limit``
    (never fewer than one per layer)."""
    layers = list(chosen)[::-1]
    picked: dict[str, list[int]] = {name: [] for name in layers}
    limit, n, depth = max(limit, len(layers)), 0, 0
    while n < limit and any(depth < len(chosen[name]) for name in layers):
        for name in layers:
            if depth < len(chosen[name]) and n < limit:
                picked[name].append(chosen[name][depth])
                n += 1
        depth += 1
    return {name: chans for name, chans in picked.items() if chans}


def select_neurons(act: np.ndarray, layer: str, channels=None, top: int | None = None) -> list[Neuron]:
    """The given ``channels``, or the ``top`` channels by their highest activation; each at
    the position of its maximum."""
    flat = act.reshape(act.shape[0], -1)
    if channels is not None:
        bad = [c for c in channels if not 0 <= c < act.shape[0]]
        if bad:
            raise InputError(f"--channels {bad[0]}: layer '{layer}' has {act.shape[0]} channels (0..{act.shape[0] - 1})")
        chosen = list(channels)
    else:
        if top is None or top < 1:
            raise InputError("--top must be at least 1")
        chosen = [int(c) for c in np.argsort(-flat.max(axis=1), kind="stable")[:top]]
    out = []
    for c in chosen:
        i = int(flat[c].argmax())
        if act.ndim == 3:
            y, x = divmod(i, act.shape[2])
            out.append(Neuron(layer, int(c), int(y), int(x), float(act[c, y, x])))
        else:
            out.append(Neuron(layer, int(c), None, None, float(act[c])))
    return out


def check_way_down(an: Analyzer, layer_name: str) -> None:
    """The refusal ``reconstruct`` would end in, before anything is run or written: a layer the
    signal from ``layer_name`` reaches on its way to the input has no deconvolution step."""
    reached = {activation_tensor(an, an.graph.find(layer_name))}
    for lay in reversed(an.graph.layers):
        if lay.output not in reached:
            continue
        if type(lay.handler).deconv is OpHandler.deconv:
            raise InputError(f"deconvolution through {lay.op} ('{lay.name}') is not defined")
        reached.update(lay.handler.relevance_inputs(lay))


def reconstruct(an: Analyzer, x: np.ndarray, neurons: list[Neuron], whole_map: bool = False) -> np.ndarray:
    """One pixel-space reconstruction per neuron, in the model's input layout (N, ...)."""
    if not neurons:
        raise InputError("no neuron selected")
    layer = an.graph.find(neurons[0].layer)
    if any(nr.layer != neurons[0].layer for nr in neurons):
        raise InputError("reconstruct neurons of one layer at a time")
    tensor = activation_tensor(an, layer)
    an.request(tensor)
    x = an.check_input(x)[:1]
    fwd = an.forward(x)
    fwd[an.graph.input] = x
    act = fwd[tensor][0]
    n = len(neurons)
    signal = np.zeros((n,) + act.shape, np.float32)
    for k, nr in enumerate(neurons):
        if whole_map or nr.y is None:
            signal[k, nr.channel] = act[nr.channel]
        else:
            signal[k, nr.channel, nr.y, nr.x] = act[nr.channel, nr.y, nr.x]
    be = an.backend
    batched = be.upload_tensors(replicate_forward(an.graph, fwd, n))
    ctx = BackwardContext(fwd=batched, backend=be, cache=an.cache, batch=n, shapes=an.graph.shapes)
    pending = {tensor: be.upload(signal)}
    with an.backend.threads.blas_single():
        for lay in reversed(an.graph.layers):
            s = pending.pop(lay.output, None)
            if s is None:
                continue
            for name, out in zip(lay.inputs, lay.handler.deconv(lay, s, ctx)):
                if out is not None:
                    pending[name] = pending[name] + out if name in pending else out
    image = pending.get(an.graph.input)
    return np.zeros((n,) + x.shape[1:], np.float32) if image is None else np.asarray(be.to_host(image), np.float32)


def picture(rec: np.ndarray, layout: str, channel_order: str = "rgb") -> np.ndarray:
    """uint8 RGB picture of one reconstruction: normalised by its largest magnitude and
    centred at grey (0 → 128), as in Zeiler & Fergus's figures."""
    hwc = rec.transpose(1, 2, 0) if layout == "nchw" else rec
    m = np.abs(hwc).max()
    v = 0.5 + 0.5 * (hwc / m if m > 0 else hwc)
    if hwc.shape[2] == 3 and channel_order == "bgr":
        v = v[..., ::-1]
    if hwc.shape[2] != 3:
        v = np.repeat(v.mean(axis=2, keepdims=True), 3, axis=2)
    return (np.clip(v, 0, 1) * 255 + 0.5).astype(np.uint8)
