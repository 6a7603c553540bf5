"""A float16 model (onnxconverter-common's ``convert_float_to_float16``, a ``.half()`` export)
is analysed in float32: its weights are widened exactly, its casts to float16 become casts
to float32, and its declared types follow. Relevance in half precision would drown in
rounding (ε stabilisers of 1e-6 are below float16's resolution near 1), and onnxruntime's
CPU kernels for many float16 ops are missing or slow. The logits then differ from the
float16 run by that run's rounding only."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

HALF = (TensorProto.FLOAT16,)


def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graphs(attr.g)
            for g in attr.graphs:
                yield from _graphs(g)


def _widen_tensor(t: onnx.TensorProto) -> None:
    if t.data_type not in HALF:
        return
    if t.raw_data or t.int32_data:  # inline data: decode, widen, re-encode
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))
    else:  # a data-less stub (its array is widened by the loader) or an empty tensor
        t.data_type = TensorProto.FLOAT


def is_half(proto: onnx.ModelProto, initializers: dict[str, np.ndarray]) -> bool:
    """Whether any declared input/output type, weight or cast of the model is float16."""
    g = proto.graph
    if any(v.type.tensor_type.elem_type in HALF for v in (*g.input, *g.output)):
        return True
    if any(a.dtype == np.float16 for a in initializers.values()):
        return True
    return any(n.op_type == "Cast" and any(a.name == "to" and a.i in HALF for a in n.attribute) for n in g.node)


def widen(proto: onnx.ModelProto, initializers: dict[str, np.ndarray]) -> None:
    """Rewrite ``proto`` and ``initializers`` (in place) from float16 to float32."""
    for name, arr in initializers.items():
        if arr.dtype == np.float16:
            initializers[name] = arr.astype(np.float32)
    for g in _graphs(proto.graph):
        for t in g.initializer:
            _widen_tensor(t)
        for v in (*g.input, *g.output, *g.value_info):
            if v.type.tensor_type.elem_type in HALF:
                v.type.tensor_type.elem_type = TensorProto.FLOAT
        for node in g.node:
            for attr in node.attribute:
                if attr.name in ("to", "dtype") and attr.type == onnx.AttributeProto.INT and attr.i in HALF:
                    attr.i = TensorProto.FLOAT
                if attr.HasField("t"):
                    _widen_tensor(attr.t)
                for t in attr.tensors:
                    _widen_tensor(t)
