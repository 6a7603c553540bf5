"""Evaluate explanation methods by region perturbation over a set of inputs.

For every image: one map per method; per method the MoRF and LeRF orders of its patches;
every perturbed input of every step goes to a plain onnxruntime session (the model as a
user would run it, default settings) in large batches; the explained logit after each step,
normalised as ``1 − (f(x_0) − f(x_k)) / |f(x_0)|``, makes the curves. Per method: the mean
curves, AOPC of each (the mean drop), ABPC (the area between LeRF and MoRF, Blücher et al.
2024; higher is better), each with a bootstrap interval over the images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from ..diagnose import WARN_RANGE
from ..errors import InputError
from ..io.schema import target_json
from ..viz.heatmap import relevance_map
from . import perturb
from .methods import MethodContext, attribute_conserved, from_chw, to_chw


@dataclass
class Settings:
    """How regions are removed and statistics taken."""

    patch: int
    steps: int = 50
    baseline: str = "blur"
    seed: int = 0
    batch: int = 32
    bootstrap_rounds: int = 1000

    def to_json(self) -> dict:
        return {"patch": self.patch, "steps": self.steps, "baseline": self.baseline, "seed": self.seed,
                "forward_batch": self.batch, "bootstrap_rounds": self.bootstrap_rounds}


def default_patch(height: int, width: int) -> int:
    """8 px for ImageNet-sized inputs (a 28 × 28 grid on 224²), 4 px for small ones (MNIST: 7 × 7)."""
    return 8 if min(height, width) >= 64 else 4


class BatchedForward:
    """The explained logits of many inputs through one plain onnxruntime session, in batches,
    timing onnxruntime itself apart from the work around it."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], batch: int) -> None:
        self.run, self.batch = run, batch
        self.ort_seconds = 0.0
        self.inputs = 0

    def __call__(self, inputs: Iterator[np.ndarray], target: int) -> np.ndarray:
        out, buf = [], []
        for x in inputs:
            buf.append(x)
            if len(buf) == self.batch:
                out.append(self._flush(buf, target))
                buf = []
        if buf:
            out.append(self._flush(buf, target))
        return np.concatenate(out) if out else np.zeros(0)

    def _flush(self, buf: list, target: int) -> np.ndarray:
        x = np.stack(buf)
        t0 = time.perf_counter()
        logits = self.run(x)
        self.ort_seconds += time.perf_counter() - t0
        self.inputs += len(buf)
        return np.asarray(logits, np.float64).reshape(len(buf), -1)[:, target]


@dataclass
class MethodScores:
    """Per-image curves of one method."""

    morf: list[np.ndarray] = field(default_factory=list)
    lerf: list[np.ndarray] = field(default_factory=list)
    seconds: float = 0.0
    conservation: list[float | None] | None = None  # LRP methods: per image, input relevance / logit


def curves_for(x: np.ndarray, heat: np.ndarray, regions: perturb.Regions, base: np.ndarray,
               counts: np.ndarray, forward: BatchedForward, target: int, f0: float, layout: str) -> dict:
    """MoRF and LeRF curves of one image (``x`` in (C, H, W)) under one heatmap."""
    scores = regions.scores(heat)
    out = {}
    for how in ("morf", "lerf"):
        steps = perturb.perturbed(x, base, regions, perturb.order(scores, how), counts)
        f = forward((from_chw(s, layout) for s in steps), target)
        out[how] = np.concatenate([[1.0], 1.0 - (f0 - f) / abs(f0)]) if f0 != 0 else np.ones(len(counts))
    return out


