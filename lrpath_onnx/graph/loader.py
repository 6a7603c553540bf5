"""Read an ONNX file defensively: every way a file can be wrong becomes one ``ModelError``.

The model may come from anyone (it is audited in CI), so external data locations are
checked before any byte is read, the opset must be one this ``onnx`` knows, and weights
must be finite. Initializers are moved out of the protobuf into numpy arrays as they are
read, so the process never holds the weights twice (VGG16 is 528 MB).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import ModelError, first_line
from . import protoscan, upcast

#: initializers with more elements than this are stubbed in the skeleton proto.
STUB_ELEMENTS = 4096


@dataclass
class LoadedModel:
    """An ONNX model split into its structure (``proto``) and its weights (``initializers``).

    ``proto`` is the graph with every large initializer replaced by a data-less stub of the
    same name, type and dims; ``initializers`` holds the real arrays. ``path`` is kept for
    messages and for the model's folder (external data).
    """

    path: Path
    proto: onnx.ModelProto
    initializers: dict[str, np.ndarray]
    opset: int
    stubbed: set[str] = field(default_factory=set)
    #: a float16 model, analysed in float32 (``upcast``)
    widened: bool = False


def _check_path(path: Path) -> None:
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelError(f"model path is a directory, not a file: {path}")
    try:
        size = path.stat().st_size
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror}") from None
    if size == 0:
        raise ModelError(f"model file is empty: {path}")


def _parse(path: Path) -> tuple[onnx.ModelProto, list[protoscan.RawTensor]]:
    """The model's structure, and where its large inline weights lie in the file."""
    try:
        skeleton, raw = protoscan.scan_file(path)
        proto = onnx.load_model_from_string(skeleton)
    except Exception:  # not the plain layout the scanner knows: let protobuf judge it
        raw = []
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf raises DecodeError and friends
            reason = first_line(exc)
            raise ModelError(f"not an ONNX model ({path.name}): {reason}") from None
    if proto.ir_version <= 0 or not proto.HasField("graph"):
        raise ModelError(f"not an ONNX model ({path.name}): no graph in the protobuf")
    bad = next((t for t in _texts(proto) if not isinstance(t, str)), None)
    if bad is not None:
        raise ModelError(f"not an ONNX model ({path.name}): a name is not valid UTF-8 ({bad[:40]!r})")
    if len(proto.graph.node) == 0:
        raise ModelError(f"ONNX model {path.name} has an empty graph")
    if len(proto.graph.output) == 0:
        raise ModelError(f"ONNX model {path.name} has no graph outputs")
    return proto, raw


def _texts(proto: onnx.ModelProto):
    """Every string field the analyzer reads. protobuf hands back ``bytes`` for a string field
    that is not valid UTF-8 instead of refusing the message, so the loader checks them."""
    yield from (proto.producer_name, proto.domain)
    yield from (imp.domain for imp in proto.opset_import)
    graphs = [proto.graph]
    while graphs:
        g = graphs.pop()
        yield g.name
        for v in (*g.input, *g.output, *g.value_info):
            yield v.name
        for t in g.initializer:
            yield t.name
            for e in t.external_data:
                yield from (e.key, e.value)
        for n in g.node:
            yield from (n.name, n.op_type, n.domain, *n.input, *n.output)
            for a in n.attribute:
                yield a.name
                graphs.extend(([a.g] if a.HasField("g") else []) + list(a.graphs))


def _opset(proto: onnx.ModelProto, path: Path) -> int:
    supported = onnx.defs.onnx_opset_version()
    opset = 0
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            opset = imp.version
    if opset == 0:
        raise ModelError(f"ONNX model {path.name} imports no default-domain opset")
    if opset > supported:
        raise ModelError(f"ONNX model {path.name} uses opset {opset}, newer than the "
                         f"installed onnx supports ({supported}); upgrade onnx")
    return opset


