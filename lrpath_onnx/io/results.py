"""What ``lrpath explain`` writes for one input: relevance, pictures, and explanation.json."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..api import Analyzer, Explanation
from ..errors import InputError
from ..viz.heatmap import heatmap_rgb, overlay_rgb, relevance_map, save_png, with_scale_bar
from .inputs import Sample
from .outputs import make_folder, write_json, write_npy
from .schema import model_json, stamp, target_json


def read_labels(path: Path | None, num_classes: int | None) -> list[str] | None:
    """One class name per line; the file must name every class the model has."""
    if path is None:
        return None
    try:
        lines = [l.strip() for l in Path(path).read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read labels file {path}: {exc}") from None
    while lines and not lines[-1]:
        lines.pop()
    if num_classes is not None and len(lines) < num_classes:
        raise InputError(f"labels file {path} has {len(lines)} lines, the model has {num_classes} classes")
    return lines


def top_outputs(an: Analyzer, logits: np.ndarray, labels: Sequence[str] | None, k: int = 5) -> list[dict]:
    """The best ``k`` classes (``top_k``), or for a feature-map model (a backbone) its ``k``
    strongest output neurons: ``{"index", "neuron": "layer:channel@(y, x)", "value"}``."""
    z = np.asarray(logits, np.float64)
    if z.ndim == 1:
        return top_k(z, labels, k)
    flat = z.reshape(-1)
    order = np.argsort(-flat, kind="stable")[:k]
    return [{"index": int(i), "neuron": str(an.output_neuron(int(i)) or i), "value": float(flat[i])} for i in order]


def top_k(logits: np.ndarray, labels: Sequence[str] | None, k: int = 5) -> list[dict]:
    """Best ``k`` classes with logit, softmax probability and label."""
    z = np.asarray(logits, np.float64).reshape(-1)
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-z, kind="stable")[:k]
    return [{"index": int(i), "label": labels[i] if labels else None, "logit": float(z[i]),
             "probability": float(p[i])} for i in order]


def record(an: Analyzer, exp: Explanation, i: int, sample: Sample, labels, batch_size: int,
           model_name: str | None = None) -> dict:
    """The explanation.json content for sample ``i`` of a batch."""
    target = exp.targets[i]
    logits = exp.logits[i]
    is_class = isinstance(target, (int, np.integer))
    cons = exp.conservation(i)
    outside = None if exp.bounds_violation is None else float(exp.bounds_violation[i])
    low, high = np.asarray(an.low).reshape(-1), np.asarray(an.high).reshape(-1)
    return stamp("explanation", {
        **model_json(an.model_path, model_name),
        "input": str(sample.source),
        "target": target_json(target, labels, an.output_neuron(target) if is_class else None),
        "logit": float(np.asarray(logits).reshape(-1)[target]) if is_class else None,
        "top5": top_outputs(an, logits, labels),
        "model_output": an.graph.model_output,
        "preset": an.plan().preset,
        "preset_applied": an.plan().applied,
        "preset_reason": an.plan().reason,
        "rule_overrides": list(an.plan().overrides),
        "rules": an.plan().to_json(),
        "conservation": cons,
        "warnings": an.warnings(exp, i),
        "zbox_bounds": {"low": low.tolist(), "high": high.tolist(), "share_of_input_outside": outside},
        "provider": exp.provider,
        "device": exp.device,
        "batch_size": batch_size,
        "timings_s": {k: v / max(len(exp.targets), 1) for k, v in exp.timings_s.items()},
        "timings_note": "per input: the batch's time divided by its size",
    })


def write_sample(folder: Path, sample: Sample, relevance: np.ndarray, rec: dict, layout: str) -> list[Path]:
    """Write relevance.npy, heatmap.png, overlay.png and explanation.json into ``folder``."""
    make_folder(folder)
    rel = np.asarray(relevance, np.float32)
    m = relevance_map(rel, layout) if rel.ndim == 3 else np.asarray(rel, np.float64).reshape(1, -1)
    scale = 224 if rel.ndim == 3 and min(m.shape) < 224 else None
    paths = [write_npy(folder / "relevance.npy", rel)]
    picture = heatmap_rgb(m)
    if rel.ndim == 3:
        picture = with_scale_bar(picture, m)
    save_png(folder / "heatmap.png", picture, scale_to=None if rel.ndim == 3 else scale)
    paths.append(folder / "heatmap.png")
    if rel.ndim == 3:
        save_png(folder / "overlay.png", overlay_rgb(sample.display, m), scale_to=scale)
        paths.append(folder / "overlay.png")
    paths.append(write_json(folder / "explanation.json", rec))
    return paths
