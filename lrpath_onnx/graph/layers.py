"""The canonical layer graph the rest of the analyzer works on.

A layer is one explainable step (a Conv with its folded BatchNorm, a dense layer made of
MatMul+Add, a MaxPool, a reshape …), typed by family: each family is a small dataclass
holding exactly what its handler needs (a conv's geometry once, a dense layer's weight
matrix, an activation's function). Tensors keep the names they have in the ONNX graph,
so onnxruntime can hand back exactly the activations a layer needs. What a layer *means*
(how it parses, how relevance crosses it, how its channels map) is its handler's
business: ``layer.handler`` is the one place that knows its op.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator

import networkx as nx
import numpy as np

from ..kernels.conv import ConvGeometry

#: How relevance crosses a layer, by family (``Layer.kind``).
LINEAR = "linear"      # a rule applies (Conv, dense, average pools, resize)
WTA = "wta"            # winner-take-all through MaxPool switches
MERGE = "merge"        # several inputs summed (Add, Sum): split by contribution
ROUTE = "route"        # relevance moves without arithmetic (reshape, transpose, concat, pad)
PASS = "pass"          # element-wise (activations, constant affine maps): relevance passes through
GATE = "gate"          # signal × gate: the gate is a constant, all relevance goes to the signal
NORM = "norm"          # LayerNormalization: linear once its standard deviation is held constant
BILINEAR = "bilinear"  # MatMul of two activations (attention's q·kᵀ and weights·v)
SOFTMAX = "softmax"    # a Softmax inside the network (attention weights)


@dataclass(eq=False)
class Layer:
    """One explainable step of the network.

    Attributes
    ----------
    name : unique, human-readable (the exporter's module name where it has one).
    op : ONNX op type of the node that defines the layer (shown in plans).
    inputs : data tensors relevance flows back into (constants are not inputs).
    output : tensor the layer produces (after any folded BatchNorm / affine).
    nodes : names of the ONNX nodes merged into this layer.
    index : position in topological order (what ``--rule 3=...`` refers to).
    handler : the op handler that parsed the layer and answers for it.
    input_scale : the largest |scale| of constant scalings before it that were folded into its
        weights (``x / 255`` in the graph), 1 if none: the input's own rescaling stays known.
    """

    name: str
    op: str
    inputs: list[str]
    output: str
    nodes: list[str] = field(default_factory=list)
    index: int = -1
    handler: Any = field(default=None, repr=False)
    input_scale: float = 1.0

    kind: ClassVar[str] = PASS
    family: ClassVar[str] = "layer"

    def describe(self) -> str:
        """Short parameter summary for plan tables (weight shape, strides …)."""
        return self._folded()

    def _folded(self) -> str:
        folded = [n for n in self.nodes if n != self.name]
        return "+" + "+".join(folded) if folded else ""

    @staticmethod
    def _join(*parts: str) -> str:
        return " ".join(p for p in parts if p)


@dataclass(eq=False)
class LinearLayer(Layer):
    """A layer ``z = a ⋆ W + b`` that LRP rules apply to.

    ``nonneg_input``: its input is ≥ 0 by construction (after a ReLU); ``sign_tensor``: a
    fetched tensor positive exactly where ``z`` is and 0 elsewhere (the ReLU right after
    it), for the rules that explain positive and negative outputs apart; None means ``z``.
    ``sign_is_z``: that tensor also equals ``z`` wherever it is positive (a ReLU, not
    ReLU6), so LRP-0/ε may divide by it where the relevance vanishes elsewhere.
    """

    nonneg_input: bool = False
    sign_tensor: str | None = None
    sign_is_z: bool = False
    #: the ONNX tensors the weight and bias were read from (randomisation checks change them)
    sources: tuple[str, ...] = ()
    kind: ClassVar[str] = LINEAR


@dataclass(eq=False)
class ConvLayer(LinearLayer):
    """2-D convolution; ``weight`` is (K, C/groups, kh, kw)."""

    weight: np.ndarray = None
    bias: np.ndarray | None = None
    geometry: ConvGeometry = field(default_factory=ConvGeometry)
    family: ClassVar[str] = "conv"

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.geometry.groups

    @property
    def kernel(self) -> tuple[int, int]:
        return tuple(self.weight.shape[2:])

    def describe(self) -> str:
        g = self.geometry
        parts = ["w" + "x".join(str(d) for d in self.weight.shape)]
        if g.strides != (1, 1):
            parts.append(f"strides={list(g.strides)}")
        if g.pads != (0, 0, 0, 0):
            parts.append(f"pads={list(g.pads)}")
        if g.dilations != (1, 1):
            parts.append(f"dilations={list(g.dilations)}")
        if g.groups != 1:
            parts.append(f"group={g.groups}")
        return self._join(*parts, self._folded())


@dataclass(eq=False)
class DenseLayer(LinearLayer):
    """``z = a·W + b`` with ``weight`` stored as (in, out); ``trans_a``: the input is (in, N);
    ``rank``: the input's rank (3 for a transformer's tokens: batch × tokens × features, the
    weight applied to the last axis)."""

    weight: np.ndarray = None
    bias: np.ndarray | None = None
    trans_a: bool = False
    rank: int = 2
    family: ClassVar[str] = "dense"

    @property
    def out_channels(self) -> int:
        return self.weight.shape[1]

    @property
    def in_channels(self) -> int:
        return self.weight.shape[0]

    def describe(self) -> str:
        return self._join("w" + "x".join(str(d) for d in self.weight.shape),
                          "transA=1" if self.trans_a else "", self._folded())


@dataclass(eq=False)
class PoolWindow:
    """Window of a pooling layer: kernel (None = the whole map), geometry, ceil mode."""

    kernel: tuple[int, int] | None
    geometry: ConvGeometry = field(default_factory=ConvGeometry)
    ceil_mode: bool = False

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        if self.kernel is None:
            return (1, 1)
        return self.geometry.out_size(h, w, *self.kernel, ceil=self.ceil_mode)


@dataclass(eq=False)
class AvgPoolLayer(LinearLayer):
    """AveragePool / GlobalAveragePool (and spatial ReduceMean): a linear layer of window means."""

    window: PoolWindow = None
    count_include_pad: bool = False
    keepdims: bool = True
    family: ClassVar[str] = "pool"
    weight: ClassVar[None] = None
    bias: ClassVar[None] = None

    def describe(self) -> str:
        w = self.window
        parts = [] if w.kernel is None else [f"kernel={list(w.kernel)}"]
        if w.geometry.strides != (1, 1):
            parts.append(f"strides={list(w.geometry.strides)}")
        if w.geometry.pads != (0, 0, 0, 0):
            parts.append(f"pads={list(w.geometry.pads)}")
        return self._join(*parts, self._folded())


@dataclass(eq=False)
class MaxPoolLayer(Layer):
    """MaxPool; ``indices`` is the tensor holding its switches (onnxruntime's ``Indices``)."""

    window: PoolWindow = None
    indices: str = ""
    add_indices_output: bool = False
    kind: ClassVar[str] = WTA
    family: ClassVar[str] = "maxpool"

    def describe(self) -> str:
        w = self.window
        return self._join(f"kernel={list(w.kernel)}", f"strides={list(w.geometry.strides)}"
                          if w.geometry.strides != (1, 1) else "", self._folded())


@dataclass(eq=False)
class ActivationLayer(Layer):
    """An element-wise activation ``y = f(x)``: relevance passes through unchanged.

    ``fn`` names the function (``relu``, ``silu``, ``gelu`` …), ``params`` its constants;
    a fused pattern (``x·sigmoid(x)``) keeps the layers it was made of in ``parts``, so its
    forward and derivative stay exact.
    """

    fn: str = "relu"
    params: dict[str, Any] = field(default_factory=dict)
    parts: list[Layer] = field(default_factory=list)
    family: ClassVar[str] = "activation"

    def describe(self) -> str:
        shown = ", ".join(f"{k}={v:g}" for k, v in self.params.items() if isinstance(v, (int, float)))
        return self._join(self.fn + (f"({shown})" if shown else ""), self._folded())


@dataclass(eq=False)
class AffineLayer(Layer):
    """``y = x·scale + shift`` with constant arrays broadcastable against ``x``."""

    scale: np.ndarray = None
    shift: np.ndarray = None
    family: ClassVar[str] = "affine"


@dataclass(eq=False)
class MergeLayer(Layer):
    """Add/Sum of several tensors (and possibly a constant ``const``): a residual join."""

    const: np.ndarray | None = None
    kind: ClassVar[str] = MERGE
    family: ClassVar[str] = "merge"


@dataclass(eq=False)
class GateLayer(Layer):
    """``y = signal · gate`` where the gate is a squashed function of its own branch
    (squeeze-excitation): for the backward pass the gate is a constant.

    ``inputs`` is ``[signal, gate]``; only the signal receives relevance.
    """

    kind: ClassVar[str] = GATE
    family: ClassVar[str] = "gate"


@dataclass(eq=False)
class ProductLayer(Layer):
    """``y = a · b`` of two non-constant tensors, before the canonical passes decide what it
    is (an element-wise activation such as SiLU, or a gate); one left over is refused."""

    family: ClassVar[str] = "product"


@dataclass(eq=False)
class SumPairLayer(Layer):
    """``y = a + b`` of two non-constant tensors that may turn out to be one element-wise
    function of a single tensor (tanh-GELU's ``x + 0.044715·x³``); otherwise a merge."""

    family: ClassVar[str] = "sum-pair"


@dataclass(eq=False)
class ReshapeLayer(Layer):
    """Flatten/Reshape/Squeeze/Unsqueeze; ``out_shape`` the static shape without batch (or None);
    ``target`` a Reshape's constant shape operand as written (0: the input's dim, -1: inferred;
    None where it is not a constant, or 0 means a zero dim, ``allowzero``)."""

    axis: int = 1
    out_shape: tuple | None = None
    target: tuple | None = None
    kind: ClassVar[str] = ROUTE
    family: ClassVar[str] = "reshape"


@dataclass(eq=False)
class TransposeLayer(Layer):
    perm: tuple[int, ...] = ()
    kind: ClassVar[str] = ROUTE
    family: ClassVar[str] = "transpose"

    def describe(self) -> str:
        return self._join(f"perm={list(self.perm)}", self._folded())


@dataclass(eq=False)
class ConcatLayer(Layer):
    """Concat of the ``inputs``; ``constants`` are the pieces that do not depend on the model
    input (a ViT's class token): (position among all pieces, tensor name, size along the axis
    or None, value or None where only onnxruntime knows it). Their share of relevance is dropped."""

    axis: int = 1
    constants: tuple = ()
    kind: ClassVar[str] = ROUTE
    family: ClassVar[str] = "concat"

    def describe(self) -> str:
        dropped = (f"constant piece(s) at {[c[0] for c in self.constants]} (relevance dropped)"
                   if self.constants else "")
        return self._join(f"axis={self.axis}", dropped, self._folded())


@dataclass(eq=False)
class GatherLayer(Layer):
    """Gather with constant indices along ``axis`` (a ViT's class token ``x[:, 0]``, the q/k/v
    split of a fused projection); ``indices`` keeps its ONNX shape (a scalar removes the axis)."""

    axis: int = 0
    indices: np.ndarray = None
    kind: ClassVar[str] = ROUTE
    family: ClassVar[str] = "gather"

    def describe(self) -> str:
        shown = self.indices.tolist() if self.indices.size <= 4 else f"{self.indices.size} indices"
        return self._join(f"axis={self.axis}", f"indices={shown}", self._folded())


@dataclass(eq=False)
class SliceLayer(Layer):
    """Slice with constant bounds: ``slices`` per axis (Python ``slice`` objects, axis 0 first)."""

    slices: tuple = ()
    kind: ClassVar[str] = ROUTE
    family: ClassVar[str] = "slice"

    def describe(self) -> str:
        shown = [f"{a}:{s.start}:{s.stop}:{s.step}" for a, s in enumerate(self.slices) if s != slice(None)]
        return self._join("slices=" + ",".join(shown), self._folded())


@dataclass(eq=False)
class LayerNormLayer(Layer):
    """LayerNormalization over the axes from ``axis`` on: ``(x − μ)/σ · weight + bias``."""

    axis: int = -1
    epsilon: float = 1e-5
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    kind: ClassVar[str] = NORM
    family: ClassVar[str] = "layernorm"

    def describe(self) -> str:
        return self._join(f"axis={self.axis}", f"eps={self.epsilon:g}", self._folded())


@dataclass(eq=False)
class InstanceNormLayer(LayerNormLayer):
    """InstanceNormalization: per sample and channel over the axes from 2 on, ``(x − μ)/σ ·
    weight_c + bias_c`` (torch's GroupNorm exports as one over (N, groups, rest) between two
    Reshapes, its affine part as a Mul and an Add after them)."""

    axis: int = 2
    family: ClassVar[str] = "instancenorm"

    def describe(self) -> str:
        return self._join(f"eps={self.epsilon:g}", self._folded())


@dataclass(eq=False)
class ReduceLayer(Layer):
    """ReduceMean (``mean``) or ReduceSum over ``axes`` (not the batch): a sum of its inputs."""

    axes: tuple[int, ...] = ()
    keepdims: bool = True
    mean: bool = True
    kind: ClassVar[str] = MERGE
    family: ClassVar[str] = "reduce"

    def describe(self) -> str:
        return self._join(f"{'mean' if self.mean else 'sum'} over {list(self.axes)}", self._folded())


@dataclass(eq=False)
class SoftmaxLayer(Layer):
    """A Softmax inside the network (attention weights) along ``axis``."""

    axis: int = -1
    kind: ClassVar[str] = SOFTMAX
    family: ClassVar[str] = "softmax"

    def describe(self) -> str:
        return self._join(f"axis={self.axis}", self._folded())


@dataclass(eq=False)
class BilinearLayer(Layer):
    """``y = a @ b`` of two activations (MatMul with batch dims); ``attention``: the index of
    the operand that is a Softmax's output (the attention weights), or None."""

    attention: int | None = None
    kind: ClassVar[str] = BILINEAR
    family: ClassVar[str] = "bilinear"

    def describe(self) -> str:
        return self._join("attention weights × values" if self.attention is not None else "", self._folded())


@dataclass(eq=False)
class PadLayer(Layer):
    """Padding; ``pads`` as ONNX orders them (all begins, then all ends). ``mode`` is ONNX's:
    ``constant`` (zeros), or ``reflect``, ``edge`` and ``wrap``, which copy input elements."""

    pads: tuple[int, ...] = ()
    mode: str = "constant"
    kind: ClassVar[str] = ROUTE
    family: ClassVar[str] = "pad"


@dataclass(eq=False)
class ResizeLayer(LinearLayer):
    """Resize/Upsample of H and W (nearest or linear): a fixed linear map per axis."""

    mode: str = "nearest"
    coordinate_mode: str = "half_pixel"
    nearest_mode: str = "round_prefer_floor"
    scales: tuple[float, float] | None = None
    sizes: tuple[int, int] | None = None
    family: ClassVar[str] = "resize"
    weight: ClassVar[None] = None
    bias: ClassVar[None] = None

    def describe(self) -> str:
        what = f"scales={list(self.scales)}" if self.scales else f"sizes={list(self.sizes)}"
        return self._join(self.mode, what, self._folded())


def layer_aliases(layers: list[Layer]) -> dict[str, str]:
    """Names as people type them → layer names. tf2onnx scopes a Keras layer ``block5_conv3`` as
    ``block5_conv3_1`` (the call's uniquified name scope); the name without the numeric suffix
    is an alias wherever it is not a layer's name itself and points at one layer only. So is
    the node name tf2onnx gave a layer it made itself (``Conv__36``, output ``Conv__36:0``),
    which the layer is named after its Keras layer instead."""
    names = {l.name for l in layers}
    found: dict[str, list[str]] = {}
    for name in names:
        head, sep, tail = name.rpartition("_")
        if sep and head and tail.isdigit() and head not in names:
            found.setdefault(head, []).append(name)
    for layer in layers:
        node = layer.output[:-2] if layer.output.endswith(":0") else ""
        if node and node not in names and "/" not in node:
            found.setdefault(node, []).append(layer.name)
    return {alias: hits[0] for alias, hits in found.items() if len(hits) == 1}


@dataclass
class LayerGraph:
    """Layers in topological order plus the tensors around them.

    ``input`` is the model's image input, ``output`` the tensor explained (the logits:
    a trailing Softmax is already stripped), ``model_output`` the model output it is read
    from (the first of ``model_outputs`` unless one was chosen), ``shapes`` the statically inferred shapes
    (``None`` for unknown dims, the batch dim usually unknown).
    """

    layers: list[Layer]
    input: str
    output: str
    input_shape: tuple
    output_shape: tuple
    shapes: dict[str, tuple]
    stripped: list[str] = field(default_factory=list)
    #: shapes inference left open, from onnxruntime runs on zeros: called once, by ``fill_open_shapes``
    shape_probe: Callable[[], dict[str, tuple]] | None = field(default=None, repr=False)
    model_output: str = ""
    model_outputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.producer = {l.output: l for l in self.layers}
        self.by_name = {l.name: l for l in self.layers}
        self.aliases = layer_aliases(self.layers)

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def fill_open_shapes(self) -> None:
        """Fill the shapes onnx's inference left open (sizes an exporter computes at run time),
        once: neuron paths and receptive fields need them, explaining does not (efficientnet-
        lite0's run-time pads: 0.2 s of onnxruntime runs a load would pay for nothing)."""
        if self.shape_probe is not None:
            probe, self.shape_probe = self.shape_probe, None
            self.shapes.update(probe())

    def batch_axes(self) -> dict[str, int | None]:
        """The batch axis of every layer's output: 0, another axis where attention moved it (the
        q/k/v split, a sequence-first layout), or None where a reshape merged it with another
        axis in an order the shapes do not say."""
        if getattr(self, "_batch_axes", None) is not None:  # the layers are final: once per graph
            return self._batch_axes
        axes: dict[str, int | None] = {self.input: 0}
        for layer in self.layers:
            ax = layer.handler.batch_axis(layer, [axes.get(i, 0) for i in layer.inputs], self.shapes)
            static = self.shapes.get(layer.output)
            if ax is None and static and static[0] is not None and sum(d is None for d in static) == 1:
                ax = static.index(None)  # a known leading dim and one open one: the batch
            axes[layer.output] = ax
        self._batch_axes = axes
        return axes

    def channel_axes(self) -> dict[str, int | None]:
        """The channel axis of every layer's output, what ``--target LAYER:C`` counts along: 1
        after a Conv, the last after a MatMul (a ConvNeXt's pointwise Linear on (N, H, W, C)),
        moved by transposes, kept by layers that keep the rank; None where not known."""
        axes: dict[str, int | None] = {}
        for layer in self.layers:
            axes[layer.output] = layer.handler.channel_axis(layer, [axes.get(i) for i in layer.inputs], self.shapes)
        return axes

    def __len__(self) -> int:
        return len(self.layers)

    def linear_layers(self) -> list[Layer]:
        return [l for l in self.layers if l.kind == LINEAR]

    def consumers(self, tensor: str) -> list[Layer]:
        return [l for l in self.layers if tensor in l.inputs]

    def dag(self) -> nx.DiGraph:
        """Layer-level DAG (node = layer name, edge = tensor flowing between layers)."""
        g = nx.DiGraph()
        g.add_node(self.input, op="Input")
        for layer in self.layers:
            g.add_node(layer.name, op=layer.op, index=layer.index, kind=layer.kind)
            for t in layer.inputs:
                src = self.producer[t].name if t in self.producer else self.input
                g.add_edge(src, layer.name, tensor=t)
        return g

    def find(self, key: str) -> Layer:
        """A layer by name, output tensor name or index (as the CLI's ``--target``/``--rule``)."""
        if key in self.by_name:
            return self.by_name[key]
        if key in self.aliases:
            return self.by_name[self.aliases[key]]
        if key in self.producer:
            return self.producer[key]
        if key.lstrip("-").isdigit() and -len(self.layers) <= int(key) < len(self.layers):
            return self.layers[int(key)]
        from ..errors import InputError
        from ..names import did_you_mean

        hint = did_you_mean(key, list(self.by_name) + list(self.aliases)) or " (see `lrpath plan` for the layer names)"
        raise InputError(f"no layer named '{key}'{hint}")
