"""ONNX nodes the analyzer adds to a model's graph: rule forward terms and neuron masks.

LRP-γ, z⁺ and αβ need a layer's forward product with modified weights
(``ρ(W) ⋆ ρ_in(a) + ρ(b)``). That is an ordinary Conv/Gemm with other weights: adding it to
the session's graph lets onnxruntime's own kernels compute it once, next to the
activations, instead of a second pass in the backward loop. Each layer's handler writes its
own node (``modified_forward_node``); the input modifiers a⁺ and a⁻ are written here.
"""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from ..backward.linear_rules import WEIGHT_MODIFIERS, Part
from ..graph.layers import Layer
from .linear import term_tensor


def _input_node(layer: Layer, mode: str, nodes: list) -> str:
    """``a`` itself, or a⁺ = relu(a), or a⁻ = −relu(−a), as a tensor name."""
    a = layer.inputs[0]
    if mode == "id":
        return a
    pos = f"{layer.output}::a+"
    if mode == "pos":
        nodes.append(helper.make_node("Relu", [a], [pos], name=pos))
        return pos
    neg_in, neg_relu, neg = f"{layer.output}::-a", f"{layer.output}::relu(-a)", f"{layer.output}::a-"
    nodes += [helper.make_node("Neg", [a], [neg_in], name=neg_in),
              helper.make_node("Relu", [neg_in], [neg_relu], name=neg_relu),
              helper.make_node("Neg", [neg_relu], [neg], name=neg)]
    return neg


def term_nodes(layer: Layer, terms: list[Part]) -> tuple[list, list, list[str]]:
    """(nodes, initializers, output names) computing ``terms`` of a Conv/dense layer."""
    nodes: list = []
    inits: list = []
    outputs: list[str] = []
    made_inputs: dict[str, str] = {}
    w, b = layer.weight, layer.bias
    for term in terms:
        if term.inp not in made_inputs:
            made_inputs[term.inp] = _input_node(layer, term.inp, nodes)
        fn = WEIGHT_MODIFIERS[term.weight]
        out = term_tensor(layer, term)
        wname = f"{out}::w"
        inits.append(numpy_helper.from_array(np.ascontiguousarray(fn(w, term.param), np.float32), wname))
        ins = [made_inputs[term.inp], wname]
        if term.bias and b is not None:
            bname = f"{out}::b"
            inits.append(numpy_helper.from_array(np.ascontiguousarray(fn(b, term.param), np.float32), bname))
            ins.append(bname)
        nodes.append(layer.handler.modified_forward_node(layer, ins, out))
        outputs.append(out)
    return nodes, inits, outputs


def mask_node(tensor: str, mask: str, out: str):
    """``out = tensor · mask`` (a 0/1 mask per channel, broadcast)."""
    return helper.make_node("Mul", [tensor, mask], [out], name=out)
