"""LayerNorm written out in elementary ops, as exporters before opset 17 write it.

``(x − mean(x)) / sqrt(mean((x − mean(x))²) + ε)`` (the squares as Pow 2 or a product, the
division as Div or as a product with Reciprocal), with the Mul by the weight and the Add of
the bias after it, becomes one LayerNormalization node, so it is explained by the LayerNorm
handler (σ held constant) exactly as the opset-17 op with the same weights: the bias takes
its share of the relevance there, which a bias Add on its own, a constant shift passing all
relevance through, would not. The rewrite is on the ONNX nodes, before the layer walk:
onnxruntime still runs the original graph, and the node's output is the pattern's own
output tensor (the bias Add's).
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


def fuse_layernorm(nodes: list[onnx.NodeProto], consts: dict, shapes: dict,
                   outputs: frozenset = frozenset()) -> list[onnx.NodeProto]:
    """``nodes`` with every LayerNorm pattern replaced by one LayerNormalization: its scale and
    bias are the constant Mul and Add right after it when there are (the only reader of the
    normalised tensor, then of the scaled one; the node's output is then the Add's), else
    unit scale. ``outputs``: the graph's outputs, which stay as they are."""
    producer = {o: n for n in nodes for o in n.output if o}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for i in set(n.input):
            readers.setdefault(i, []).append(n)

    def prod(name, *ops):
        n = producer.get(name)
        return n if n is not None and n.op_type in ops else None

    out, absorbed = [], set()
    for node in nodes:
        if id(node) in absorbed:
            continue
        try:
            fused = _match(node, prod, consts, shapes)
        except (IndexError, ValueError, TypeError):  # a malformed node: the layer walk reports it
            fused = None
        if fused is None:
            out.append(node)
            continue
        x, axis, eps = fused
        norm_shape = tuple(shapes[x][axis:])
        param_shape = norm_shape if len(norm_shape) > 1 else (int(np.prod(norm_shape)),)
        inputs, tail = [x], node
        for op, neutral in (("Mul", 1.0), ("Add", 0.0)):
            step = _constant_step(tail, op, readers, consts, norm_shape, outputs)
            if step is None:
                if op == "Mul":
                    inputs.append(_new_const(consts, f"{node.output[0]}::layernorm_scale",
                                             np.full(param_shape, neutral, np.float32)))
                break
            nxt, value = step
            inputs.append(_new_const(consts, f"{nxt.output[0]}::layernorm_{op.lower()}",
                                     value.reshape(param_shape)))
            absorbed.add(id(nxt))
            tail = nxt
        out.append(helper.make_node("LayerNormalization", inputs, [tail.output[0]], name=node.name,
                                    axis=axis, epsilon=eps))
    return out


def _new_const(consts: dict, name: str, value: np.ndarray) -> str:
    consts[name] = np.ascontiguousarray(value, np.float32)
    return name


def _constant_step(node, op: str, readers: dict, consts: dict, norm_shape: tuple, outputs) -> tuple | None:
    """(the node, its constant over the normalised axes) when ``node``'s output is read by one
    ``op`` with a constant that varies over those axes only (a LayerNorm's weight or bias)."""
    t = node.output[0]
    users = readers.get(t, [])
    if t in outputs or len(users) != 1 or users[0].op_type != op or len(users[0].input) != 2:
        return None
    user = users[0]
    other = user.input[1] if user.input[0] == t else user.input[0]
    if other == t or other not in consts:
        return None
    c = np.asarray(consts[other])
    while c.ndim > len(norm_shape) and c.shape[0] == 1:  # (1, 1, D) against (N, T, D)
        c = c[0]
    if c.dtype.kind != "f" or c.ndim > len(norm_shape):
        return None
    try:
        return user, np.broadcast_to(c, norm_shape).astype(np.float32)
    except ValueError:
        return None


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
