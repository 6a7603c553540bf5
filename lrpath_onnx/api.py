"""Python API: ``Analyzer(model).explain(x)``, the same engine the CLI drives.

An Analyzer loads and checks the model once, plans the rules, opens one onnxruntime
session that returns every tensor the backward pass needs, and keeps modified weights
cached across calls; ``explain`` then costs one forward and one backward pass per batch.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .backend import CpuBackend, make_backend
from .backward.bounds import box_bounds
from .backward.linear_rules import WeightCache
from .backward.propagate import LayerFlow, last_readers, propagate, session_needs
from .diagnose import bounds_warnings, conservation_warnings
from .errors import InputError
from .graph.canonical import build_layer_graph
from .graph.layers import Layer, LayerGraph, TransposeLayer
from .graph.loader import fix_input_size, load_model
from .ops.emit import term_nodes
from .ops.registry import BackwardContext
from .plan.planner import Plan, make_plan
from .runtime.fixed_batch import first_samples, fixed_batch, padded, padded_targets
from .runtime.replicate import join_runs, replicate_forward
from .runtime.native import FORWARD_ENGINES, NativeForward, native_reason, slower_reason
from .runtime.session import ActivationRuntime, default_threads


@dataclass(frozen=True)
class NeuronTarget:
    """An intermediate neuron to explain: a channel of a layer's output, or one position of it."""

    layer: str
    channel: int
    y: int | None = None
    x: int | None = None

    def __str__(self) -> str:
        """``layer:channel@(y, x)`` (``layer:channel`` for a whole channel or a dense unit)."""
        pos = "" if self.y is None else f"@({self.y}, {self.x})"
        return f"{self.layer}:{self.channel}{pos}"


@dataclass(frozen=True)
class ClassName:
    """A class given by name (``--target "tiger cat"``), resolved against the model's class names."""

    name: str


Target = int | NeuronTarget | None


def parse_target(text: str | None) -> Target | ClassName:
    """``None``/``""`` → top-1; ``"N"`` → class N; ``"LAYER:C"``, ``"LAYER:C:Y:X"`` or
    ``"LAYER:C@(Y, X)"`` (as lrpath prints neurons) → neuron; anything else → a class name
    (``ClassName``), resolved where the labels are known."""
    if text is None or text.strip() == "":
        return None
    t = text.strip()
    if re.fullmatch(r"-?\d+", t):
        return int(t)
    m = (re.fullmatch(r"(.+):(-?\d+):(-?\d+):(-?\d+)", t)
         or re.fullmatch(r"(.+):(-?\d+)@\(\s*(-?\d+)\s*,\s*(-?\d+)\s*\)", t))
    if m:
        return NeuronTarget(m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4)))
    m = re.fullmatch(r"(.+):(-?\d+)", t)
    if m:
        return NeuronTarget(m.group(1), int(m.group(2)))
    return ClassName(t)


@dataclass
class Explanation:
    """LRP result for one batch.

    Attributes
    ----------
    relevance : input relevance, float32, the model's input layout (batch first).
    logits : the explained output (logits: a trailing Softmax is stripped), per sample.
    targets : per sample, the class index explained, or the neuron.
    start_relevance : per sample, the relevance put at the start (the logit / activation).
    flows : per layer, relevance totals at its output and inputs (conservation per layer).
    kept : per requested layer, the relevance at its output.
    layer_seconds : per layer, the seconds its backward step took for the batch (host time).
    """

    relevance: np.ndarray
    logits: np.ndarray
    targets: list
    start_relevance: np.ndarray
    flows: list[LayerFlow]
    kept: dict[str, np.ndarray] = field(default_factory=dict)
    provider: str = "CPUExecutionProvider"
    device: str = "cpu"
    timings_s: dict[str, float] = field(default_factory=dict)
    #: per sample, the share of its input values outside the z^B bounds (None: no z^B layer)
    bounds_violation: np.ndarray | None = None
    forward: dict[str, np.ndarray] | None = None
    products: dict = field(default_factory=dict)
    layer_seconds: dict[str, float] = field(default_factory=dict)

    def first(self, n: int) -> "Explanation":
        """The explanation of the batch's first ``n`` samples (without its forward tensors)."""
        return Explanation(
            relevance=self.relevance[:n], logits=self.logits[:n], targets=self.targets[:n],
            start_relevance=self.start_relevance[:n],
            flows=[LayerFlow(f.name, f.op, f.rule, f.relevance_out[:n], f.relevance_in[:n]) for f in self.flows],
            kept={k: v[:n] for k, v in self.kept.items()}, provider=self.provider, device=self.device,
            timings_s=dict(self.timings_s),
            bounds_violation=None if self.bounds_violation is None else self.bounds_violation[:n],
            layer_seconds=dict(self.layer_seconds))

    @property
    def input_relevance_sum(self) -> np.ndarray:
        return self.relevance.reshape(len(self.relevance), -1).sum(axis=1, dtype=np.float64)

    def conservation(self, i: int) -> dict:
        """Totals for sample ``i``: output relevance, input relevance, their ratio, per layer."""
        out_r = float(self.start_relevance[i])
        in_r = float(self.input_relevance_sum[i])
        return {
            "output_relevance": out_r,
            "input_relevance": in_r,
            "ratio": in_r / out_r if out_r != 0 else None,
            "per_layer": [{"layer": f.name, "op": f.op, "rule": f.rule,
                           "relevance_out": float(f.relevance_out[i]),
                           "relevance_in": float(f.relevance_in[i]),
                           "ratio": float(f.relevance_in[i] / f.relevance_out[i]) if f.relevance_out[i] else None}
                          for f in self.flows],
        }


