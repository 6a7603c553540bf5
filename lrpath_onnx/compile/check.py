"""``lrpath compile --check``: the compiled file in a plain onnxruntime session against the analyzer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from .model import RELEVANCE, TARGET


def run_compiled(path: Path, input_name: str, x: np.ndarray, target=None, outputs=(RELEVANCE,)) -> list[np.ndarray]:
    """The compiled model's ``outputs`` for the batch ``x`` (``target``: class per sample, or None)."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {input_name: np.ascontiguousarray(x, np.float32)}
    if target is not None:
        feed[TARGET] = np.broadcast_to(np.asarray(target, np.int64), (x.shape[0],)).copy()
    return sess.run(list(outputs), feed)


def relative_l2(a: np.ndarray, b: np.ndarray) -> float:
    """‖a − b‖ / ‖b‖ (0 when both are 0)."""
    den = float(np.linalg.norm(b))
    num = float(np.linalg.norm(np.asarray(a, np.float64) - b))
    return num / den if den else num


def compare(an, path: Path, x: np.ndarray, target=None, keep=()) -> list[str]:
    """Per sample and output: relative L2 of the compiled file's relevance against explain
    with exact products (what compiling can change) and against explain as it runs by
    default (Winograd products, whose own rounding is about 1e-5 on some models)."""
    from ..backend import CpuBackend

    kept = tuple(an.graph.find(k).name for k in keep)
    names = [RELEVANCE] + [f"{RELEVANCE}/{k}" for k in kept]
    got = run_compiled(path, an.graph.input, x, target, names)
    fast = an.backend
    an.backend = CpuBackend(exact=True)
    try:
        exact = an.explain(x, target=target, keep=kept)
    finally:
        an.backend = fast
    default = an.explain(x, target=target, keep=kept)
    lines, worst = [], [0.0, 0.0]
    for i, name in enumerate(names):
        want = [e.relevance if i == 0 else e.kept[kept[i - 1]] for e in (exact, default)]
        for n in range(x.shape[0]):
            errs = [relative_l2(got[i][n], w[n]) for w in want]
            worst = [max(a, b) for a, b in zip(worst, errs)]
            lines.append(f"{name} sample {n} (class {exact.targets[n]}): relative L2 {errs[0]:.2e} "
                         f"(explain with exact products), {errs[1]:.2e} (explain)")
    lines.append(f"largest relative L2 {worst[0]:.2e} against explain with exact products, {worst[1]:.2e} against explain")
    return lines