def evaluate(samples_batches: Iterator[list], methods: list[str], ctx: MethodContext, settings: Settings,
             forward_run: Callable[[np.ndarray], np.ndarray], targets=None, on_batch=None, labels=None) -> dict:
    """Curves and scores of every method over every sample (``samples_batches`` yields lists of
    samples with ``.tensor`` in the model layout and ``.name``)."""
    scores = {m: MethodScores() for m in methods}
    forward = BatchedForward(forward_run, settings.batch)
    images, warnings = [], []
    t_start = time.perf_counter()
    perturb_seconds = 0.0
    rng = np.random.default_rng(settings.seed)
    for batch in samples_batches:
        x = np.stack([s.tensor for s in batch])
        logits = np.asarray(forward_run(x), np.float64).reshape(len(batch), -1)
        tg = [int(targets) if isinstance(targets, (int, np.integer)) else int(l.argmax()) for l in logits]
        maps, ratios = {}, {}
        for m in methods:
            t0 = time.perf_counter()
            maps[m], ratios[m] = attribute_conserved(m, ctx, x, tg)
            scores[m].seconds += time.perf_counter() - t0
            if ratios[m] is not None:
                scores[m].conservation = (scores[m].conservation or []) + ratios[m]
        t0 = time.perf_counter()
        for i, s in enumerate(batch):
            chw = to_chw(s.tensor, ctx.layout)
            regions = perturb.Regions.patches(chw.shape[1], chw.shape[2], settings.patch)
            counts = perturb.step_counts(regions.count, settings.steps)
            base = perturb.baseline(chw, settings.baseline, settings.patch, rng)
            f0 = float(logits[i, tg[i]])
            rec = {"name": s.name, "source": str(s.source), "target": target_json(int(tg[i]), labels), "logit": f0, "methods": {}}
            for m in methods:
                heat = relevance_map(maps[m][i], ctx.layout)
                c = curves_for(chw, heat, regions, base, counts, forward, tg[i], f0, ctx.layout)
                scores[m].morf.append(c["morf"])
                scores[m].lerf.append(c["lerf"])
                mo, le = perturb.aopc(c["morf"]), perturb.aopc(c["lerf"])
                rec["methods"][m] = {"morf_aopc": mo, "lerf_aopc": le, "abpc": mo - le,
                                     "conservation_ratio": ratios[m][i] if ratios[m] is not None else None}
            warnings.extend(near_zero_logit(rec))
            images.append(rec)
        perturb_seconds += time.perf_counter() - t0
        if on_batch is not None:
            on_batch(len(batch))
    if not images:
        raise InputError("no inputs to evaluate")
    total = time.perf_counter() - t_start
    boot = np.random.default_rng(settings.seed + 1)
    results = []
    for m in methods:
        mo = np.array([perturb.aopc(c) for c in scores[m].morf])
        le = np.array([perturb.aopc(c) for c in scores[m].lerf])
        results.append({
            "name": m,
            "morf_aopc": float(mo.mean()), "morf_aopc_ci": perturb.bootstrap(mo, boot, settings.bootstrap_rounds),
            "lerf_aopc": float(le.mean()), "lerf_aopc_ci": perturb.bootstrap(le, boot, settings.bootstrap_rounds),
            "abpc": float((mo - le).mean()), "abpc_ci": perturb.bootstrap(mo - le, boot, settings.bootstrap_rounds),
            "morf_curve": _mean_curve(scores[m].morf), "lerf_curve": _mean_curve(scores[m].lerf),
            "explain_seconds_per_image": scores[m].seconds / len(images),
            "conservation_ratio_median": _median(scores[m].conservation),
        })
        warnings.extend(not_conserving(m, scores[m].conservation))
    results.sort(key=lambda r: -r["abpc"])
    per_input = forward.ort_seconds / max(forward.inputs, 1)
    return {
        "methods": results,
        "images": images,
        "warnings": warnings,
        "settings": settings.to_json(),
        "timings_s": {
            "total": total, "perturbation": perturb_seconds, "onnxruntime": forward.ort_seconds,
            "onnxruntime_per_input": per_input,
        },
        "throughput": {
            "images_per_second": len(images) / total, "perturbed_inputs": forward.inputs,
            "perturbation_stage_over_onnxruntime": perturb_seconds / forward.ort_seconds if forward.ort_seconds else None,
        },
    }


#: an image's AOPC beyond this (a logit falling to minus itself drops by 2) means its explained
#: logit is too close to 0 for curves divided by it
AOPC_WARN = 2.0


def near_zero_logit(rec: dict) -> list[str]:
    """A warning for an image whose explained logit is too small for curves divided by it: they
    swamp the means over images (one such image decided a method ranking), or, at exactly 0,
    are flat and say nothing."""
    if rec["logit"] == 0:
        return [f"{rec['name']}: the explained logit is exactly 0, so its curves are flat and score nothing: "
                "explain a class it scores (--target) or leave it out"]
    worst = max((abs(v[k]) for v in rec["methods"].values() for k in ("morf_aopc", "lerf_aopc")), default=0.0)
    if worst <= AOPC_WARN:
        return []
    return [f"{rec['name']}: the explained logit {rec['logit']:.3g} is small against how far perturbing moves it "
            f"(curves divided by it reach an AOPC of {worst:.3g}), so it dominates the means: explain a class it "
            "clearly scores (--target) or leave it out"]


def not_conserving(method: str, ratios: list[float | None] | None) -> list[str]:
    """A warning for an LRP method whose heatmaps hold far more or less than the explained
    logit: region perturbation scores the order of the patches only, so such a method can
    rank well while its amounts mean little (biases and ε took the rest). The range is
    explain's (``diagnose.WARN_RANGE``)."""
    known = [r for r in ratios or [] if r is not None]
    if not known:
        return []
    median = float(np.median(known))
    if WARN_RANGE[0] <= median <= WARN_RANGE[1]:
        return []
    where = ("the rest went to biases and stabilisers" if 0 <= median < WARN_RANGE[0] else
             "more than the logit: relevance was created on the way" if median > 0 else
             "the opposite sign to the logit")
    return [f"{method}: its heatmaps hold a median {median:.3g} of the explained logit (conservation ratio, "
            f"{min(known):.3g} to {max(known):.3g} over {len(known)} image(s)); {where}, so its scores rank the "
            "order of its patches, not the amounts: the `conserving` preset keeps the ratio near 1"]


def _median(values: list[float | None] | None) -> float | None:
    known = [v for v in values or [] if v is not None]
    return float(np.median(known)) if known else None


def _mean_curve(curves: list[np.ndarray]) -> list[float]:
    """The mean over images (curves of images with fewer patches are stretched to the longest)."""
    n = max(len(c) for c in curves)
    grid = np.linspace(0, 1, n)
    return np.mean([np.interp(grid, np.linspace(0, 1, len(c)), c) for c in curves], axis=0).tolist()
