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


# -- the relevance pass's element-wise steps as nodes of a builder ``b`` (``lrpath compile``) --

def divide_nodes(b, r: str, z: str, eps: float) -> str:
    """``r / (z + eps·sign z)`` with sign(0) = 1, and 0 where that denominator is 0."""
    zero = b.const(np.float32(0))
    if eps > 0:  # |z + eps·sign z| ≥ eps: never 0
        nonneg = b.node("GreaterOrEqual", [z, zero])[0]
        den = b.node("Where", [nonneg, b.const(np.float32(eps)), b.const(np.float32(-eps))])[0]
        return b.node("Div", [r, b.node("Add", [z, den])[0]])[0]
    is_zero = b.node("Equal", [z, zero])[0]
    safe = b.node("Where", [is_zero, b.const(np.float32(1)), z])[0]
    return b.node("Where", [is_zero, zero, b.node("Div", [r, safe])[0]])[0]


#: the comparison ``gate_nodes`` keeps relevance by (as ``kernels.elementwise.GATE_MODES``)
_GATES = {"pos": "Greater", "neg": "Less", "nonpos": "LessOrEqual", "zero": "Equal"}


def gate_nodes(b, r: str, sign: str, mode: str) -> str:
    """``r`` where ``sign`` is as ``mode`` says, 0 elsewhere."""
    zero = b.const(np.float32(0))
    return b.node("Where", [b.node(_GATES[mode], [sign, zero])[0], r, zero])[0]


def target_logit_nodes(b, flat: str, classes: int, target: str) -> str:
    """(N, classes) logits kept at ``target`` per sample (int64 [N]; < 0: the top-1), 0 elsewhere."""
    top1 = b.node("ArgMax", [flat], axis=1, keepdims=0)[0]
    missing = b.node("Less", [target, b.ints([0], "zero")])[0]
    chosen = b.node("Where", [missing, top1, target])[0]
    onehot = b.node("OneHot", [chosen, b.ints([classes], "classes"), b.const(np.array([0, 1], np.float32))],
                    axis=-1)[0]
    return b.node("Mul", [flat, onehot])[0]


def output_node(source: str, name: str):
    """A graph output ``name`` holding ``source``."""
    return helper.make_node("Identity", [source], [name], name=name)