class Analyzer:
    """Explain an ONNX image classifier with LRP.

    Parameters
    ----------
    preset : rule preset name (``lrpath plan --presets`` lists them); ``auto`` chooses by the
        network's structure.
    rules : overrides ``PATTERN=RULE[:PARAM]``, applied in order.
    device : ``cpu``, ``cuda`` or ``auto``.
    model_path : the ``.onnx`` file, or a zoo name (``"mnist-vgg"``: its preprocessing and z^B
        bounds come with it).
    low, high : z^B bounds in the model's input space, broadcastable to the input
        (e.g. shape (1, C, 1, 1)); default: the zoo entry's, else 0 and 1.
    size : ``(height, width)`` for a model whose input leaves them open: every layer's
        shape is then known (neuron paths and receptive fields need them).
    rule_forward : where the modified-weight forward products of γ/z⁺/αβ are computed:
        ``kernels`` (numba/BLAS during the backward pass, the default: faster and lighter
        on VGG16) or ``runtime`` (extra Conv/Gemm nodes in the onnxruntime session).
    output : which output of a model with several to explain (its name or index); the first
        by default.
    forward_engine : what runs the forward pass: ``auto`` (the analyzer's own CPU kernels
        where every layer is one they run, the backward runs on the CPU and Winograd-sized
        3x3 convolutions carry a large forward, as in VGG16; else onnxruntime; see
        ``runtime.native``), ``native`` (those kernels wherever they run every layer, or an
        error) or ``onnxruntime`` (its tensors bit for bit).
    """

    def __init__(self, model_path: str | Path, preset: str = "auto",
                 rules: Sequence[str] = (), device: str = "cpu",
                 low: np.ndarray | float | None = None, high: np.ndarray | float | None = None,
                 threads: int | None = None, rule_forward: str = "kernels",
                 size: tuple[int, int] | None = None, output: str | None = None,
                 forward_engine: str = "auto") -> None:
        self.model_path, self.zoo = _model_file(model_path)
        self.backend = make_backend(device)
        self.device = self.backend.name
        self.model = load_model(self.model_path)
        if size is not None:
            fix_input_size(self.model, size)
        self.graph: LayerGraph = build_layer_graph(self.model, output=output)
        self._plan = make_plan(self.graph, preset, rules)
        if low is None and high is None and self.zoo is not None and self.zoo.preprocessing:
            from .io.images import z_bounds

            low, high = z_bounds(self.preprocessing())
        self.set_bounds(0.0 if low is None else low, 1.0 if high is None else high)
        self._requested_device = device
        self._threads = threads if threads is not None else default_threads()
        if rule_forward not in ("runtime", "kernels"):
            raise InputError(f"rule_forward must be 'runtime' or 'kernels', got '{rule_forward}'")
        self.rule_forward = rule_forward
        if forward_engine not in FORWARD_ENGINES:
            raise InputError(f"forward engine must be one of {', '.join(FORWARD_ENGINES)}, got '{forward_engine}'")
        self.forward_engine = forward_engine
        self.cache = WeightCache(self.backend)
        self._extra: set[str] = set()
        self._runtime: ActivationRuntime | None = None
        self._engine: ActivationRuntime | NativeForward | None = None
        #: the model failed on a batch its open batch axis allows and ran one sample alone: a
        #: batch size of 1 fixed inside it (an exporter's Reshape to (1, …)); from then on it is
        #: explained one sample at a time
        self.one_at_a_time = False

    def preprocessing(self, **options):
        """The image preprocessing for this model: the zoo entry's, else what the input shape says,
        with ``options`` (size, resize, fit, scale, mean, std, channel_order, layout) on top; 0–255
        pixels for a model that rescales them itself (``graph.input_scaling``)."""
        from .graph.input_scaling import raw_pixel_options
        from .io.images import preprocess_from_input_shape

        base = dict(self.zoo.preprocessing) if self.zoo is not None else {}
        merged = {k: (tuple(v) if isinstance(v, list) else v) for k, v in {**base, **options}.items() if v is not None}
        raw_pixel_options(self.graph, merged)  # a model that rescales its pixels itself gets them as 0–255
        return preprocess_from_input_shape(self.input_shape, **merged)

    def preprocess(self, image, **options) -> np.ndarray:
        """An image file or Pillow image as the model's input batch (1, …), preprocessed as the
        CLI does it (EXIF orientation, resize, crop, scale, mean/std, layout)."""
        from PIL import Image as PILImage

        from .io.images import load_image, upright

        img = upright(image) if isinstance(image, PILImage.Image) else load_image(image)
        return self.preprocessing(**options).apply(img)[None]

    def set_bounds(self, low: np.ndarray | float, high: np.ndarray | float) -> None:
        """z^B bounds in the model's input space (broadcastable to the input batch)."""
        low, high = np.asarray(low, np.float32), np.asarray(high, np.float32)
        if (np.broadcast_to(low, np.broadcast_shapes(low.shape, high.shape))
                > np.broadcast_to(high, np.broadcast_shapes(low.shape, high.shape))).any():
            raise InputError("z^B bounds: low is above high")
        self.low, self.high = low, high

    # ------------------------------------------------------------------ structure
    def plan(self) -> Plan:
        return self._plan

    def warnings(self, exp: Explanation, i: int) -> list[str]:
        """What ``lrpath explain`` warns about sample ``i`` of ``exp`` (explanation.json's
        ``warnings``): conservation far from 1 and why, an input outside z^B's bounds."""
        outside = None if exp.bounds_violation is None else float(exp.bounds_violation[i])
        low, high = np.asarray(self.low).reshape(-1), np.asarray(self.high).reshape(-1)
        return conservation_warnings(exp.conservation(i), self._plan.applied) + bounds_warnings(outside, low, high)

    @property
    def input_shape(self) -> tuple:
        return self.graph.input_shape

    @property
    def num_classes(self) -> int | None:
        s = self.graph.output_shape
        return s[-1] if s and len(s) == 2 else None

    def requests(self) -> set[str]:
        """Every tensor the backward pass reads, by the plan."""
        need: set[str] = set()
        for tensors in session_needs(self.graph, self._plan).values():
            need |= tensors
        return need | self._extra

    def _term_nodes(self) -> tuple[list, list, set[str]]:
        nodes, inits, outs = [], [], set()
        if self.rule_forward != "runtime":
            return nodes, inits, outs
        for layer in self.graph.linear_layers():
            terms = layer.handler.terms(layer, self._plan.rule_for(layer))
            if terms:
                n, i, o = term_nodes(layer, terms)
                nodes += n
                inits += i
                outs |= set(o)
        return nodes, inits, outs

    def runtime(self) -> ActivationRuntime:
        if self._runtime is None:
            nodes, inits, outs = self._term_nodes()
            # GPU kernels need no GPU forward: onnxruntime's CUDA provider where it has one, else its CPU
            # one (a CPU-only onnxruntime, the simulator); ``provider`` says which ran
            device = "auto" if self.device == "cuda" else self._requested_device
            self._runtime = ActivationRuntime(self.model, self.graph, self.requests() | outs,
                                              device, self._threads, nodes, inits)
        return self._runtime

    def engine(self) -> ActivationRuntime | NativeForward:
        """What runs the forward pass (``forward_engine``): the native kernels or onnxruntime."""
        if self._engine is None:
            why = self._native_reason()
            if why is not None and self.forward_engine == "native":
                raise InputError(f"--forward-engine native: {why}")
            self._engine = self.runtime() if why else NativeForward(self.graph, self.requests(), lambda: self.backend)
        return self._engine

    def _native_reason(self) -> str | None:
        """Why the forward pass is not run natively (None: it is)."""
        if self.forward_engine == "onnxruntime":
            return "onnxruntime asked for"
        if not isinstance(self.backend, CpuBackend):
            return "the backward pass runs on a GPU (onnxruntime's CUDA provider runs the forward)"
        if self.rule_forward == "runtime":
            return "the rules' forward terms are onnxruntime nodes (rule_forward='runtime')"
        why = native_reason(self.graph, self.requests())
        if why is None and self.forward_engine == "auto":
            why = slower_reason(self.graph)
        return why

    @property
    def provider(self) -> str:
        return self.engine().provider

    # ------------------------------------------------------------------ explaining
    def check_input(self, x: np.ndarray) -> np.ndarray:
        """``x`` as float32 with a batch axis, checked against the model's input shape."""
        x = np.asarray(x)
        if x.dtype.kind not in "fiub":
            raise InputError(f"input tensor has dtype {x.dtype}; need a numeric array")
        expected = self.graph.input_shape
        if expected and x.ndim == len(expected) - 1:
            x = x[None]
        if expected and x.ndim != len(expected):
            raise InputError(f"input has shape {tuple(x.shape)}, the model expects rank {len(expected)} "
                             f"{_fmt_shape(expected)}")
        for got, want in zip(x.shape[1:], expected[1:]):
            if want is not None and got != want:
                raise InputError(f"input has shape {tuple(x.shape)}, the model expects {_fmt_shape(expected)}")
        x = x.astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            raise InputError("input tensor holds NaN or infinite values")
        return np.ascontiguousarray(x)

    def forward(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The forward tensors of a checked batch (``engine``: the native kernels or onnxruntime),
        run in chunks of the model's fixed batch size if it has one (the last filled up with
        copies, whose tensors are dropped)."""
        rt = self.engine()
        fixed = fixed_batch(self.graph.input_shape)
        if fixed is None or x.shape[0] == fixed:
            return rt.run(x)
        if x.shape[0] % fixed and self._batch_moves():
            raise InputError(f"the model takes batches of exactly {fixed}; got {x.shape[0]}")
        xp = padded(x, fixed)
        fwd = join_runs(self.graph, [rt.run(xp[i:i + fixed]) for i in range(0, xp.shape[0], fixed)])
        return first_samples(fwd, x.shape[0])

    def _start(self, fwd: dict, target: Target | Sequence[int], n: int):
        logits = fwd[self.graph.output]
        if isinstance(target, NeuronTarget):
            layer = self.graph.find(target.layer)
            out = fwd[layer.output]
            axis = self.graph.channel_axes().get(layer.output)
            axis = axis if axis and axis < out.ndim else 1  # unknown: channels first
            start = np.zeros_like(out)
            if out.ndim < 2 or not 0 <= target.channel < out.shape[axis]:
                raise InputError(f"--target {target}: layer '{layer.name}' has "
                                 f"{out.shape[axis] if out.ndim > 1 else 0} channels")
            act, view = np.moveaxis(out, axis, 1), np.moveaxis(start, axis, 1)  # (N, C, …) views
            if target.y is None:
                view[:, target.channel] = act[:, target.channel]
            else:
                if act.ndim != 4 or not (0 <= target.y < act.shape[2] and 0 <= target.x < act.shape[3]):
                    raise InputError(f"--target {target}: position outside the {act.shape[2:]} map "
                                     f"of layer '{layer.name}'")
                view[:, target.channel, target.y, target.x] = act[:, target.channel, target.y, target.x]
            return layer.output, start, [str(target)] * n
        flat = logits.reshape(n, -1)
        if target is None:
            idx = flat.argmax(axis=1)
        else:
            idx = np.broadcast_to(np.asarray(target, np.int64), (n,))
            bad = [int(i) for i in idx if not 0 <= i < flat.shape[1]]
            if bad:
                raise InputError(f"--target {bad[0]} is out of range: the model has {flat.shape[1]} classes "
                                 f"(0..{flat.shape[1] - 1})")
        start = np.zeros_like(flat)
        start[np.arange(n), idx] = flat[np.arange(n), idx]
        return self.graph.output, start.reshape(logits.shape), [int(i) for i in idx]

    def explain(self, x: np.ndarray, target: Target | Sequence[int] = None,
                keep: Sequence[str] = (), masks: dict[str, np.ndarray] | None = None,
                keep_forward: bool = False) -> Explanation:
        """LRP for a batch ``x`` (the model's input layout; a missing batch axis is added).

        Parameters
        ----------
        target : ``None`` (top-1 per sample), a class index (or one per sample), or a
            ``NeuronTarget`` to start from an intermediate neuron.
        keep : layer names whose output relevance to return (``"*"`` for all).
        masks : per layer name, a 0/1 vector over the layer's output channels: relevance of
            the other channels is dropped there (K-path heatmaps).
        keep_forward : return the forward tensors too (``Explanation.forward``).
        """
        x = self.check_input(x)
        fixed = 1 if self.one_at_a_time else fixed_batch(self.graph.input_shape)
        if fixed is not None and x.shape[0] != fixed and (self._batch_moves() or self.one_at_a_time):
            self._no_forward_kept(keep_forward)
            return self._in_parts(x, fixed, target, lambda xs, t: self.explain(xs, t, keep, masks))
        if isinstance(target, NeuronTarget):
            self.request(self.graph.find(target.layer).output)
        t0 = time.perf_counter()
        fwd, parts = self._forward_or_parts(x, target, lambda xs, t: self.explain(xs, t, keep, masks), keep_forward)
        if parts is not None:
            return parts
        t1 = time.perf_counter()
        start_tensor, start, targets = self._start(fwd, target, x.shape[0])
        exp = self._backward(x, fwd, start_tensor, start, keep, masks, keep_forward)
        exp.targets = targets
        exp.timings_s["forward"] = t1 - t0
        exp.timings_s["total"] = exp.timings_s["backward"] + t1 - t0
        return exp

    def _last_readers(self) -> dict[str, tuple[str, ...]]:
        """Per layer, the forward tensors the backward may drop after its step (fixed by the plan)."""
        if not hasattr(self, "_readers"):
            self._readers = last_readers(self.graph, self._plan)
        return self._readers

    def _forward_or_parts(self, x: np.ndarray, target, run, keep_forward: bool = False):
        """``(x's forward tensors, None)``, or ``(None, x done by run(sample, its target) one
        sample at a time)`` where the model takes one at a time: known (``one_at_a_time``), or
        found now (onnxruntime fails on the batch and runs its first sample)."""
        if not (self.one_at_a_time and x.shape[0] > 1):
            try:
                return self.forward(x), None
            except InputError:
                if not self._fails_only_batched(x):
                    raise
        self._no_forward_kept(keep_forward)
        return None, self._in_parts(x, 1, target, run)

    def _fails_only_batched(self, x: np.ndarray) -> bool:
        """After onnxruntime failed on the batch ``x``: whether its first sample alone runs,
        in a model whose batch axis is open (then ``one_at_a_time``)."""
        if x.shape[0] == 1 or self.one_at_a_time or fixed_batch(self.graph.input_shape) is not None:
            return False
        try:
            self.forward(x[:1])
        except InputError:
            return False
        self.one_at_a_time = True
        return True

    def _no_forward_kept(self, keep_forward: bool) -> None:
        """A batch explained in parts has no forward tensors of the whole batch to keep."""
        if keep_forward:
            raise InputError("this model runs one sample at a time (or a fixed batch with its batch axis moving "
                             "inside): keep_forward takes one run's samples only; give them separately")

    def _batch_moves(self) -> bool:
        """Whether some tensor's batch axis is not the first (attention layouts)."""
        if not hasattr(self, "_moves"):
            self._moves = any(a != 0 for a in self.graph.batch_axes().values())
        return self._moves

    def _in_parts(self, x: np.ndarray, fixed: int, target, run) -> Explanation:
        """A fixed-batch model whose batch axis moves inside (a transformer exported for batch 1),
        or one that runs one sample at a time (``one_at_a_time``): ``run(part, its targets)``
        ``fixed`` samples at a time and the parts joined, since the model's tensors cannot be
        stacked along one axis. A last part short of ``fixed`` samples is filled up with copies
        of its last sample, whose results are dropped."""
        parts, n = [], x.shape[0]
        xp = padded(x, fixed)
        target = padded_targets(target, xp.shape[0])
        for i in range(0, xp.shape[0], fixed):
            t = target[i:i + fixed] if isinstance(target, (list, tuple, np.ndarray)) else target
            parts.append(run(xp[i:i + fixed], t))
        if xp.shape[0] > n:
            parts[-1] = parts[-1].first(fixed - (xp.shape[0] - n))
        first = parts[0]
        flows = [LayerFlow(f.name, f.op, f.rule, np.concatenate([p.flows[j].relevance_out for p in parts]),
                           np.concatenate([p.flows[j].relevance_in for p in parts]))
                 for j, f in enumerate(first.flows)]
        violations = [p.bounds_violation for p in parts if p.bounds_violation is not None]
        return Explanation(
            relevance=np.concatenate([p.relevance for p in parts]), logits=np.concatenate([p.logits for p in parts]),
            targets=[t for p in parts for t in p.targets],
            start_relevance=np.concatenate([p.start_relevance for p in parts]), flows=flows,
            kept={k: np.concatenate([p.kept[k] for p in parts]) for k in first.kept},
            provider=first.provider, device=first.device,
            timings_s={k: sum(p.timings_s.get(k, 0.0) for p in parts) for k in first.timings_s},
            bounds_violation=np.concatenate(violations) if violations else None,
            layer_seconds={k: sum(p.layer_seconds.get(k, 0.0) for p in parts) for k in first.layer_seconds})

    def reexplain(self, exp: Explanation, masks: dict[str, np.ndarray] | None = None,
                  keep: Sequence[str] = ()) -> Explanation:
        """The backward pass of ``exp`` again (same inputs and targets, its forward tensors
        reused; it must come from ``keep_forward=True``), with relevance masks per layer."""
        if exp.forward is None:
            raise InputError("reexplain needs an explanation made with keep_forward=True")
        x = exp.forward[self.graph.input]
        targets = exp.targets
        target = targets if all(isinstance(t, (int, np.integer)) for t in targets) else parse_target(targets[0])
        start_tensor, start, _ = self._start(exp.forward, target, x.shape[0])
        out = self._backward(x, exp.forward, start_tensor, start, keep, masks, keep_forward=True)
        out.targets = list(targets)
        return out

    def relevance_from(self, x: np.ndarray, tensor: str, relevance: np.ndarray,
                       keep: Sequence[str] = (), dtype=np.float32, masks: dict | None = None,
                       keep_forward: bool = False) -> Explanation:
        """LRP from an arbitrary relevance ``relevance`` placed on ``tensor`` (any layer output).

        The building block behind ``explain``; also how path analyses re-propagate masked
        relevance. ``dtype=np.float64`` runs the whole backward pass in double precision
        (used by the tests to compare with float64 references).
        """
        x = self.check_input(x)
        if tensor != self.graph.output and tensor not in self.graph.producer:
            tensor = self.graph.find(tensor).output  # a layer's name, alias or index
        if tensor != self.graph.output:
            self.request(tensor)
        relevance = np.asarray(relevance)

        def alone(xs, index):  # one sample, its row of ``relevance`` (the part's targets are indices)
            rows = relevance[list(index)] if relevance.ndim and relevance.shape[0] == x.shape[0] else relevance
            return self.relevance_from(xs, tensor, rows, keep, dtype, masks)

        t0 = time.perf_counter()
        fwd, parts = self._forward_or_parts(x, list(range(x.shape[0])), alone, keep_forward)
        if parts is not None:
            return parts
        t1 = time.perf_counter()
        if dtype != np.float32:
            fwd = {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in fwd.items()}
        exp = self._backward(x.astype(dtype), fwd, tensor, np.asarray(relevance, dtype), keep, masks, keep_forward)
        exp.targets = [tensor] * x.shape[0]
        exp.timings_s["forward"] = t1 - t0
        exp.timings_s["total"] = exp.timings_s["backward"] + t1 - t0
        return exp

    def relevance_below(self, exp: Explanation, layer: str, relevance: np.ndarray, sample: int = 0) -> np.ndarray:
        """Input relevance of each row of ``relevance`` placed on ``layer``'s output and
        propagated down, all with the forward pass of ``exp``'s sample ``sample`` (``exp``
        made with ``keep_forward=True``): conditional heatmaps, where one layer's relevance is
        restricted to some neurons, as one batch without running the model again."""
        if exp.forward is None:
            raise InputError("relevance_below needs an explanation made with keep_forward=True")
        tensor = self.graph.find(layer).output
        r = np.ascontiguousarray(relevance, np.float32)
        fwd = replicate_forward(self.graph, exp.forward, r.shape[0], sample)
        return self._backward(fwd[self.graph.input], fwd, tensor, r, ()).relevance

    def relevance_below_sum(self, exp: Explanation, starts: dict[str, np.ndarray], sample: int = 0) -> np.ndarray:
        """Σ over ``starts`` (layer name → relevance of its output for one sample, no batch
        axis) of ``relevance_below`` of each, in one pass: the pass starts at the highest of
        those layers and adds each other's relevance when it reaches it (the rules are linear
        in the relevance once ``exp``'s forward pass fixes their denominators)."""
        if exp.forward is None:
            raise InputError("relevance_below_sum needs an explanation made with keep_forward=True")
        if not starts:
            raise InputError("relevance_below_sum needs at least one layer to start from")
        rows: dict[str, np.ndarray] = {}
        for name, r in starts.items():  # two names of one layer (its name and its index) add up
            key = self.graph.find(name).name
            r = np.asarray(r, np.float32)[None]
            rows[key] = np.ascontiguousarray(rows[key] + r if key in rows else r)
        order = {l.name: i for i, l in enumerate(self.graph.layers)}
        top = max(rows, key=order.__getitem__)
        fwd = replicate_forward(self.graph, exp.forward, 1, sample)
        first = rows.pop(top)
        return self._backward(fwd[self.graph.input], fwd, self.graph.find(top).output, first, (),
                              inject=rows).relevance[0]

    def output_neuron(self, index: int) -> NeuronTarget | None:
        """The neuron a flat index into a feature-map output is (a backbone's target:
        ``block5_pool:53@(2, 2)``), read through trailing transposes; None for class outputs."""
        shape = self.graph.shapes.get(self.graph.output)
        if shape is None or len(shape) != 4 or any(d is None for d in shape[1:]):
            return None
        pos = [int(v) for v in np.unravel_index(int(index), tuple(shape[1:]))]
        layer = self.graph.producer.get(self.graph.output)
        while layer is not None and isinstance(layer, TransposeLayer):  # e.g. back to NHWC: name the NCHW neuron
            moved = [0] * 3
            for out_axis, in_axis in enumerate(layer.perm[1:]):
                moved[in_axis - 1] = pos[out_axis]
            pos, layer = moved, self.graph.producer.get(layer.inputs[0])
        return None if layer is None else NeuronTarget(layer.name, *pos)

    def request(self, *tensors: str) -> None:
        """Have onnxruntime return these tensors too (``Explanation.forward``, with keep_forward)."""
        have = self.requests() | {self.graph.output}  # worked out once, not per tensor (paths ask for ~60)
        new = set(tensors) - have
        if new:
            self._extra |= new
            self._runtime = self._engine = None

    def _context(self, x: np.ndarray, fwd: dict) -> tuple[BackwardContext, np.ndarray | None]:
        """The backward context of a batch (z^B bounds included) and, per sample, the share of
        its input values outside those bounds."""
        fwd[self.graph.input] = x
        shapes = {l.inputs[0]: fwd[l.inputs[0]].shape for l in self._plan.uses("zbox")}
        bounds = box_bounds(self.graph, self._plan, self.low, self.high, x.shape, shapes)
        bounds = {k: (lo.astype(x.dtype), hi.astype(x.dtype)) for k, (lo, hi) in bounds.items()}
        violation = None
        if bounds:
            lows = np.broadcast_to(self.low, x.shape)
            highs = np.broadcast_to(self.high, x.shape)
            outside = (x < lows - 1e-6) | (x > highs + 1e-6)
            violation = outside.reshape(len(x), -1).mean(axis=1)
        be = self.backend  # the CPU keeps the tensors; a GPU gets each of them once per batch
        ctx = BackwardContext(fwd=be.upload_tensors(fwd), backend=be, cache=self.cache, batch=x.shape[0],
                              shapes=self.graph.shapes, bounds=bounds, dtype=x.dtype,
                              bounds_key=_fingerprint(self.low, self.high) if bounds else "")
        return ctx, violation

    def gradient(self, x: np.ndarray, target: int | Sequence[int] | None = None, dtype=np.float32) -> Explanation:
        """The plain gradient of the explained logit w.r.t. the input (``Explanation.relevance``
        holds it), through the same handlers: what gradient, gradient × input and SmoothGrad
        are made of. ``dtype=np.float64`` runs the backward pass in double precision."""
        if isinstance(target, NeuronTarget):
            raise InputError("gradients are taken of a class's logit; an inner-neuron target is for explain")
        x = self.check_input(x)
        self.request(*{t for layer in self.graph.layers for t in layer.inputs})  # every derivative's input
        t0 = time.perf_counter()
        fwd, parts = self._forward_or_parts(x, target, lambda xs, t: self.gradient(xs, t, dtype))
        if parts is not None:
            return parts
        t1 = time.perf_counter()
        _, start, targets = self._start(fwd, target, x.shape[0])
        onehot = np.zeros(start.reshape(x.shape[0], -1).shape, dtype)
        onehot[np.arange(x.shape[0]), targets] = 1.0
        if np.dtype(dtype) != np.float32:
            fwd = {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in fwd.items()}
        exp = self._backward(x.astype(dtype), fwd, self.graph.output, onehot.reshape(start.shape), (), gradient=True)
        exp.targets = targets
        exp.timings_s.update(forward=t1 - t0, total=exp.timings_s["backward"] + t1 - t0)
        return exp

    def _backward(self, x: np.ndarray, fwd: dict, start_tensor: str, start: np.ndarray,
                  keep: Sequence[str], masks: dict | None = None, keep_forward: bool = False,
                  gradient: bool = False, inject: dict | None = None) -> Explanation:
        for name in list(keep) + list(masks or {}):
            if name != "*":
                self.graph.find(name)
        t1 = time.perf_counter()
        n = x.shape[0]
        ctx, violation = self._context(x, fwd)
        if keep_forward:  # the neuron graph's channel flows reuse the kept layers' products
            ctx.keep_products = frozenset(keep)
        with self.backend.threads.blas_single():
            prop = propagate(self.graph, self._plan, ctx, start_tensor, self.backend.upload(start), tuple(keep), masks,
                             gradient=gradient, release=None if keep_forward else self._last_readers(),
                             inject=inject)
        t2 = time.perf_counter()
        return Explanation(
            relevance=np.asarray(self.backend.to_host(prop.input_relevance)),
            logits=np.array(fwd[self.graph.output]), targets=[],
            start_relevance=start.reshape(n, -1).sum(axis=1, dtype=np.float64),
            flows=prop.flows, kept=prop.kept, provider=self.provider, device=self.device,
            timings_s={"backward": t2 - t1}, bounds_violation=violation,
            forward=fwd if keep_forward else None, products=ctx.products, layer_seconds=prop.seconds)

    def channel_flows(self, exp: Explanation, layer_name: str, rows, cols) -> np.ndarray:
        """F[n, i, j]: relevance that output channel ``cols[j]`` of a Conv/dense layer sends to
        its input channel ``rows[i]``, for an explanation made with ``keep=[layer_name]`` and
        ``keep_forward=True``. Summed over every output channel, F gives the relevance of
        each input channel; over every input channel, the output channel's relevance minus
        its bias/ε share."""
        layer, ctx = self._replay(exp, layer_name, "channel flows")
        h = layer.handler
        if h.neurons(layer) is None:
            raise InputError(f"layer '{layer.name}' ({layer.op}) has no channel flows")
        with self.backend.threads.blas_single():
            f = h.flows(layer, self._plan.rule_for(layer), self.backend.upload(exp.kept[layer.name]), ctx,
                        np.asarray(rows), np.asarray(cols), exp.products.get(layer.name))
        return np.asarray(self.backend.to_host(f))

    def branch_relevance(self, exp: Explanation, layer_name: str) -> list[np.ndarray]:
        """The relevance a join (a residual sum, a concat) passes to each of its inputs, for an
        explanation made with ``keep=[layer_name]`` and ``keep_forward=True``: how the neuron
        graph splits a join's relevance between its branches."""
        layer, ctx = self._replay(exp, layer_name, "the branches")
        with self.backend.threads.blas_single():
            parts = layer.handler.relevance(layer, self._plan.rule_for(layer),
                                            self.backend.upload(exp.kept[layer.name]), ctx)
        return [np.asarray(self.backend.to_host(p)) for p in parts]

    def _replay(self, exp: Explanation, layer_name: str, what: str) -> tuple[Layer, BackwardContext]:
        """A kept layer and the backward context to run its step again from the explanation."""
        layer = self.graph.find(layer_name)
        if exp.forward is None or layer.name not in exp.kept:
            raise InputError(f"{what} of '{layer.name}' need explain(keep=[...], keep_forward=True)")
        return layer, self._context(exp.forward[self.graph.input], exp.forward)[0]


def _fingerprint(*arrays: np.ndarray) -> str:
    """A short digest of arrays' shapes and values."""
    h = hashlib.blake2b(digest_size=8)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(repr((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _model_file(model: str | Path):
    """(path, zoo entry or None): a file, or a zoo name (built on first use)."""
    p = Path(model)
    if not p.exists():
        from .models.registry import ZOO

        if str(model) in ZOO:
            return ZOO[str(model)].path(), ZOO[str(model)]
    return p, None


def _fmt_shape(shape: tuple) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"
