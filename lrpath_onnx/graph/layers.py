"""The canonical layer graph the rest of the analyzer works on.

A ``Layer`` is one explainable step (a Conv with its folded BatchNorm, a dense layer made
of MatMul+Add, a MaxPool, a reshape …). Its tensors keep the names they have in the ONNX
graph, so onnxruntime can hand back exactly the activations a layer needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import networkx as nx
import numpy as np

#: Layer kinds: how relevance crosses the layer.
LINEAR = "linear"      # a rule applies (Conv, Gemm/MatMul, AveragePool, GlobalAveragePool)
WTA = "wta"            # winner-take-all through MaxPool switches
MERGE = "merge"        # several inputs summed (Add, Sum): split by contribution
ROUTE = "route"        # relevance moves without arithmetic (reshape, transpose, concat)
PASS = "pass"          # element-wise (ReLU, Clip, constant affine): relevance passes through


@dataclass
class Layer:
    """One explainable step of the network.

    Attributes
    ----------
    index : position in topological order (what ``--rule 3=...`` refers to).
    name : unique, human-readable (the ONNX node name where it has one).
    op : ONNX op type of the node that defines the layer; the handler registry key.
    inputs : data tensors relevance flows back into (constants are not inputs).
    output : tensor the layer produces (after any folded BatchNorm / affine).
    kind : one of LINEAR, WTA, MERGE, ROUTE, PASS.
    attrs : parsed, validated attributes (strides, pads, perm, axis …).
    params : constant arrays (``weight``, ``bias``, ``scale``, ``shift`` …).
    nodes : names of the ONNX nodes merged into this layer.
    """

    index: int
    name: str
    op: str
    inputs: list[str]
    output: str
    kind: str
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)
    nodes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """Short parameter summary for plan tables (weight shape, strides …)."""
        parts = []
        w = self.params.get("weight")
        if w is not None and self.op != "AveragePool":
            parts.append("w" + "x".join(str(d) for d in w.shape))
        for key in ("strides", "pads", "dilations", "group", "kernel_shape", "perm", "axis"):
            v = self.attrs.get(key)
            if v is not None and v != 1 and v != [1, 1] and v != [0, 0, 0, 0]:
                parts.append(f"{key}={v}")
        folded = [n for n in self.nodes if n != self.name]
        if folded:
            parts.append("+" + "+".join(folded))
        return " ".join(parts)


@dataclass
class LayerGraph:
    """Layers in topological order plus the tensors around them.

    ``input`` is the model's image input, ``output`` the tensor explained (the logits:
    a trailing Softmax is already stripped), ``shapes`` the statically inferred shapes
    (``None`` for unknown dims, the batch dim usually unknown).
    """

    layers: list[Layer]
    input: str
    output: str
    input_shape: tuple
    output_shape: tuple
    shapes: dict[str, tuple]
    stripped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.producer = {l.output: l for l in self.layers}
        self.by_name = {l.name: l for l in self.layers}

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

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
        if key in self.producer:
            return self.producer[key]
        if key.lstrip("-").isdigit() and -len(self.layers) <= int(key) < len(self.layers):
            return self.layers[int(key)]
        from ..errors import InputError

        raise InputError(f"no layer named '{key}' (see `lrpath plan` for the layer names)")
