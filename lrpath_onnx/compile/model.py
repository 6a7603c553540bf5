"""``lrpath compile``: the model plus its relevance pass, as one ONNX model of standard operators.

The forward graph is the original one, untouched, with each MaxPool's ``Indices`` output
added (its switches). The relevance pass is written by running the analyzer's own backward
pass on ``Sym`` tensors (``symbolic``) with the ``GraphBackend``: every handler and rule
emits the nodes of the computation it performs in ``lrpath explain``, so the compiled file
and the analyzer agree by construction and each new op or rule compiles as soon as it
explains. Inputs: the model's, plus an optional int64 ``target`` [N] (−1 or absent: the
top-1 class). Outputs: the model's, plus ``relevance`` (the input's shape and layout) and
``relevance/<layer>`` for kept layers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..backward.linear_rules import WeightCache
from ..backward.propagate import propagate
from ..errors import InputError, ModelError, first_line
from ..graph.symbolic import Builder, Sym
from ..ops import handler_for
from ..ops.emit import output_node, target_logit_nodes
from ..ops.registry import BackwardContext
from ..runtime.session import add_switch_outputs
from .backend import GraphBackend

#: the opset the compiled graph is written in (ScatterElements' reduction needs 16)
OPSET = 17
TARGET = "target"
RELEVANCE = "relevance"


def _full_proto(model) -> onnx.ModelProto:
    """The model with its stubbed weights put back."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    inits = []
    for t in proto.graph.initializer:
        if t.name in model.stubbed:
            inits.append(numpy_helper.from_array(np.asarray(model.initializers[t.name]), t.name))
        else:
            inits.append(t)
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(inits)
    return proto


def _keep_unpacked(proto: onnx.ModelProto) -> None:
    """Declare the weights of the forward graph's matrix products as (overridable) graph inputs
    too, keeping their initializers as defaults.

    onnxruntime prepacks a constant B of Gemm/MatMul, and its prepacked kernel sums in another
    order than the plain one the analyzer's session runs (which shares those weights with the
    relevance pass instead of copying them): 97 % of VGG16's dense outputs differed by an ulp,
    and the ε rule's small denominators turned that into 7·10⁻⁵ of the heatmap. An
    initializer that is also an input is not constant to onnxruntime, so it is not prepacked
    and both sides compute the forward alike. Callers need not feed them (onnxruntime lists
    them among ``get_overridable_initializers``, not ``get_inputs``)."""
    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    declared = {v.name for v in g.input}
    for node in g.node:
        handler = handler_for(node.op_type)
        at = None if handler is None else handler.shared_weight_input  # a dense layer's weight operand
        if at is not None and len(node.input) > at and node.input[at] in inits and node.input[at] not in declared:
            t = inits[node.input[at]]
            g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
            declared.add(t.name)


