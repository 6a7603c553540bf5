"""Shapes only a run can tell: onnxruntime on a dummy batch.

Shape inference leaves a dim open where an exporter computes it at run time (a head size
``d // heads`` from ``x.shape``; a Pad's or Resize's sizes built from ``Shape`` ops; a channel
shuffle's reshape): attention's scale is then built from that ``Shape``, and neuron paths
and receptive fields lack the layers' sizes. One run on zeros at a given batch size gives
every such ``Shape`` output exactly, and runs at two batch sizes every open dim of a
tensor (a dim that differs between them is the batch's).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from ..graph.loader import LoadedModel


def _session(model: LoadedModel, outputs: list[tuple[str, int]]) -> ort.InferenceSession:
    """The model with its full weights and ``(name, element type)`` as its only outputs."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    g = proto.graph
    for i, t in enumerate(g.initializer):
        if t.name in model.stubbed:
            g.initializer[i].CopyFrom(numpy_helper.from_array(np.asarray(model.initializers[t.name]), t.name))
    del g.output[:]
    g.output.extend(helper.make_tensor_value_info(o, elem, None) for o, elem in outputs)
    del g.value_info[:]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _zeros(model: LoadedModel, x: str, input_shape: tuple, batch: int) -> np.ndarray:
    vi = next(v for v in model.proto.graph.input if v.name == x)
    return np.zeros((batch,) + tuple(input_shape[1:]), helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))


def open_shapes(model: LoadedModel, x: str, input_shape: tuple, tensors: dict[str, int]) -> dict[str, tuple]:
    """Shapes of ``tensors`` (name → element type) from runs at batch 1 and 2 (at its own batch
    size once, for a model exported for one): a dim equal in both is static, one that differs
    is the batch's (None). Empty where the input's size is open or the model fails on zeros."""
    if not tensors or not input_shape or any(d is None for d in input_shape[1:]):
        return {}
    names = list(tensors)
    try:
        sess = _session(model, [(n, tensors[n]) for n in names])
        if input_shape[0] is None:
            one, two = (sess.run(names, {x: _zeros(model, x, input_shape, b)}) for b in (1, 2))
        else:  # a fixed batch: one run says every dim
            one = two = sess.run(names, {x: _zeros(model, x, input_shape, input_shape[0])})
    except Exception:  # the model fails on zeros, or an output is not what it was thought
        return {}
    return {n: tuple(d if d == e else None for d, e in zip(np.shape(a), np.shape(b)))
            for n, a, b in zip(names, one, two) if np.ndim(a) == np.ndim(b)}


def shape_probe(model: LoadedModel, x: str, input_shape: tuple):
    """``probe(outputs, batch)`` → {output: value} for ``graph.constants.fold_shape_arithmetic``;
    None when the input's non-batch dims are not all known (no dummy input can be made)."""
    if not input_shape or any(d is None for d in input_shape[1:]):
        return None

    def probe(outputs: list[str], batch: int) -> dict[str, np.ndarray]:
        try:
            sess = _session(model, [(o, onnx.TensorProto.INT64) for o in outputs])
            values = sess.run(outputs, {x: _zeros(model, x, input_shape, batch)})
        except Exception:  # the model fails on zeros or the outputs are pruned: nothing is learnt
            return {}
        return dict(zip(outputs, (np.asarray(v) for v in values)))

    return probe
