"""Constant folding: every tensor computable from initializers alone, as a numpy array.

Exporters often build weights and shapes from small constant sub-graphs (the onnx test
models make every weight with ConstantOfShape; PyTorch builds Reshape targets from
Shape/Gather/Concat). The analyzer needs those values (weights, BN statistics), never a
guess. ConstantOfShape becomes a zero-stride broadcast view, so a 400 MB all-zero weight
costs nothing until something writes to it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ModelError

#: largest input (elements) the generic reference-evaluator fallback may fold.
FALLBACK_LIMIT = 1 << 20

Folder = Callable[[onnx.NodeProto, list], np.ndarray]


def stored_tensors(proto: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """The tensors a file stores by name, to edit in place: initializers, and the ``value``
    of Constant nodes (exporters keep weights in either)."""
    out = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                out[node.output[0]] = value
    return out


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _constant(node: onnx.NodeProto, _: list) -> np.ndarray:
    a = _attrs(node)
    if "value" in a:
        return numpy_helper.to_array(a["value"])
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in a:
            return np.asarray(a[key], dtype)
    raise ValueError("Constant without a numeric value")


def _constant_of_shape(node: onnx.NodeProto, ins: list) -> np.ndarray:
    value = _attrs(node).get("value")
    v = numpy_helper.to_array(value).reshape(()) if value is not None else np.float32(0)
    shape = tuple(int(d) for d in np.asarray(ins[0]).reshape(-1))
    return np.broadcast_to(np.asarray(v), shape)


def _axes(node: onnx.NodeProto, ins: list) -> list[int] | None:
    a = _attrs(node)
    if "axes" in a:
        return list(a["axes"])
    if len(ins) > 1 and ins[1] is not None:
        return [int(v) for v in np.asarray(ins[1]).reshape(-1)]
    return None


def _unsqueeze(node, ins):
    x = np.asarray(ins[0])
    out_rank = x.ndim + len(_axes(node, ins))
    for ax in sorted(a % out_rank for a in _axes(node, ins)):
        x = np.expand_dims(x, ax)
    return x


def _squeeze(node, ins):
    axes = _axes(node, ins)
    x = np.asarray(ins[0])
    return np.squeeze(x) if axes is None else np.squeeze(x, tuple(a % x.ndim for a in axes))


def _reshape(node, ins):
    x = np.asarray(ins[0])
    shape = [int(v) for v in np.asarray(ins[1]).reshape(-1)]
    if not _attrs(node).get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _binary(fn):
    return lambda node, ins: fn(np.asarray(ins[0]), np.asarray(ins[1]))


def _div(node, ins):
    a, b = np.asarray(ins[0]), np.asarray(ins[1])
    if a.dtype.kind in "iu":
        return np.trunc(a / b).astype(a.dtype)
    return a / b


def _dequantize(node, ins):
    """DequantizeLinear of a constant (a QDQ model's weights): ``(x − zero_point) · scale``, per
    tensor or per channel along ``axis``; blocked quantization is left to the reference evaluator."""
    attrs = _attrs(node)
    if attrs.get("block_size"):
        raise ValueError("blocked quantization")
    x = np.asarray(ins[0])
    scale = np.asarray(ins[1], np.float32)
    zero = np.asarray(ins[2]) if len(ins) > 2 and ins[2] is not None else np.zeros((), x.dtype)
    if scale.ndim == 1 and x.ndim > 0:
        shape = [1] * x.ndim
        shape[attrs.get("axis", 1) % x.ndim] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape) if zero.ndim == 1 else zero
    return ((x.astype(np.int64) - zero.astype(np.int64)) * scale).astype(np.float32)


FOLDERS: dict[str, Folder] = {
    "Constant": _constant,
    "ConstantOfShape": _constant_of_shape,
    "Identity": lambda node, ins: ins[0],
    "Cast": lambda node, ins: np.asarray(ins[0]).astype(
        helper.tensor_dtype_to_np_dtype(_attrs(node)["to"])),
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Reshape": _reshape,
    "Transpose": lambda node, ins: np.transpose(np.asarray(ins[0]), _attrs(node).get("perm")),
    "Concat": lambda node, ins: np.concatenate([np.asarray(i) for i in ins], _attrs(node)["axis"]),
    "Gather": lambda node, ins: np.take(np.asarray(ins[0]), np.asarray(ins[1]),
                                        axis=_attrs(node).get("axis", 0)),
    "Shape": lambda node, ins: np.asarray(np.shape(ins[0]), np.int64),
    "Add": _binary(np.add), "Sub": _binary(np.subtract), "Mul": _binary(np.multiply),
    "Div": _div, "Pow": _binary(np.power),
    "Neg": lambda node, ins: -np.asarray(ins[0]),
    "Equal": _binary(np.equal),
    "Where": lambda node, ins: np.where(np.asarray(ins[0]), np.asarray(ins[1]), np.asarray(ins[2])),
    "Expand": lambda node, ins: np.asarray(ins[0]) * np.ones(tuple(int(d) for d in np.asarray(ins[1])),
                                                             np.asarray(ins[0]).dtype),
    "Sqrt": lambda node, ins: np.sqrt(ins[0]),
    "Reciprocal": lambda node, ins: 1.0 / np.asarray(ins[0]),
    "DequantizeLinear": _dequantize,
}


def _fallback(node: onnx.NodeProto, ins: list, opset: int) -> np.ndarray | None:
    """Evaluate one node with onnx's reference evaluator (small inputs only)."""
    if sum(np.asarray(i).size for i in ins if i is not None) > FALLBACK_LIMIT:
        return None
    if node.domain not in ("", "ai.onnx"):
        return None
    from onnx.reference import ReferenceEvaluator

    names = [f"in{i}" if n else "" for i, n in enumerate(node.input)]
    clone = helper.make_node(node.op_type, names, [f"out{i}" for i in range(len(node.output))])
    clone.attribute.extend(node.attribute)
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype), None)
              for n, v in zip(names, ins) if n]
    outputs = [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in clone.output]
    model = helper.make_model(helper.make_graph([clone], "fold", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", opset)])
    feeds = {n: np.asarray(v) for n, v in zip(names, ins) if n}
    return ReferenceEvaluator(model).run(None, feeds)[0]


def fold_constants(graph: onnx.GraphProto, initializers: dict[str, np.ndarray],
                   opset: int) -> dict[str, np.ndarray]:
    """All tensors of ``graph`` whose value does not depend on a graph input.

    Nodes must be in topological order (the ONNX rule; the walker checks it first).
    Nodes that cannot be folded simply stay dynamic; whoever needs a constant there
    reports it.
    """
    consts: dict[str, np.ndarray] = dict(initializers)
    for node in graph.node:
        if node.op_type != "Constant" and (not node.input or not all(
                (not n) or n in consts for n in node.input)):
            continue
        ins = [consts[n] if n else None for n in node.input]
        try:
            fold = FOLDERS.get(node.op_type)
            out = fold(node, ins) if fold else _fallback(node, ins, opset)
        except Exception:  # an op the folder cannot evaluate stays dynamic
            out = None
        if node.op_type == "Constant" and out is not None and np.asarray(out).dtype.kind == "f" \
                and not np.isfinite(out).all():
            raise ModelError(f"Constant node '{node.name or node.output[0]}' holds NaN or infinite values")
        if out is not None and len(node.output) >= 1 and node.output[0]:
            consts[node.output[0]] = out
    return consts


#: batch sizes shape arithmetic is evaluated at: a value the same at both does not depend on it
_PROBE_BATCHES = (2, 3)


def _shape_value(node: onnx.NodeProto, shape: tuple | None, batch: int) -> np.ndarray | None:
    """``Shape``'s output for a tensor of static ``shape`` whose batch dim (the one unknown) is
    ``batch``; None when more than that is unknown."""
    if shape is None or sum(d is None for d in shape) > 1:
        return None
    full = np.asarray([batch if d is None else d for d in shape], np.int64)
    a = _attrs(node)
    return full[a.get("start", 0):a.get("end", len(full))] if ("start" in a or "end" in a) else full


def _static_value(node: onnx.NodeProto, shape: tuple | None, batch: int) -> np.ndarray | None:
    """A Shape or Size node's output from static shapes at ``batch``; None if they do not say."""
    v = _shape_value(node, shape, batch)
    return v if v is None or node.op_type == "Shape" else np.asarray(np.prod(v), np.int64)


def fold_shape_arithmetic(nodes: list[onnx.NodeProto], consts: dict[str, np.ndarray],
                          shapes: dict[str, tuple], varying: set[str], opset: int,
                          probe: Callable[[list[str], int], dict[str, np.ndarray]] | None = None
                          ) -> dict[str, np.ndarray]:
    """Values computed from tensor shapes that do not depend on the batch size.

    Exporters compute attention's ``1/√d`` or a head count from ``x.shape`` at run time
    (Shape → Gather → Cast → Pow). Evaluated at two batch sizes, a value that comes out the
    same is a constant; one that differs (a class token expanded to the batch) stays for
    onnxruntime. A ``Shape`` reads the static shape where shape inference knows it, else
    ``probe(outputs, batch)`` (onnxruntime on a dummy batch) gives it.
    """
    shape_nodes = [n for n in nodes if n.op_type in ("Shape", "Size") and n.output[0] not in consts]
    runs = []
    for batch in _PROBE_BATCHES:
        known = {n.output[0]: _static_value(n, shapes.get(n.input[0]), batch) for n in shape_nodes}
        missing = [k for k, v in known.items() if v is None]
        if missing and probe is not None:
            known.update(probe(missing, batch))
        vals: dict[str, np.ndarray] = {}
        for node in nodes:
            if any(o in varying or o in consts for o in node.output if o):
                continue
            if node.op_type in ("Shape", "Size"):
                out = known.get(node.output[0])
            elif node.input and all((not n) or n in consts or n in vals for n in node.input):
                ins = [(vals[n] if n in vals else consts[n]) if n else None for n in node.input]
                try:
                    fold = FOLDERS.get(node.op_type)
                    out = fold(node, ins) if fold else _fallback(node, ins, opset)
                except Exception:
                    out = None
            else:
                out = None
            if out is not None and node.output and node.output[0]:
                vals[node.output[0]] = np.asarray(out)
        runs.append(vals)
    first, second = runs
    return {k: v for k, v in first.items()
            if k in second and v.shape == second[k].shape and np.array_equal(v, second[k])}
