"""LayerNorm written out in elementary ops, as exporters before opset 17 write it.

``(x − mean(x)) / sqrt(mean((x − mean(x))²) + ε)`` (the squares as Pow 2 or a product, the
division as Div or as a product with Reciprocal) becomes one LayerNormalization node with unit
scale, so it is explained by the LayerNorm handler (σ held constant); the Mul by the weight
and the Add of the bias after it stay constant affine layers. The rewrite is on the ONNX
nodes, before the layer walk: onnxruntime still runs the original graph, and the node's
output is the pattern's own output tensor.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper


def _axes(node: onnx.NodeProto, consts: dict) -> list[int] | None:
    for a in node.attribute:
        if a.name == "axes":
            return list(helper.get_attribute_value(a))
    if len(node.input) > 1 and node.input[1] in consts:
        return [int(v) for v in np.asarray(consts[node.input[1]]).reshape(-1)]
    return None


def _keepdims(node: onnx.NodeProto) -> bool:
    return all(helper.get_attribute_value(a) != 0 for a in node.attribute if a.name == "keepdims")


def _scalar(consts: dict, name: str) -> float | None:
    v = consts.get(name)
    return float(np.asarray(v).reshape(-1)[0]) if v is not None and np.asarray(v).size == 1 else None


def _last_axes(node, consts, rank) -> int | None:
    """The first axis of a ReduceMean over the trailing axes (keepdims), or None."""
    axes = _axes(node, consts)
    if node.op_type != "ReduceMean" or axes is None or rank is None or not _keepdims(node):
        return None
    axes = sorted(a % rank for a in axes)
    return axes[0] if axes == list(range(axes[0], rank)) else None


def fuse_layernorm(nodes: list[onnx.NodeProto], consts: dict, shapes: dict) -> list[onnx.NodeProto]:
    """``nodes`` with every LayerNorm pattern's last node replaced by a LayerNormalization (unit
    scale; its constant goes into ``consts``)."""
    producer = {o: n for n in nodes for o in n.output if o}

    def prod(name, *ops):
        n = producer.get(name)
        return n if n is not None and n.op_type in ops else None

    out = []
    for node in nodes:
        try:
            fused = _match(node, prod, consts, shapes)
        except (IndexError, ValueError, TypeError):  # a malformed node: the layer walk reports it
            fused = None
        if fused is None:
            out.append(node)
            continue
        x, axis, eps = fused
        width = int(np.prod(shapes[x][axis:]))
        scale = f"{node.output[0]}::layernorm_scale"
        consts[scale] = np.ones(shapes[x][axis:] if len(shapes[x][axis:]) > 1 else (width,), np.float32)
        out.append(helper.make_node("LayerNormalization", [x, scale], [node.output[0]], name=node.name,
                                    axis=axis, epsilon=eps))
    return out


def _match(node, prod, consts, shapes):
    """(x, axis, ε) when ``node`` ends a written-out LayerNorm, else None."""
    if node.op_type == "Div":
        num, den = node.input[0], node.input[1]
    elif node.op_type == "Mul":
        recip = prod(node.input[1], "Reciprocal") or prod(node.input[0], "Reciprocal")
        if recip is None:
            return None
        den = recip.input[0]
        num = node.input[0] if node.input[1] == recip.output[0] else node.input[1]
    else:
        return None
    sub, sqrt = prod(num, "Sub"), prod(den, "Sqrt")
    if sub is None or sqrt is None:
        return None
    x = sub.input[0]
    shape = shapes.get(x)
    rank = None if shape is None else len(shape)
    mean = prod(sub.input[1], "ReduceMean")
    if mean is None or mean.input[0] != x or rank is None:
        return None
    axis = _last_axes(mean, consts, rank)
    add = prod(sqrt.input[0], "Add")
    if axis is None or add is None or any(d is None for d in shape[axis:]):
        return None
    eps_name = next((i for i in add.input if i in consts), None)
    var_name = next((i for i in add.input if i not in consts), None)
    eps = None if eps_name is None else _scalar(consts, eps_name)
    var = prod(var_name, "ReduceMean") if var_name else None
    if eps is None or var is None or _last_axes(var, consts, rank) != axis:
        return None
    sq = prod(var.input[0], "Pow", "Mul")
    if sq is None:
        return None
    if sq.op_type == "Pow" and not (sq.input[0] == num and _scalar(consts, sq.input[1]) == 2.0):
        return None
    if sq.op_type == "Mul" and not (sq.input[0] == num and sq.input[1] == num):
        return None
    return x, axis, eps
