"""``lrpath compile --check``: the compiled file in a plain onnxruntime session against the analyzer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from .model import RELEVANCE, TARGET


def run_compiled(path: Path, input_name: str, x: np.ndarray, target=None, outputs=(RELEVANCE,),
                 tensors: dict[str, np.dtype] | None = None) -> list[np.ndarray]:
    """The compiled model's ``outputs`` for the batch ``x`` (``target``: class per sample, or
    None), then the values of its inner ``tensors`` (name → dtype) when asked for."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # the target's default value is an initializer that is also an input
    model = str(path)
    extra = [n for n in (tensors or {}) if n not in outputs]
    if extra:
        proto = onnx.load(model)
        kept = {o.name for o in proto.graph.output}
        for name in extra:
            if name not in kept:
                proto.graph.output.append(helper.make_tensor_value_info(
                    name, TensorProto.INT64 if np.dtype(tensors[name]) == np.int64 else TensorProto.FLOAT, None))
        model = proto.SerializeToString()
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    feed = {input_name: np.ascontiguousarray(x, np.float32)}
    if target is not None:
        feed[TARGET] = np.broadcast_to(np.asarray(target, np.int64), (x.shape[0],)).copy()
    return sess.run(list(outputs) + extra, feed)


def relative_l2(a: np.ndarray, b: np.ndarray) -> float:
    """‖a − b‖ / ‖b‖ (0 when both are 0)."""
    den = float(np.linalg.norm(b))
    num = float(np.linalg.norm(np.asarray(a, np.float64) - b))
    return num / den if den else num


def compare(an, path: Path, x: np.ndarray, target=None, keep=()) -> list[str]:
    """Per sample and output, the relative L2 of the compiled file's relevance against the
    analyzer's: its backward pass (exact products) on the compiled file's own forward values
    (what compiling can change), explain with exact products, and explain as it runs by
    default (Winograd products). The first and the second would differ if onnxruntime
    rounded the two graphs' forwards differently (the explanation amplifies that through
    near-zero ε denominators); both sides are built to run the same forward (the file's dense
    weights are not prepacked, the session declares its outputs' shapes)."""
    from ..backend import CpuBackend

    kept = tuple(an.graph.find(k).name for k in keep)
    names = [RELEVANCE] + [f"{RELEVANCE}/{k}" for k in kept]
    fwd = an.forward(x)
    outs = run_compiled(path, an.graph.input, x, target, names, {k: v.dtype for k, v in fwd.items()})
    got, fwd_c = outs[:len(names)], dict(zip([k for k in fwd if k not in names], outs[len(names):]))
    fast = an.backend
    an.backend = CpuBackend(exact=True)
    try:
        _, start, _ = an._start(fwd_c, target, x.shape[0])
        same = an._backward(x, fwd_c, an.graph.output, start, kept)
        exact = an.explain(x, target=target, keep=kept)
    finally:
        an.backend = fast
    default = an.explain(x, target=target, keep=kept)
    labels = ("its own forward", "explain, exact products", "explain")
    lines, worst = [], [0.0, 0.0, 0.0]
    for i, name in enumerate(names):
        for n in range(x.shape[0]):
            errs = [relative_l2(got[i][n], (e.relevance if i == 0 else e.kept[kept[i - 1]])[n])
                    for e in (same, exact, default)]
            worst = [max(a, b) for a, b in zip(worst, errs)]
            lines.append(f"{name} sample {n} (class {exact.targets[n]}): relative L2 "
                         + ", ".join(f"{e:.2e} ({lab})" for e, lab in zip(errs, labels)))
    lines.append("largest relative L2 " + ", ".join(f"{e:.2e} against {lab}" for e, lab in zip(worst, labels)))
    return lines
