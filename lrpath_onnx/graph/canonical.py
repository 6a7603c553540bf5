"""Walk an ONNX graph into the canonical ``LayerGraph``.

Steps: order the nodes (refusing cycles and dangling inputs), fold constants, infer
shapes, strip the trailing Softmax, walk back from the explained output along data
inputs only (so shape arithmetic such as Shape→Gather→Reshape never needs explaining),
parse each node with its handler into a typed layer, then run the canonical passes
(``graph.passes``: fuse activation patterns, detect gates, fold BatchNorm/affine maps and
Pads into convolutions, mark facts). Every unsupported op on the way is collected, so
one run names all of them.
"""

from __future__ import annotations

import ast
import re
from collections import deque

import numpy as np
import onnx

from ..errors import InputError, ModelError, UnsupportedOpError
from ..ops import handler_for
from ..ops.registry import Alias, ParseContext, Strip
from ..runtime.shape_probe import open_shapes, shape_probe
from .constants import fold_constants, fold_shape_arithmetic
from .layernorm_pattern import fuse_layernorm
from .layers import Layer, LayerGraph
from .loader import LoadedModel
from .passes import PassContext, run_passes

#: ops that may end the graph and are removed there (LRP explains the logits before them)
STRIPPABLE = ("Softmax", "LogSoftmax", "Identity", "Dropout")
#: a QDQ model's rounding of its output, removed with them (the logits before it are explained)
OUTPUT_ROUNDING = ("QuantizeLinear", "DequantizeLinear")


def topological_nodes(graph: onnx.GraphProto, known: set[str]) -> list[onnx.NodeProto]:
    """Nodes in a valid topological order; ``ModelError`` on a cycle or an undefined input."""
    producer: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for o in node.output:
            if o:
                if o in producer or o in known:
                    raise ModelError(f"tensor '{o}' is produced twice (node '{node.name or node.op_type}')")
                producer[o] = i
    indeg = [0] * len(graph.node)
    users: dict[int, list[int]] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            if not name or name in known:
                continue
            if name not in producer:
                raise ModelError(f"node '{node.name or node.op_type}' reads tensor '{name}', "
                                 "which no node, input or initializer defines")
            indeg[i] += 1
            users.setdefault(producer[name], []).append(i)
    queue = deque(i for i, d in enumerate(indeg) if d == 0)
    order = []
    while queue:
        i = queue.popleft()
        order.append(i)
        for j in users.get(i, []):
            indeg[j] -= 1
            if indeg[j] == 0:
                queue.append(j)
    if len(order) != len(graph.node):
        stuck = next(graph.node[i] for i, d in enumerate(indeg) if d > 0)
        raise ModelError(f"the graph has a cycle (through node '{stuck.name or stuck.op_type}')")
    return [graph.node[i] for i in order]


def infer_shapes(proto: onnx.ModelProto) -> tuple[dict[str, tuple], dict[str, int]]:
    """Static shapes by onnx shape inference (``None`` for unknown dims), and element types;
    best effort."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except Exception:
        inferred = proto
    shapes: dict[str, tuple] = {}
    types: dict[str, int] = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if t.elem_type:
            types[vi.name] = t.elem_type
        if t.HasField("shape"):
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                                    for d in t.shape.dim)
    return shapes, types


def _open_shape_probe(model: LoadedModel, x: str, nodes: list[onnx.NodeProto], varying: set[str],
                      shapes: dict[str, tuple], types: dict[str, int]):
    """``probe()`` → the shapes that inference left open (sizes computed at run time: a Pad's
    or a Resize's from ``Shape`` ops, a channel shuffle's reshape), from onnxruntime runs on
    zeros where the input's size is known. Only tensors of a known element type are fetched."""
    batch_open = int(not shapes.get(x) or shapes[x][0] is None)  # one None is then the batch's

    def open_(t: str) -> bool:
        shape = shapes.get(t)
        return shape is None or sum(d is None for d in shape) > batch_open

    wanted = {t: types[t] for n in nodes for t in n.output if t in varying and t in types and open_(t)}
    return lambda: open_shapes(model, x, shapes.get(x) or (), wanted) if wanted else {}


def _resize_sizes_at_run_time(nodes: list[onnx.NodeProto], consts: dict) -> bool:
    """Whether a Resize's sizes or scales are computed at run time: its parse needs the
    output's shape, so open shapes are probed before the layers are parsed."""
    return any(n.op_type in ("Resize", "Upsample") and any(i and i not in consts for i in n.input[1:]) for n in nodes)


