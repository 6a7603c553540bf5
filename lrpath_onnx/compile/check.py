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
    """One line per sample and kept layer: relative L2 and largest difference against explain."""
    names = [RELEVANCE] + [f"{RELEVANCE}/{an.graph.find(k).name}" for k in keep]
    got = run_compiled(path, an.graph.input, x, target, names)
    exp = an.explain(x, target=target, keep=tuple(an.graph.find(k).name for k in keep))
    want = [exp.relevance] + [exp.kept[an.graph.find(k).name] for k in keep]
    lines, worst = [], 0.0
    for name, g, w in zip(names, got, want):
        for i in range(x.shape[0]):
            rl2 = relative_l2(g[i], w[i])
            top = float(np.abs(w[i]).max()) or 1.0
            worst = max(worst, rl2)
            lines.append(f"{name} sample {i} (class {exp.targets[i]}): relative L2 {rl2:.2e}, "
                         f"largest difference {float(np.abs(g[i] - w[i]).max()) / top:.2e} of the largest value")
    lines.append(f"largest relative L2 {worst:.2e}")
    return lines
