"""Shapes only a run can tell: onnxruntime on a dummy batch, for shape arithmetic to fold.

Shape inference leaves a dim open where an exporter computes it at run time (a head size
``d // heads`` from ``x.shape``); attention's scale is then built from that ``Shape``. One
run on zeros at a given batch size gives every such ``Shape`` output exactly.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from ..graph.loader import LoadedModel


def shape_probe(model: LoadedModel, x: str, input_shape: tuple):
    """``probe(outputs, batch)`` → {output: value} for ``graph.constants.fold_shape_arithmetic``;
    None when the input's non-batch dims are not all known (no dummy input can be made)."""
    if not input_shape or any(d is None for d in input_shape[1:]):
        return None
    vi = next(v for v in model.proto.graph.input if v.name == x)
    dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)

    def probe(outputs: list[str], batch: int) -> dict[str, np.ndarray]:
        proto = onnx.ModelProto()
        proto.CopyFrom(model.proto)
        g = proto.graph
        for i, t in enumerate(g.initializer):
            if t.name in model.stubbed:
                g.initializer[i].CopyFrom(numpy_helper.from_array(np.asarray(model.initializers[t.name]), t.name))
        del g.output[:]
        g.output.extend(helper.make_tensor_value_info(o, onnx.TensorProto.INT64, None) for o in outputs)
        del g.value_info[:]
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            values = sess.run(outputs, {x: np.zeros((batch,) + tuple(input_shape[1:]), dtype)})
        except Exception:  # the model fails on zeros or the outputs are pruned: nothing is learnt
            return {}
        return dict(zip(outputs, (np.asarray(v) for v in values)))

    return probe