#: where torch.onnx's dynamo exporter records a node's module path (its node names are ``node_conv2d_3``)
_TORCH_SCOPES = "pkg.torch.onnx.name_scopes"
#: ops whose second input is a module's weight parameter
_WEIGHTED = ("Conv", "ConvTranspose", "Gemm")


def _module_name(node: onnx.NodeProto) -> str | None:
    """The name of the module/layer a node belongs to, from exporters' scopes.

    PyTorch (TorchScript exporter): ``/features/features.0/Conv`` → ``features.0``,
    ``/block1/conv1/conv1.0/Conv`` → ``block1.conv1.0``, ``/_blocks.3/_swish/Clip`` →
    ``_blocks.3._swish`` (a scope repeats its parent's attribute, as ``named_modules`` does not). PyTorch (dynamo exporter): the node's ``name_scopes`` metadata
    ``['', 'features', 'features.0', 'conv2d']`` → ``features.0``, and a Conv or Gemm by its
    weight's parameter name (``layer1.0.conv1.weight`` → ``layer1.0.conv1``). tf2onnx:
    ``functional_1/block1_conv1_1/BiasAdd`` → ``block1_conv1_1`` (the Keras layer); a node tf2onnx
    named itself (``Conv__36``) by its weight's scope.
    """
    for prop in node.metadata_props:
        if prop.key == _TORCH_SCOPES:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                break
            modules = [m for m in scopes[:-1] if isinstance(m, str) and m] if isinstance(scopes, list) else []
            weight = node.input[1] if node.op_type in _WEIGHTED and len(node.input) > 1 else ""
            if modules and weight.endswith(".weight") and weight[:-7]:
                # a Conv the exporter fused its BatchNorm into is scoped to the BatchNorm; its
                # weight keeps the conv's parameter name (``layer1.0.conv1.weight``)
                return weight[:-7]
            return modules[-1] if modules else None
    node_name = node.name or ""
    if node_name.startswith("/"):
        if node_name.count("/") < 2:
            return None
        parts = node_name.strip("/").split("/")[:-1]
        name = last = parts[0]
        for part in parts[1:]:  # a scope repeats its parent's attribute: conv1 / conv1.0 is conv1.0
            name = name[:len(name) - len(last)] + part if part.startswith(last + ".") else f"{name}.{part}"
            last = part
        return name
    parts = node_name.split("/")
    if len(parts) >= 3:
        return parts[-2]
    if node.op_type in _WEIGHTED + ("MatMul",) and len(node.input) > 1:
        # tf2onnx names the nodes it makes itself (a Conv it fused a BatchNorm into: ``Conv__36``);
        # the weight keeps the Keras layer's scope: ``model_1/b1c1_conv_1/convolution/merged_input:0``,
        # ``model/dense/MatMul/ReadVariableOp:0``: the scope before the first TensorFlow op
        scope = node.input[1].split("/")
        for k in range(2, len(scope)):
            if scope[k][:1].isupper() or scope[k] in _TF_WEIGHT_STEPS:
                return scope[k - 1] or None
    return None


#: lower-case steps tf2onnx puts between a Keras layer's scope and its weight
_TF_WEIGHT_STEPS = ("convolution", "depthwise", "kernel", "merged_input:0")


