"""Rule forward terms as extra ONNX nodes, so onnxruntime computes them in the forward pass.

LRP-γ, z⁺ and αβ need the layer's forward product with modified weights
(``ρ(W) ⋆ a + ρ(b)``). That is an ordinary Conv/Gemm with other weights: adding it to the
session's graph lets onnxruntime's own convolution kernels compute it once, next to the
activations, instead of a second convolution pass in the backward loop. The backward
pass then only runs transposed products (numba kernels).
"""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from ..backward.linear_rules import WEIGHT_MODIFIERS, Term
from ..graph.layers import Layer


def term_tensor(layer: Layer, term: Term) -> str:
    """Name of the tensor holding ``term`` of ``layer``."""
    return f"{layer.output}::z[{term.tag()}]"


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


def term_nodes(layer: Layer, terms: list[Term]) -> tuple[list, list, list[str]]:
    """(nodes, initializers, output names) computing ``terms`` for a Conv/Gemm/MatMul layer."""
    nodes: list = []
    inits: list = []
    outputs: list[str] = []
    made_inputs: dict[str, str] = {}
    w = layer.params["weight"]
    b = layer.params.get("bias")
    for term in terms:
        if term.inp not in made_inputs:
            made_inputs[term.inp] = _input_node(layer, term.inp, nodes)
        x = made_inputs[term.inp]
        fn = WEIGHT_MODIFIERS[term.weight]
        out = term_tensor(layer, term)
        wname = f"{out}::w"
        inits.append(numpy_helper.from_array(np.ascontiguousarray(fn(w, term.param), np.float32), wname))
        ins = [x, wname]
        if term.bias and b is not None:
            bname = f"{out}::b"
            inits.append(numpy_helper.from_array(np.ascontiguousarray(fn(b, term.param), np.float32), bname))
            ins.append(bname)
        if layer.op == "Conv":
            at = layer.attrs
            kh, kw = w.shape[2:]
            nodes.append(helper.make_node("Conv", ins, [out], name=out, kernel_shape=[kh, kw],
                                          strides=at["strides"], pads=at["pads"],
                                          dilations=at["dilations"], group=at["group"]))
        else:
            nodes.append(helper.make_node("Gemm", ins, [out], name=out,
                                          transA=int(layer.attrs.get("transA", 0))))
        outputs.append(out)
    return nodes, inits, outputs