def _all_tensors(graph: onnx.GraphProto):
    """Initializers and tensors inside Constant/attribute values, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for g in attr.graphs:
                yield from _all_tensors(g)


def _check_external(tensor: onnx.TensorProto, base: Path, path: Path) -> None:
    """Refuse an external-data reference that leaves the model's folder, before reading it."""
    info = {e.key: e.value for e in tensor.external_data}
    loc = info.get("location", "")
    where = f"tensor '{tensor.name}' of {path.name}"
    if not loc:
        raise ModelError(f"{where} has external data without a location")
    p = Path(loc)
    if p.is_absolute() or ".." in p.parts or loc.startswith(("/", "\\")) or ":" in loc:
        raise ModelError(f"{where} points its external data outside the model folder ({loc!r}); refused")
    real_base = base.resolve()
    target = (real_base / p).resolve()
    if real_base not in target.parents:
        raise ModelError(f"{where} points its external data outside the model folder ({loc!r}); refused")
    if not target.is_file():
        raise ModelError(f"{where} needs external data file {loc!r}, which is missing")
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise ModelError(f"{where} has a malformed external-data offset/length") from None
    size = target.stat().st_size
    if offset < 0 or offset > size or (length is not None and (length < 0 or offset + length > size)):
        raise ModelError(f"{where} reads past the end of external data file {loc!r}")


def _tensor_to_array(t: onnx.TensorProto, base: Path, path: Path) -> np.ndarray:
    try:
        arr = numpy_helper.to_array(t, str(base))
    except Exception as exc:
        raise ModelError(f"cannot decode tensor '{t.name}' of {path.name}: {exc}") from None
    expected = int(np.prod(t.dims)) if len(t.dims) else 1
    if arr.size != expected:
        raise ModelError(f"tensor '{t.name}' of {path.name} holds {arr.size} values, "
                         f"its dims say {expected}")
    return arr


def _stub(t: onnx.TensorProto) -> onnx.TensorProto:
    """Same name, type and dims, no data: enough for shape inference, tiny to copy."""
    stub = onnx.TensorProto()
    stub.name, stub.data_type = t.name, t.data_type
    stub.dims.extend(t.dims)
    return stub


def load_model(path: str | os.PathLike) -> LoadedModel:
    """Load ``path`` as an ONNX model, checked, with its weights as numpy arrays.

    Raises
    ------
    ModelError
        Missing/unreadable/empty file, not ONNX, truncated, empty graph, no outputs,
        too-new opset, unsafe or missing external data, undecodable tensors.
    """
    path = Path(path)
    _check_path(path)
    proto, raw = _parse(path)
    opset = _opset(proto, path)
    base = path.parent
    for t in _all_tensors(proto.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            _check_external(t, base, path)
    try:
        big = protoscan.read_arrays(path, raw)
    except (protoscan.NotPlainProtobuf, OSError) as exc:
        raise ModelError(f"cannot read the weights of {path.name}: {exc}") from None
    inits: dict[str, np.ndarray] = {}
    stubbed: set[str] = set()
    new_inits = []
    for t in proto.graph.initializer:
        if not t.name:
            raise ModelError(f"{path.name} has an initializer without a name")
        arr = big.pop(t.name) if t.name in big else _tensor_to_array(t, base, path)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ModelError(f"initializer '{t.name}' of {path.name} holds NaN or infinite values")
        inits[t.name] = arr
        if arr.size > STUB_ELEMENTS:
            new_inits.append(_stub(t))
            stubbed.add(t.name)
        else:
            new_inits.append(numpy_helper.from_array(np.array(arr), t.name))
    # A fresh message for the skeleton: protobuf keeps a parsed message's bytes in one arena
    # until the whole message dies, so clearing fields of the original would free nothing.
    skeleton = onnx.ModelProto()
    del proto.graph.initializer[:]
    skeleton.CopyFrom(proto)
    del proto
    skeleton.graph.initializer.extend(new_inits)
    for t in _all_tensors(skeleton.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:  # Constant attributes with external data
            onnx.external_data_helper.load_external_data_for_tensor(t, str(base))
    half = upcast.is_half(skeleton, inits)
    if half:
        upcast.widen(skeleton, inits)
    return LoadedModel(path=path, proto=skeleton, initializers=inits, opset=opset, stubbed=stubbed, widened=half)


def fix_input_size(model: LoadedModel, size: tuple[int, int]) -> None:
    """Set the image input's open height and width to ``size`` (a model exported with dynamic
    spatial axes), so that every layer's shape follows: neuron paths and receptive fields
    need them. Dims the model fixes are left as they are."""
    inits = {t.name for t in model.proto.graph.initializer}
    vi = next((v for v in model.proto.graph.input if v.name not in inits), None)
    if vi is None or not vi.type.tensor_type.HasField("shape"):
        return
    dims = vi.type.tensor_type.shape.dim
    spatial = [d for d in list(dims)[1:] if not (d.HasField("dim_value") and d.dim_value > 0)]
    if len(spatial) != 2 or len(dims) != 4:
        return
    for d, v in zip(spatial, size):
        d.Clear()
        d.dim_value = int(v)
