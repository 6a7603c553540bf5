"""Per-op handlers, looked up by ONNX op type (as onnx's reference evaluator does).

A handler is the one place that knows its op. It answers every question the rest of the
analyzer has about a layer of its family:

- ``parse``: an ONNX node → a typed layer (or an alias / a strippable final node);
- ``default_rule`` / ``accepts``: its fixed treatment, and which plan rules it takes;
- ``needs``: which tensors the backward pass reads from onnxruntime;
- ``session_outputs``: secondary outputs the onnxruntime graph must gain (MaxPool switches);
- ``derived_outputs``: tensors computed from fetched ones after the session's run instead;
- ``relevance``: how relevance crosses it; ``gradient``: its true derivative (gradient
  methods); ``deconv``: the Zeiler–Fergus step;
- ``forward``: a plain numpy forward (z^B bounds through input-side layers, tests);
- ``nonneg_output``: whether its output is ≥ 0 given which inputs are;
- ``infer_shape``: its output shape where onnx's inference left it open;
- ``chain_input`` / ``channel_map``: how channels move through it (neuron graphs, masks);
- ``input_boxes``: which input elements an output box reads (receptive fields);
- ``modified_forward_nodes``: its product with other weights as ONNX nodes (rule terms).

Adding an op is adding one handler module and its tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper

from ..errors import InputError, UnsupportedOpError
from ..graph.layers import Layer
from ..plan.rules import Rule, make_rule


@dataclass
class Alias:
    """The node is an identity for relevance and activations (Identity, Dropout)."""

    output: str
    source: str


@dataclass
class Strip:
    """The node may only end the graph (Softmax): explain its input instead."""

    output: str
    source: str


@dataclass
class ParseContext:
    """What a handler may look at while parsing a node."""

    consts: dict[str, np.ndarray]
    shapes: dict[str, tuple]
    opset: int
    node_name: str
    #: tensors whose values depend on the model input (None: every non-constant one)
    varying: set[str] | None = None

    def attrs(self, node: onnx.NodeProto) -> dict[str, Any]:
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def const(self, node: onnx.NodeProto, i: int, what: str) -> np.ndarray:
        """Input ``i`` of ``node`` as a constant, or an error saying the op needs it constant."""
        name = node.input[i] if i < len(node.input) else ""
        if not name:
            raise UnsupportedOpError(node.op_type, self.node_name, f"{what} is missing")
        if name not in self.consts:
            raise UnsupportedOpError(node.op_type, self.node_name,
                                     f"{what} ('{name}') is not a constant")
        return np.asarray(self.consts[name])

    def data_input(self, node: onnx.NodeProto) -> str:
        """The node's data input (input 0), or the error that it is a constant (folded away)."""
        if self.is_const(node.input[0]):
            raise self.fail(node, "the data input is constant")
        return node.input[0]

    def optional_const(self, node: onnx.NodeProto, i: int, what: str) -> np.ndarray | None:
        if i >= len(node.input) or not node.input[i]:
            return None
        return self.const(node, i, what)

    def is_const(self, name: str) -> bool:
        return name in self.consts

    def depends_on_input(self, name: str) -> bool:
        """Whether ``name``'s values depend on the model input (a class token broadcast to the
        batch by Expand does not, though it is no folded constant)."""
        return not self.is_const(name) if self.varying is None else name in self.varying

    def shape(self, name: str) -> tuple | None:
        return self.shapes.get(name)

    def fail(self, node: onnx.NodeProto, detail: str) -> UnsupportedOpError:
        return UnsupportedOpError(node.op_type, self.node_name, detail)


@dataclass
class BackwardContext:
    """What a handler may use while propagating relevance through its layer.

    ``fwd`` maps tensor names to onnxruntime's values for this batch; ``bounds`` maps a
    layer name to its z^B (low, high) arrays; ``cache`` holds modified weights; ``dtype``
    is the precision of the backward pass.
    """

    fwd: dict[str, np.ndarray]
    backend: Any
    cache: Any
    batch: int
    shapes: dict[str, tuple]
    bounds: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    dtype: Any = np.float32
    keep_products: frozenset = frozenset()
    products: dict = field(default_factory=dict)
    #: a fingerprint of the z^B bounds (the forward terms that depend on them are kept under it)
    bounds_key: str = ""
    #: layers whose relevance is 0 wherever the ReLU after them is off (``backward.vanishing``)
    quiet_negatives: frozenset = frozenset()
    #: run-time shapes of the forward tensors ``release`` dropped
    released: dict = field(default_factory=dict)

    @property
    def reuse_forward(self) -> bool:
        """Reuse onnxruntime's outputs as z only when computing in its own precision."""
        return np.dtype(self.dtype) == np.float32

    def release(self, *tensors: str) -> None:
        """Forget forward tensors no later step reads (their memory serves the next steps);
        their shapes stay known."""
        for name in tensors:
            value = self.fwd.pop(name, None)
            if value is not None:
                self.released[name] = tuple(value.shape)

    def shape_of(self, tensor: str) -> tuple[int, ...]:
        """Run-time shape of ``tensor`` (static shape with this batch, or the fetched value's)."""
        if tensor in self.fwd:
            return tuple(self.fwd[tensor].shape)
        if tensor in self.released:
            return self.released[tensor]
        static = self.shapes.get(tensor)
        if static is None:
            raise KeyError(f"shape of '{tensor}' unknown at run time")
        if all(d is not None for d in static[1:]):
            return (self.batch,) + tuple(static[1:])
        if static[0] is not None and sum(d is None for d in static) == 1:  # the batch moved (q/k/v split)
            return tuple(self.batch if d is None else d for d in static)
        raise KeyError(f"shape of '{tensor}' unknown at run time")


