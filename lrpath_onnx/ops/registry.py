"""Per-op handlers, looked up by ONNX op type (as onnx's reference evaluator does).

A handler knows three things about its op: how to read an ONNX node into a ``Layer``
(``parse``), which tensors the backward pass needs from onnxruntime (``needs``), and how
relevance crosses the layer (``relevance``). ``forward`` is a plain numpy forward used to
carry z^B bounds through input-side layers and by tests. Adding an op is adding one
handler module and its tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper

from ..errors import UnsupportedOpError
from ..graph.layers import Layer
from ..plan.rules import Rule


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

    def optional_const(self, node: onnx.NodeProto, i: int, what: str) -> np.ndarray | None:
        if i >= len(node.input) or not node.input[i]:
            return None
        return self.const(node, i, what)

    def is_const(self, name: str) -> bool:
        return name in self.consts

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

    @property
    def reuse_forward(self) -> bool:
        """Reuse onnxruntime's outputs as z only when computing in its own precision."""
        return np.dtype(self.dtype) == np.float32

    def shape_of(self, tensor: str) -> tuple[int, ...]:
        """Run-time shape of ``tensor`` (static shape with this batch, or the fetched value's)."""
        if tensor in self.fwd:
            return tuple(self.fwd[tensor].shape)
        static = self.shapes.get(tensor)
        if static is None or any(d is None for d in static[1:]):
            raise KeyError(f"shape of '{tensor}' unknown at run time")
        return (self.batch,) + tuple(static[1:])


class OpHandler:
    """Base handler; subclasses set ``op_types`` and override what applies."""

    op_types: tuple[str, ...] = ()

    def parse(self, node: onnx.NodeProto, ctx: ParseContext) -> Layer | Alias | Strip:
        raise NotImplementedError

    def default_rule(self, layer: Layer) -> Rule:
        """The fixed treatment for non-linear kinds (linear layers get theirs from a preset)."""
        from ..plan.rules import make_rule

        return make_rule({"wta": "wta", "route": "route", "pass": "pass"}.get(layer.kind, "epsilon"))

    def needs(self, layer: Layer, rule: Rule, shapes: dict[str, tuple]) -> set[str]:
        """Tensor names this layer's backward step reads from onnxruntime."""
        return set()

    def relevance(self, layer: Layer, rule: Rule, r: np.ndarray,
                  ctx: BackwardContext) -> list[np.ndarray | None]:
        raise NotImplementedError

    def forward(self, layer: Layer, inputs: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError(f"no numpy forward for {layer.op}")

    def deconv(self, layer: Layer, s: np.ndarray, ctx: BackwardContext) -> list[np.ndarray | None]:
        """Zeiler–Fergus deconvolution: a signal at the layer's output back to its inputs.

        Data-moving layers move it like relevance; others say how (ReLU rectifies, Conv
        transposes with its own filters, MaxPool unpools by its switches)."""
        if layer.kind == "route":
            return self.relevance(layer, self.default_rule(layer), s, ctx)
        from ..errors import InputError

        raise InputError(f"deconvolution through {layer.op} ('{layer.name}') is not defined")


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


def new_layer(node: onnx.NodeProto, ctx: ParseContext, kind: str, inputs: list[str],
              attrs: dict | None = None, params: dict | None = None, op: str | None = None) -> Layer:
    """A Layer for ``node`` (index and unique name are set by the graph walker)."""
    return Layer(index=-1, name=ctx.node_name, op=op or node.op_type, inputs=inputs,
                 output=node.output[0], kind=kind, attrs=attrs or {}, params=params or {},
                 nodes=[ctx.node_name])


def unbroadcast(r: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``r`` over the axes along which an input of ``shape`` was broadcast."""
    if tuple(r.shape) == tuple(shape):
        return r
    lead = r.ndim - len(shape)
    r = r.sum(axis=tuple(range(lead))) if lead > 0 else r
    axes = tuple(i for i, d in enumerate(shape) if d == 1 and r.shape[i] != 1)
    return r.sum(axis=axes, keepdims=True) if axes else r
