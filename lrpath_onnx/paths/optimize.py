"""How few paths (or which GetOptimizer threshold) suffice: MSE and SMAPE sweeps.

For K = 1…K_max, the neurons on the K best paths are kept at every graph layer and two
things are measured against the full model: (a) the K-path relevance heatmap against the
full heatmap, both summed over channels and normalised to unit L1; (b) the model's output
with only those neurons (``MaskedModel``) against the original output, as logits and as
softmax probabilities. The same is done for a grid of GetOptimizer thresholds t (neurons
kept where their value exceeds μ − t·σ). Errors are averaged over the inputs; the chosen K
is the smallest whose mean softmax MSE is within the tolerance (``scores.choose_k``).
"""

from __future__ import annotations

import numpy as np

from pathlib import Path

from ..api import Analyzer
from ..viz.curve import draw_curve_png
from ..viz.heatmap import relevance_map
from .kbest import k_best_paths
from .masking import MaskedModel
from .neurons import SINK, SOURCE, activation_tensor, build, explain_for_graph, graph_layers
from .optimizer import get_optimizer
from .scores import choose_k, mse, smape, softmax, unit_l1

METRICS = ("heatmap_mse", "heatmap_smape", "logit_mse", "logit_smape", "prob_mse", "prob_smape", "same_class")


def _measure(an: Analyzer, mm: MaskedModel, exp, masks, full_map, layout: str) -> dict[str, float]:
    rel = an.reexplain(exp, masks).relevance[0]
    m = unit_l1(relevance_map(rel, layout))
    out = mm.run(exp.forward[an.graph.input], masks)[0].astype(np.float64)
    orig = np.asarray(exp.logits[0], np.float64)
    return {"heatmap_mse": mse(m, full_map), "heatmap_smape": smape(m, full_map),
            "logit_mse": mse(out, orig), "logit_smape": smape(out, orig),
            "prob_mse": mse(softmax(out), softmax(orig)), "prob_smape": smape(softmax(out), softmax(orig)),
            "same_class": float(out.argmax() == orig.argmax())}


def sweep(an: Analyzer, xs: list[np.ndarray], k_max: int = 20, per_layer: int = 16,
          thresholds=(-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0), layout: str = "nchw", target=None,
          tolerance: float = 0.05, progress=None) -> dict:
    """The K and threshold sweeps over inputs ``xs`` (each with its batch axis); see module docs."""
    mm = MaskedModel(an)
    layers = graph_layers(an)
    per_k: list[list[dict]] = [[] for _ in range(k_max)]
    per_t: list[list[dict]] = [[] for _ in thresholds]
    kept_t: list[list[int]] = [[] for _ in thresholds]
    for x in xs:
        exp = explain_for_graph(an, x, target)
        ng = build(an, exp, 0, per_layer, "top")
        full_map = unit_l1(relevance_map(exp.relevance[0], layout))
        best = k_best_paths(ng.graph, SOURCE, SINK, k_max)
        for k in range(1, k_max + 1):
            paths = [p for _, p in best[:k]]
            per_k[k - 1].append(_measure(an, mm, exp, ng.path_masks(paths), full_map, layout))
        for ti, t in enumerate(thresholds):
            masks, count = {}, 0
            for layer in layers[:-1]:
                act = exp.forward[activation_tensor(an, layer)][:1]
                keep, _ = get_optimizer(act, exp.kept[layer.name][:1], 0, t)
                masks[layer.name] = keep.astype(np.float32)
                count += int(keep.sum())
            per_t[ti].append(_measure(an, mm, exp, masks, full_map, layout))
            kept_t[ti].append(count)
        if progress is not None:
            progress(1)
    ks = list(range(1, k_max + 1))
    mean_k = {m: [float(np.mean([r[m] for r in rows])) for rows in per_k] for m in METRICS}
    mean_t = {m: [float(np.mean([r[m] for r in rows])) for rows in per_t] for m in METRICS}
    chosen = choose_k(ks, np.asarray(mean_k["prob_mse"]), 0.0, tolerance)
    kept = [float(np.mean(c)) for c in kept_t]
    t_ok = [(n, t) for t, e, n in zip(thresholds, mean_t["prob_mse"], kept)
            if e <= tolerance * max(max(mean_t["prob_mse"]), 1e-12)]
    return {"inputs": len(xs), "k": ks, "per_k": mean_k, "chosen_k": chosen,
            "thresholds": list(thresholds), "per_threshold": mean_t,
            "neurons_kept_per_threshold": kept,
            "chosen_threshold": min(t_ok)[1] if t_ok else None, "tolerance": tolerance,
            "choice_rule": "smallest K, and the threshold keeping fewest neurons, whose mean softmax MSE "
                           "against the full model is within tolerance × the largest error of the sweep"}


def draw_sweep(out, result: dict, per_layer: int) -> None:
    """optimize_k.png (errors against K, the chosen K marked) and optimize_threshold.png."""
    pk = result["per_k"]
    draw_curve_png(Path(out) / "optimize_k.png", result["k"],
                   {"output MSE (softmax)": pk["prob_mse"], "heatmap MSE ×1e4": [v * 1e4 for v in pk["heatmap_mse"]],
                    "output SMAPE % (softmax)": pk["prob_smape"]},
                   f"How many paths suffice ({result['inputs']} input(s), {per_layer} neurons per layer)",
                   "K (best paths kept)", "MSE", mark_x=result["chosen_k"], secondary={"output SMAPE % (softmax)"},
                   ylabel2="SMAPE %", mark_label=f"chosen K = {result['chosen_k']}")
    pt = result["per_threshold"]
    draw_curve_png(Path(out) / "optimize_threshold.png", result["thresholds"],
                   {"output MSE (softmax)": pt["prob_mse"], "output SMAPE % (softmax)": pt["prob_smape"]},
                   "GetOptimizer: keep neurons above mean − t·std", "threshold t", "MSE",
                   mark_x=result["chosen_threshold"], secondary={"output SMAPE % (softmax)"}, ylabel2="SMAPE %")