#: ops that carry a module's name when several nodes share it (a Keras layer is BiasAdd + Relu)
_PRINCIPAL = ("Conv", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool")


def _unique_names(nodes: list[onnx.NodeProto]) -> dict[int, str]:
    """A unique, readable name per node.

    Exporters scope node names by module (``_module_name``); the module name (``features.0``,
    ``block1_conv1_1``) is what users know from the model's code and the paper's figures. It
    goes to the module's only node, or to its one Conv/dense/pool node; the others get
    ``module/Op``, and the full node name where even that repeats.
    """
    modules = [_module_name(n) for n in nodes]
    members: dict[str, list[int]] = {}
    for i, m in enumerate(modules):
        if m:
            members.setdefault(m, []).append(i)
    plain: set[int] = set()
    for m, idx in members.items():
        principal = [i for i in idx if nodes[i].op_type in _PRINCIPAL]
        if len(idx) == 1:
            plain.add(idx[0])
        elif len(principal) == 1:
            plain.add(principal[0])
    names, seen = {}, set()
    for i, node in enumerate(nodes):
        full = node.name or f"{node.op_type}_{i}"
        module, op = modules[i], full.rsplit("/", 1)[-1]
        options = ([module] if i in plain else []) + ([f"{module}/{op}"] if module else [])
        options += [full[1:] if full.startswith("/") and "/" not in full[1:] else full, f"{full}_{i}"]
        name = next(o for o in options if o not in seen)
        seen.add(name)
        names[id(node)] = name
    return names


def _image_input(model: LoadedModel, shapes: dict[str, tuple]) -> str:
    inits = {t.name for t in model.proto.graph.initializer}
    inputs = [vi.name for vi in model.proto.graph.input if vi.name not in inits]
    if len(inputs) != 1:
        raise ModelError(f"{model.path.name} has {len(inputs)} non-constant inputs "
                         f"({', '.join(inputs) or 'none'}); the analyzer explains single-input models")
    return inputs[0]


def _parse_node(parse, node, ctx: ParseContext):
    """``parse`` (a handler's ``parse``, ``parse_inner`` or ``parse_output``), with a malformed node
    (an attribute of the wrong type, a weight of the wrong rank, a missing input) reported as a
    ModelError naming it instead of a crash."""
    try:
        return parse(node, ctx)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError, OverflowError) as exc:
        detail = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise ModelError(f"node '{ctx.node_name}' ({node.op_type}) is malformed: {detail}") from None


def chosen_output(graph: onnx.GraphProto, output: str | None) -> str:
    """The model output to explain: ``output`` (a name, or an index into the outputs), or the
    first; an unknown one names those there are."""
    names = [o.name for o in graph.output]
    if output is None:
        return names[0]
    if output in names:
        return output
    if re.fullmatch(r"\s*[0-9]+\s*", output) and int(output) < len(names):
        return names[int(output)]
    raise InputError(f"--model-output {output}: the model has no such output; its outputs are "
                     + ", ".join(f"{i}: {n}" for i, n in enumerate(names)))