class OpHandler:
    """Base handler; subclasses set ``op_types`` and override what applies.

    The defaults describe a layer that moves data element by element without mixing
    channels (an activation): relevance and signals pass, channels keep their index.
    """

    op_types: tuple[str, ...] = ()
    #: the plan's fixed rule for layers of this handler (None: a preset decides)
    fixed_rule: str | None = "pass"
    #: index of the node input that is a (large) weight onnxruntime may share with us
    shared_weight_input: int | None = None
    #: ``native_forward`` may overwrite its input when it is the layer's alone (``in_place``)
    native_in_place: bool = False
    #: its rule drops terms of the relevance by design (attention's softmax): the
    #: low-conservation warning names it when the layer is among the worst
    drops_relevance: bool = False

    def parse(self, node: onnx.NodeProto, ctx: ParseContext) -> Layer | Alias | Strip:
        raise NotImplementedError

    # -- the rule plan ------------------------------------------------------------------
    def default_rule(self, layer: Layer) -> Rule:
        """The treatment a layer gets when no preset rule names it."""
        return make_rule(self.fixed_rule or "epsilon")

    def accepts(self, layer: Layer, rule: Rule) -> bool:
        """Whether ``--rule`` may give this layer ``rule``."""
        return layer.kind in rule.spec.kinds

    # -- the forward tensors --------------------------------------------------------------
    def needs(self, layer: Layer, rule: Rule, shapes: dict[str, tuple]) -> set[str]:
        """Tensor names this layer's backward step reads from onnxruntime."""
        return set() if static_dims(shapes.get(layer.inputs[0])) else {layer.inputs[0]}

    def needs_when_quiet(self, layer: Layer, rule: Rule, shapes: dict[str, tuple]) -> set[str]:
        """``needs`` where the layer's relevance is 0 wherever the ReLU after it is off
        (``backward.vanishing``)."""
        return self.needs(layer, rule, shapes)

    def session_outputs(self, layer: Layer) -> tuple[dict[str, str], set[str]]:
        """({node output 0 → secondary output to add}, integer-typed outputs) for the session."""
        return {}, set()

    def derived_outputs(self, layer: Layer) -> dict[str, tuple[str, Any]]:
        """{tensor: (fetched tensor, function of it)}: ``session_outputs`` the analyzer's own
        session does not ask onnxruntime for but computes after the run (a compiled graph,
        which has no such step, still gains them as outputs). The function takes the fetched
        tensor and, for a run in slices of the batch, ``first``, the batch index of the slice's
        first sample; per sample, its result must not depend on the other samples."""
        return {}

    # -- backward steps -------------------------------------------------------------------
    def relevance(self, layer: Layer, rule: Rule, r: np.ndarray,
                  ctx: BackwardContext) -> list[np.ndarray | None]:
        return [unbroadcast(r, ctx.shape_of(layer.inputs[0]))]

    def gradient(self, layer: Layer, g: np.ndarray, ctx: BackwardContext) -> list[np.ndarray | None]:
        """The true gradient: ``g`` (d out / d layer output) to d out / d each input. The default
        is an element-wise layer's identity; layers that compute say how."""
        return [unbroadcast(g, ctx.shape_of(layer.inputs[0]))]

    def deconv(self, layer: Layer, s: np.ndarray, ctx: BackwardContext) -> list[np.ndarray | None]:
        """Zeiler–Fergus deconvolution: a signal at the layer's output back to its inputs.

        Data-moving layers move it like relevance; others say how (ReLU rectifies, Conv
        transposes with its own filters, MaxPool unpools by its switches)."""
        raise InputError(f"deconvolution through {layer.op} ('{layer.name}') is not defined")

    def forward(self, layer: Layer, inputs: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError(f"no numpy forward for {layer.op}")

    # -- the native forward pass (``runtime.native``) ---------------------------------------
    def native_refusal(self, layer: Layer, shapes: dict[str, tuple]) -> str | None:
        """Why the analyzer's own CPU kernels cannot run this layer's forward (None: they can).
        By default they cannot: a handler that can says so and gives ``native_forward``."""
        return layer.op

    def native_forward(self, layer: Layer, inputs: list[np.ndarray], backend,
                       in_place: bool = False) -> dict[str, np.ndarray]:
        """{tensor: value} this layer computes on ``backend`` (its output, and a MaxPool's
        switches). ``in_place``: the input is this layer's alone to overwrite (element-wise
        layers may). By default the numpy ``forward``."""
        return {layer.output: np.asarray(self.forward(layer, inputs), np.float32)}

    def native_outputs(self, layer: Layer) -> tuple[str, ...]:
        """The tensors ``native_forward`` returns."""
        return (layer.output,)

    def multiply_adds(self, layer: Layer, shapes: dict[str, tuple]) -> tuple[float, float] | None:
        """(multiply-adds, of those in Winograd's 3x3 stride-1 convolutions) per sample of this
        layer's forward (None: unknown); products only, the rest is not counted."""
        return 0.0, 0.0

    # -- graph facts ------------------------------------------------------------------------
    def nonneg_output(self, layer: Layer, nonneg_inputs: list[bool]) -> bool:
        """Whether the output is ≥ 0 by construction, given which inputs are."""
        return False

    def infer_shape(self, layer: Layer, in_shapes: list[tuple], readers: list[Layer]) -> tuple | None:
        """The output shape (batch dim as given) where onnx's inference left it open; None if unknown."""
        return None

    def chain_input(self, layer: Layer) -> str | None:
        """The input a chain of layers follows through this one (neuron graphs, bounds), or
        None when the layer joins branches or mixes channels."""
        return layer.inputs[0] if len(layer.inputs) == 1 else None

    def channel_map(self, layer: Layer, ids: np.ndarray, out_shape: tuple) -> np.ndarray:
        """Channel ids (an array shaped like the input without batch, holding the channel each
        element comes from) carried to the output's shape."""
        flat = ids.reshape(ids.shape[0], -1)[:, :1]
        return np.broadcast_to(flat.reshape((ids.shape[0],) + (1,) * (len(out_shape) - 2)),
                               tuple(out_shape[1:]))

    def input_boxes(self, layer: Layer, box: Box, shapes: dict[str, tuple]) -> list[Box | None]:
        """Per input, the box of its elements that the output elements in ``box`` read (an
        inclusive (lo, hi) per non-batch axis), or None when they read none of it. The
        default is an element-wise layer's: the same box, or the whole input where its rank
        differs; an axis the input broadcasts (size 1) reads its one element."""
        out = []
        for name in layer.inputs:
            dims = input_dims(name, shapes)
            if len(dims) != len(box):
                out.append(full_box(dims))
            else:
                spans = tuple((0, 0) if n == 1 else clip_span(lo, hi, n) for (lo, hi), n in zip(box, dims))
                out.append(None if None in spans else spans)
        return out

    def batch_axis(self, layer: Layer, in_axes: list[int | None], shapes: dict[str, tuple]) -> int | None:
        """The output's batch axis given the inputs' (None: unknown); the first known one by
        default, layers that move axes say how."""
        return next((a for a in in_axes if a is not None), None)

    def channel_axis(self, layer: Layer, in_axes: list[int | None], shapes: dict[str, tuple]) -> int | None:
        """The output's channel axis given the inputs' (None: unknown): a layer that keeps its
        first input's rank keeps its axis; Conv, MatMul and transposes say where they put it."""
        out, src = shapes.get(layer.output), shapes.get(layer.inputs[0]) if layer.inputs else None
        return in_axes[0] if out is not None and src is not None and len(out) == len(src) else None

    def relevance_inputs(self, layer: Layer) -> list[str]:
        """The inputs that receive relevance (a gate's side branch gets none)."""
        return layer.inputs

    def neurons(self, layer: Layer) -> tuple[int, int] | None:
        """(input features, output neurons) if the layer's units are neuron-graph neurons."""
        return None

    def joins(self, layer: Layer, shapes: dict[str, tuple]) -> list[int] | None:
        """Where a neuron graph joins branches at this layer channel by channel (a residual
        sum, a concat along the channels): per input, the offset of its channels among the
        output's; None when the layer does not (or its shapes are not known)."""
        return None

    def rectifies(self, layer: Layer) -> bool:
        """Whether the layer is a ReLU-like rectifier (its output is what the previous layer's
        neurons are seen by, and deconvolution rectifies there)."""
        return False


class OwnLinearMap:
    """Mixin for layers explained as a linear map of their own (LayerNorm with σ held, a sum over
    tokens) rather than by a preset's rule: ε = 1e-6 unless a preset or ``--rule`` gives LRP-0 or
    another ε; the map's bias (if any) takes part unless the rule says ``nobias``."""

    fixed_rule = None

    def default_rule(self, layer):
        return make_rule("epsilon", 1e-6)

    def accepts(self, layer, rule):
        return rule.name in ("epsilon", "zero")


#: an inclusive (lo, hi) span per non-batch axis of a tensor
Box = tuple


def input_dims(name: str, shapes: dict[str, tuple]) -> tuple:
    """The static non-batch dims of tensor ``name`` (receptive fields need them)."""
    s = shapes.get(name)
    if not static_dims(s):
        raise InputError(f"receptive fields need the static shape of '{name}'")
    return tuple(s[1:])


def full_box(dims: tuple) -> Box:
    return tuple((0, n - 1) for n in dims)


def clip_span(lo: int, hi: int, n: int) -> tuple[int, int] | None:
    """``[lo, hi]`` clipped to ``[0, n - 1]``; None when nothing is left."""
    lo, hi = max(lo, 0), min(hi, n - 1)
    return (lo, hi) if lo <= hi else None


def window_span(lo: int, hi: int, n: int, k: int, s: int, d: int, p0: int) -> tuple[int, int] | None:
    """The first and last input rows that output rows ``lo..hi`` of a window op (kernel k,
    stride s, dilation d, leading pad p0) read: window o's taps are ``o·s − p0 + d·t``, and a
    tap in the padding reads nothing (with a dilation, the first real tap may lie further in)."""
    taps = (np.arange(lo, hi + 1) * s - p0)[:, None] + d * np.arange(k)[None, :]
    real = taps[(taps >= 0) & (taps < n)]
    return (int(real.min()), int(real.max())) if real.size else None


def window_boxes(box: Box, dims: tuple, kernel, geometry, keep_channels: bool) -> list[Box | None]:
    """The input box of a 2-D window op on NCHW (Conv, pools): channels kept (pools) or all
    read (Conv), H and W through the window; a global window (``kernel`` None) reads all."""
    C, H, W = dims
    chans = box[0] if keep_channels else (0, C - 1)
    if kernel is None:
        return [(chans, (0, H - 1), (0, W - 1))]
    ys = window_span(*box[1], H, kernel[0], geometry.strides[0], geometry.dilations[0], geometry.pads[0])
    xs = window_span(*box[2], W, kernel[1], geometry.strides[1], geometry.dilations[1], geometry.pads[1])
    return [None] if ys is None or xs is None else [(chans, ys, xs)]


class ChannelKeeping:
    """Mixin for layers that keep each channel apart (pools, resizes) though a linear handler's
    defaults say otherwise: chains pass through them, channel ids stay, ≥ 0 in gives ≥ 0 out."""

    def nonneg_output(self, layer, nonneg_inputs):
        return all(nonneg_inputs)

    def chain_input(self, layer):
        return layer.inputs[0]

    def channel_map(self, layer, ids, out_shape):
        return OpHandler.channel_map(self, layer, ids, out_shape)

    def flows(self, layer, rule, r, ctx, rows, cols, kept=None):
        raise ValueError(f"'{layer.name}' keeps channels apart; it has no channel-pair flows")


HANDLERS: dict[str, OpHandler] = {}


def register(cls: type[OpHandler]) -> type[OpHandler]:
    """Class decorator: one instance of the handler serves all its op types."""
    inst = cls()
    for op in cls.op_types:
        HANDLERS[op] = inst
    return cls


def handler_for(op_type: str) -> OpHandler | None:
    return HANDLERS.get(op_type)


def static_dims(shape: tuple | None) -> bool:
    """True when every non-batch dim of ``shape`` is known."""
    return shape is not None and all(d is not None for d in shape[1:])


def unbroadcast(r: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``r`` over the axes along which an input of ``shape`` was broadcast."""
    if tuple(r.shape) == tuple(shape):
        return r
    lead = r.ndim - len(shape)
    r = r.sum(axis=tuple(range(lead))) if lead > 0 else r
    axes = tuple(i for i, d in enumerate(shape) if d == 1 and r.shape[i] != 1)
    return r.sum(axis=axes, keepdims=True) if axes else r


def node_layer(cls: type[Layer], node: onnx.NodeProto, ctx: ParseContext, handler: OpHandler,
               inputs: list[str], op: str | None = None, **fields) -> Layer:
    """A typed layer for ``node`` (index and unique name are set by the graph walker)."""
    return cls(name=ctx.node_name, op=op or node.op_type, inputs=inputs, output=node.output[0],
               nodes=[ctx.node_name], handler=handler, **fields)