def _at_opset(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` in the default-domain opset the relevance nodes are written in."""
    current = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if current is None or current >= OPSET:
        return proto
    try:
        from onnx import version_converter

        return version_converter.convert_version(proto, OPSET)
    except Exception as exc:
        msg = first_line(exc)
        raise ModelError(f"compile needs opset {OPSET}; converting the model from opset {current} failed: {msg}") \
            from None


def _names(proto: onnx.ModelProto) -> set[str]:
    g = proto.graph
    names = {v.name for v in list(g.input) + list(g.output) + list(g.value_info)} | {t.name for t in g.initializer}
    for n in g.node:
        names |= set(n.input) | set(n.output) | {n.name}
    return names


def _static_input(an) -> tuple[int, ...]:
    dims = an.graph.input_shape[1:]
    if not dims or any(d is None for d in dims):
        raise InputError(f"compile needs the model's input size; its input is {an.graph.input_shape}: give --size H[,W]")
    return (1,) + tuple(int(d) for d in dims)


def _start(b: Builder, logits: Sym) -> Sym:
    """The target logit per sample, others 0: ``target`` where given (≥ 0), else the top-1."""
    flat = logits.reshape(logits.shape[0], -1)
    return flat._new(target_logit_nodes(b, flat.name, flat.shape[1], TARGET), flat.shape).reshape(logits.shape)


def _forward_sym(b: Builder, name: str, traced: tuple, dtype, bax: int | None, single: bool = False) -> Sym:
    """The Sym of a forward tensor traced at batch 1, its batch where the graph says; an axis that
    holds more than the batch at batch 1 has it merged in front (attention's batch × heads). A
    model exported for one sample is written with its shapes as they are."""
    if single:  # it runs one sample only: every shape is as traced
        return Sym(b, name, traced, dtype, batched=False)
    if bax is None:
        raise InputError(f"lrpath compile cannot tell where the batch sits in '{name}' (a reshape merges it "
                         "with another axis); `lrpath explain` explains this model")
    return Sym(b, name, traced, dtype, bax=bax, bsplit=(1, int(traced[bax])) if traced else (1, 1))


def compile_model(an, keep_layers=()) -> onnx.ModelProto:
    """The ONNX model computing ``an``'s outputs and its relevance for ``target``."""
    graph = an.graph
    kept = [graph.find(name).name for name in keep_layers]
    if RELEVANCE in {o.name for o in an.model.proto.graph.output} or TARGET in _names(an.model.proto):
        raise InputError(f"compile: the model already has a tensor named '{RELEVANCE}' or '{TARGET}'")
    x0 = np.zeros(_static_input(an), np.float32)
    fwd = an.forward(x0)  # batch-1 values give every forward tensor's shape
    proto = _at_opset(_full_proto(an.model))
    int_outputs = add_switch_outputs(proto, graph, set(fwd))
    _keep_unpacked(proto)
    b = Builder(_names(proto))
    for name, arr in an.model.initializers.items():
        if arr.size >= 4096:
            b.share(name, arr)
    axes = graph.batch_axes()
    single = bool(graph.input_shape) and graph.input_shape[0] == 1  # a model exported for one sample
    syms = {name: _forward_sym(b, name, arr.shape, np.int64 if name in int_outputs else np.float32,
                               axes.get(name, 0), single) for name, arr in fwd.items()}
    syms[graph.input] = Sym(b, graph.input, x0.shape, batched=not single)
    ctx0, _ = an._context(x0, dict(fwd))
    be = GraphBackend(b)
    ctx = BackwardContext(fwd=syms, backend=be, cache=WeightCache(be), batch=1, shapes=graph.shapes,
                          bounds=ctx0.bounds, dtype=np.float32)
    start = _start(b, syms[graph.output])

    def scope(layer):
        b.scope = layer.name

    try:
        prop = propagate(graph, an.plan(), ctx, graph.output, start, tuple(kept), checked=False, on_layer=scope)
    except (TypeError, AttributeError, ValueError) as exc:  # a step written for arrays only
        layer = graph.by_name.get(b.scope)
        what = f"'{layer.name}' ({layer.op})" if layer is not None else "a layer"
        raise InputError(f"lrpath compile cannot write the relevance step of {what} as ONNX nodes yet "
                         f"({type(exc).__name__}); `lrpath explain` explains this model") from None
    b.scope = ""
    rel = prop.input_relevance
    if not isinstance(rel, Sym):  # nothing reaches the input
        rel = syms[graph.input] * np.float32(0)
    outputs = [(RELEVANCE, rel)] + [(f"{RELEVANCE}/{name}", prop.kept[name]) for name in kept]
    g = proto.graph
    g.node.extend(b.nodes)
    for name, sym in outputs:
        g.node.append(output_node(sym.name, name))
        dims = ["N"] + list(sym.shape[1:])
        g.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
    g.initializer.extend(b.initializers)
    g.input.append(helper.make_tensor_value_info(TARGET, TensorProto.INT64, ["N"]))
    g.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), TARGET))  # the default: top-1
    del g.value_info[:]
    proto.ir_version = max(proto.ir_version, 8)
    proto.producer_name = "lrpath-onnx compile"
    meta = {"lrpath.preset": an.plan().describe(), "lrpath.rules": "; ".join(
        f"{l.name}={an.plan().rule_for(l)}" for l in graph.layers)}
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    return proto


def save(proto: onnx.ModelProto, path) -> None:
    """Write ``proto`` checked by ``onnx.checker`` (full check); weights beside it past protobuf's 2 GB."""
    big = proto.ByteSize() > (2 << 30) - (64 << 20)
    if big:
        onnx.save_model(proto, str(path), save_as_external_data=True, location=f"{Path(path).name}.data")
        onnx.checker.check_model(str(path), full_check=True)
    else:
        onnx.checker.check_model(proto, full_check=True)
        onnx.save_model(proto, str(path))