def build_layer_graph(model: LoadedModel, collect: list[UnsupportedOpError] | None = None,
                      output: str | None = None) -> LayerGraph:
    """The canonical LayerGraph of ``model``, explaining its output ``output`` (the first by
    default; ``chosen_output``).

    With ``collect`` given, unsupported ops are appended to it and left out of the graph
    (for ``lrpath plan``); without, the first report raises one ``UnsupportedOpError``
    naming every unsupported op found.
    """
    proto = model.proto
    graph = proto.graph
    init_names = {t.name for t in graph.initializer} | {vi.name for vi in graph.input}
    nodes = topological_nodes(graph, init_names)
    consts = fold_constants_ordered(graph, nodes, model)
    shapes, types = infer_shapes(proto)
    x = _image_input(model, shapes)
    varying = varying_tensors(nodes, x)
    consts.update(fold_shape_arithmetic(nodes, consts, shapes, varying, model.opset,
                                        probe=shape_probe(model, x, shapes.get(x) or ())))
    probe = _open_shape_probe(model, x, nodes, varying, shapes, types)
    if _resize_sizes_at_run_time(nodes, consts):
        shapes.update(probe())
        probe = None
    nodes = fuse_layernorm(nodes, consts, shapes, frozenset(o.name for o in graph.output))
    node_names = _unique_names(nodes)
    producer = {o: n for n in nodes for o in n.output if o}
    consumers: dict[str, int] = {}
    for n in nodes:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    for o in graph.output:
        consumers[o.name] = consumers.get(o.name, 0) + 1

    out = model_output = chosen_output(graph, output)
    if out in consts or out == x:
        raise ModelError(f"graph output '{out}' does not depend on the input '{x}'")
    stripped: list[str] = []
    while out in producer and producer[out].op_type in STRIPPABLE + OUTPUT_ROUNDING:  # trailing Softmax/Identity/…
        node = producer[out]
        if node.op_type in OUTPUT_ROUNDING:
            stripped.append(node_names[id(node)])
            out = node.input[0]
            continue
        res = _parse_node(handler_for(node.op_type).parse, node, ParseContext(consts, shapes, model.opset,
                                                                         node_names[id(node)]))
        if isinstance(res, (Alias, Strip)):
            if isinstance(res, Strip):
                stripped.append(node_names[id(node)])
            out = res.source
            continue
        break

    errors: list[UnsupportedOpError] = []
    layers_by_node: dict[int, list[Layer]] = {}
    alias: dict[str, str] = {}
    visited: set[str] = set()
    stack = [out]
    while stack:
        t = stack.pop()
        if t in visited or t == x or t in consts:
            continue
        visited.add(t)
        node = producer.get(t)
        if node is None:
            raise ModelError(f"tensor '{t}' has no producer")
        name = node_names[id(node)]
        h = handler_for(node.op_type) if node.domain in ("", "ai.onnx") else None
        index = list(node.output).index(t)
        if h is not None and hasattr(h, "parse_output") and len(node.output) > 1:
            name = f"{name}:{index}"  # one layer per output read (Split)
        if h is None:
            errors.append(UnsupportedOpError(node.op_type, name))
            stack.extend(i for i in node.input if i and i not in consts)
            continue
        pctx = ParseContext(consts, shapes, model.opset, name, varying)
        try:
            if hasattr(h, "parse_output"):
                res = _parse_node(lambda n, c: h.parse_output(n, c, index), node, pctx)
            else:
                res = _parse_node(h.parse, node, pctx)
            if isinstance(res, Strip) and hasattr(h, "parse_inner"):  # a Softmax inside: attention
                res = _parse_node(h.parse_inner, node, pctx) or res
        except UnsupportedOpError as exc:
            errors.append(exc)
            stack.extend(i for i in node.input if i and i not in consts)
            continue
        if isinstance(res, Alias):
            alias[res.output] = res.source
            stack.append(res.source)
        elif isinstance(res, Strip):
            errors.append(UnsupportedOpError(node.op_type, name, "only a final LogSoftmax can be explained "
                                                                 "(it is stripped); this one is inside the network"))
            stack.append(res.source)
        else:
            if t != res.output:
                errors.append(UnsupportedOpError(node.op_type, name, f"the network reads its "
                                                 f"secondary output '{t}'"))
                continue
            layers_by_node.setdefault(id(node), []).append(res)
            stack.extend(res.inputs)

    def resolve(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    layers = [l for n in nodes for l in sorted(layers_by_node.get(id(n), []), key=lambda l: l.name)]
    for layer in layers:
        layer.inputs = [resolve(i) for i in layer.inputs]
    out = resolve(out)
    pctx = PassContext(consumers=consumers, output=out, shapes=shapes)
    layers = run_passes(layers, pctx)
    errors += pctx.errors
    if errors and collect is None:
        _raise_all(errors)
    if collect is not None:
        collect.extend(errors)
    for i, layer in enumerate(layers):
        layer.index = i
    if not any(l.output == out for l in layers) and not errors:
        raise ModelError(f"graph output '{out}' is not computed from the input")
    return LayerGraph(layers=layers, input=x, output=out, input_shape=shapes.get(x) or (),
                      output_shape=shapes.get(out) or (), shapes=shapes, stripped=stripped, shape_probe=probe,
                      model_output=model_output, model_outputs=tuple(o.name for o in graph.output))


#: ops whose output depends on their input's shape only, never on its values
SHAPE_ONLY = ("Shape", "Size")


def varying_tensors(nodes: list[onnx.NodeProto], x: str) -> set[str]:
    """Tensors whose values depend on the input ``x``'s values (a class token broadcast by
    Expand to the batch size depends on ``x``'s shape only, and is no such tensor)."""
    out = {x}
    for node in nodes:
        if node.op_type not in SHAPE_ONLY and any(i in out for i in node.input if i):
            out.update(o for o in node.output if o)
    return out


def _raise_all(errors: list[UnsupportedOpError]) -> None:
    """One error naming every unsupported op found."""
    if len(errors) == 1:
        raise errors[0]
    listed = "; ".join(f"{e.op_type} at '{e.node}'" + (f" ({e.detail})" if e.detail else "") for e in errors)
    raise UnsupportedOpError(errors[0].op_type, errors[0].node, f"{len(errors)} unsupported ops in all: {listed}")


def fold_constants_ordered(graph: onnx.GraphProto, nodes: list[onnx.NodeProto],
                           model: LoadedModel) -> dict[str, np.ndarray]:
    """Constant folding over the topologically ordered nodes."""
    ordered = onnx.GraphProto()
    ordered.node.extend(nodes)
    return fold_constants(ordered, model.initializers, model.opset)
