"""How few paths suffice: measures of what the K best paths preserve, for K = 1…K_max.

Per input and K, with P_K the neurons on the K best paths:

- ``share``: the mean over graph layers of the share of the layer's relevance on P_K
  (``conditional.layer_share``);
- ``heatmap_mse`` / ``heatmap_smape`` / ``heatmap_spearman``: the layer-wise K-path heatmap
  (``conditional``) against the full heatmap, both summed over channels and scaled to unit
  L1; Spearman's rank correlation over the pixels either map covers;
- ``one_layer_output_change``: |f_K − f| / |f| for the explained output f when only P_K is
  kept at one graph layer (``MaskedModel``), each layer in turn, averaged; with softmax MSE
  and SMAPE beside it for class outputs;
- ``all_layers_*``: the same with P_K kept at every graph layer at once (the paper's
  masking), and ``strict_heatmap_*`` for the strict K-path heatmap.

The measures are averaged over the inputs. ``--criterion`` names the one K is chosen by:
the smallest K whose value is within the tolerance of the sweep's best (``choose``). A K
equal to K_max means the measure was still improving. The GetOptimizer threshold sweep (neurons kept where their value exceeds
μ − t·σ) uses the all-layer measures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..api import Analyzer
from ..errors import InputError
from ..viz.curve import draw_curve_png
from ..viz.heatmap import relevance_map
from .conditional import layer_share, neuron_maps
from .heatmaps import inner_masks
from .masking import MaskedModel
from .neurons import SINK, SOURCE, activation_tensor, build, explain_for_graph, graph_layers
from .optimizer import get_optimizer
from .ranking import best_paths
from .scores import choose_k, mse, smape, softmax, spearman, unit_l1

#: --criterion → (per-K measure, whether it is a similarity (error = 1 − it), whether it is a
#: fraction of the full model (tolerance absolute) or not (tolerance relative), what it means)
CRITERIA = {
    "heatmap_rank": ("heatmap_spearman", True, True, "Spearman rank correlation of the layer-wise K-path heatmap "
                     "with the full heatmap"),
    "heatmap_mse": ("heatmap_mse", False, False, "MSE of the unit-L1 layer-wise K-path heatmap against the full one"),
    "heatmap_smape": ("heatmap_smape", False, False, "SMAPE of the unit-L1 layer-wise K-path heatmap against the "
                      "full one"),
    "share": ("share", True, True, "the mean share of each graph layer's relevance on the path neurons"),
    "output_one_layer": ("one_layer_output_change", False, True,
                         "relative change of the explained output with only the path neurons kept at one graph "
                         "layer (each in turn, averaged)"),
    "output_all_layers": ("all_layers_output_change", False, True,
                          "relative change of the explained output with only the path neurons kept at every graph "
                          "layer"),
}
DEFAULT_CRITERION = "heatmap_rank"


def _output_measures(prefix: str, out: np.ndarray, orig: np.ndarray, target: int, classes: bool) -> dict:
    f, f_k = float(orig.reshape(-1)[target]), float(out.reshape(-1)[target])
    m = {f"{prefix}_output_change": abs(f_k - f) / abs(f) if f else abs(f_k)}
    if classes:
        m.update({f"{prefix}_prob_mse": mse(softmax(out), softmax(orig)),
                  f"{prefix}_prob_smape": smape(softmax(out), softmax(orig)),
                  f"{prefix}_logit_mse": mse(out, orig), f"{prefix}_logit_smape": smape(out, orig),
                  f"{prefix}_same_class": float(out.argmax() == orig.argmax())})
    return m


class InputSweep:
    """Everything the sweep needs of one input: its explanation, neuron graph, K best paths,
    the single-neuron maps of every path neuron of every inner graph layer."""

    def __init__(self, an: Analyzer, mm: MaskedModel, x: np.ndarray, k_max: int, per_layer: int, layout: str,
                 target=None, score: str = "auto"):
        self.an, self.mm, self.layout = an, mm, layout
        self.exp = explain_for_graph(an, x, target)
        self.ng = build(an, self.exp, 0, per_layer, "top")
        ranked, self.score = best_paths(self.ng.graph, SOURCE, SINK, k_max, score)
        self.best = [p.nodes for p in ranked]
        self.target = int(self.exp.targets[0])
        self.orig = np.asarray(self.exp.logits[0], np.float64)
        self.classes = self.orig.ndim == 1
        self.full_map = unit_l1(relevance_map(self.exp.relevance[0], layout))
        self.total = float(self.exp.relevance[0].sum(dtype=np.float64))
        self.inner = list(inner_masks(self.exp, self.ng.path_masks(self.best)))
        self.maskable = set(mm.shapes)
        self.maps: dict[str, dict[int, np.ndarray]] = {}
        for name in self.inner:
            channels = sorted({n[1] for p in self.best for n in p if isinstance(n, tuple) and n[0] == name})
            self.maps[name] = dict(zip(channels, neuron_maps(an, self.exp, name, channels)))
        self._one_layer: dict[tuple, dict] = {}

    def measures(self, k: int) -> dict[str, float]:
        masks = self.ng.path_masks(self.best[:k])
        passed = [name for name in self.inner if masks[name].any()]  # fewer paths may go round a layer
        per_layer = [np.sum([self.maps[name][int(c)] for c in np.nonzero(masks[name])[0]], axis=0)
                     for name in passed]
        summary = np.mean(per_layer, axis=0) if passed else self.exp.relevance[0]  # as in ``layerwise``
        m = unit_l1(relevance_map(summary, self.layout))
        # a layer fewer paths go round holds none of its relevance on them: the share grows with K
        shares = [layer_share(self.exp.kept[n][0], masks[n]) or 0.0 for n in self.inner]
        out = {"share": float(np.mean(shares)) if shares else 1.0,
               "input_share": float(summary.sum(dtype=np.float64) / self.total) if self.total else 0.0,
               "heatmap_mse": mse(m, self.full_map), "heatmap_smape": smape(m, self.full_map),
               "heatmap_spearman": spearman(m, self.full_map, support=True)}
        rows = [self._one_layer_measures(name, masks[name]) for name in passed if name in self.maskable]
        if rows:
            out.update({key: float(np.mean([r[key] for r in rows])) for key in rows[0]})
        all_masks = {n: v for n, v in masks.items() if n in self.maskable}
        logits = self.mm.run(self.exp.forward[self.an.graph.input], all_masks)[0].astype(np.float64)
        out.update(_output_measures("all_layers", logits, self.orig, self.target, self.classes))
        strict = unit_l1(relevance_map(self.an.reexplain(self.exp, masks).relevance[0], self.layout))
        out.update(strict_heatmap_mse=mse(strict, self.full_map), strict_heatmap_smape=smape(strict, self.full_map))
        return out

    def _one_layer_measures(self, name: str, mask: np.ndarray) -> dict:
        key = (name, tuple(np.nonzero(mask)[0]))
        if key not in self._one_layer:  # paths share neurons: many K give a layer the same set
            logits = self.mm.run(self.exp.forward[self.an.graph.input], {name: mask})[0].astype(np.float64)
            self._one_layer[key] = _output_measures("one_layer", logits, self.orig, self.target, self.classes)
        return self._one_layer[key]

    def threshold_measures(self, layers, t: float) -> tuple[dict, int]:
        masks, count = {}, 0
        for layer in layers[:-1]:
            act = self.exp.forward[activation_tensor(self.an, layer)][:1]
            keep, _ = get_optimizer(act, self.exp.kept[layer.name][:1], 0, t)
            masks[layer.name] = keep.astype(np.float32)
            count += int(keep.sum())
        logits = self.mm.run(self.exp.forward[self.an.graph.input], masks)[0].astype(np.float64)
        out = _output_measures("all_layers", logits, self.orig, self.target, self.classes)
        strict = unit_l1(relevance_map(self.an.reexplain(self.exp, masks).relevance[0], self.layout))
        out.update(strict_heatmap_mse=mse(strict, self.full_map), strict_heatmap_smape=smape(strict, self.full_map))
        return out, count


def _mean(rows: list[list[dict]]) -> dict[str, list[float]]:
    keys = [k for k in rows[0][0] if all(k in r for per in rows for r in per)]
    return {k: [float(np.mean([r[k] for r in per])) for per in rows] for k in keys}


def criterion_errors(per_k: dict, criterion: str) -> np.ndarray:
    key, similarity, _, _ = CRITERIA[criterion]
    if key not in per_k:
        raise InputError(f"--criterion {criterion}: this model has no '{key}' measure")
    v = np.asarray(per_k[key], np.float64)
    return 1.0 - v if similarity else v


def choose(ks: list[int], per_k: dict, criterion: str, tolerance: float) -> int | None:
    """The smallest K within ``tolerance`` of the sweep's best on ``criterion``: in the
    measure's own units for fractions of the full model (shares, rank correlations, output
    changes: 0.05 is five points), relative for MSE and SMAPE (a share of the larger of the
    best error and the sweep's spread)."""
    err = criterion_errors(per_k, criterion)
    return choose_k(ks, err, float(err.min()), tolerance, relative=not CRITERIA[criterion][2])


def sweep(an: Analyzer, xs: list[np.ndarray], k_max: int = 20, per_layer: int = 16,
          thresholds=(-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0), layout: str = "nchw", target=None,
          tolerance: float = 0.05, progress=None, criterion: str = DEFAULT_CRITERION, score: str = "auto") -> dict:
    """The K and threshold sweeps over inputs ``xs`` (each with its batch axis); see module docs."""
    if criterion not in CRITERIA:
        raise InputError(f"unknown --criterion '{criterion}'; choose one of {', '.join(CRITERIA)}")
    mm = MaskedModel(an)
    layers = graph_layers(an)
    per_k: list[list[dict]] = [[] for _ in range(k_max)]
    per_t: list[list[dict]] = [[] for _ in thresholds]
    kept_t: list[list[int]] = [[] for _ in thresholds]
    found, choices = [], []
    for x in xs:
        s = InputSweep(an, mm, x, k_max, per_layer, layout, target, score)
        found.append(len(s.best))
        choices.append(s.score)
        for k in range(1, k_max + 1):
            per_k[k - 1].append(s.measures(min(k, len(s.best))))
        for ti, t in enumerate(thresholds):
            m, count = s.threshold_measures(layers, t)
            per_t[ti].append(m)
            kept_t[ti].append(count)
        if progress is not None:
            progress(1)
    ks = list(range(1, k_max + 1))
    mean_k, mean_t = _mean(per_k), _mean(per_t)
    chosen = choose(ks, mean_k, criterion, tolerance)
    kept = [float(np.mean(c)) for c in kept_t]
    t_err = np.asarray(mean_t["all_layers_output_change"])
    bound = t_err.min() + tolerance
    t_ok = [(n, t) for t, e, n in zip(thresholds, t_err, kept) if e <= bound]
    return {"inputs": len(xs), "k": ks, "per_k": mean_k, "criterion": criterion,
            "path_score": choices[0].score, "path_score_reason": choices[0].reason,
            "criterion_meaning": CRITERIA[criterion][3], "chosen_k": chosen,
            "chosen_k_by": {c: choose(ks, mean_k, c, tolerance) for c in CRITERIA if CRITERIA[c][0] in mean_k},
            "still_improving": chosen == k_max, "paths_found": found,
            "thresholds": list(thresholds), "per_threshold": mean_t,
            "neurons_kept_per_threshold": kept,
            "chosen_threshold": min(t_ok)[1] if t_ok else None, "tolerance": tolerance,
            "choice_rule": "smallest K whose mean value on the criterion is within the tolerance of the sweep's "
                           "best (in the measure's units for fractions of the full model; for MSE and SMAPE as a "
                           "share of the larger of the best error and the sweep's spread); the threshold keeping "
                           "fewest neurons whose all-layer output change is within the tolerance of the best"}


def draw_sweep(out, result: dict, per_layer: int) -> None:
    """optimize_k.png (what K paths preserve against K, the chosen K marked) and optimize_threshold.png."""
    pk = result["per_k"]
    series = {"share of each layer's relevance": pk["share"],
              "heatmap rank correlation": pk["heatmap_spearman"],
              "output kept, one layer masked": [max(0.0, 1 - v) for v in pk["one_layer_output_change"]]
              if "one_layer_output_change" in pk else None,
              "output kept, all layers masked": [max(0.0, 1 - v) for v in pk["all_layers_output_change"]]}
    chosen = result["chosen_k"]
    draw_curve_png(Path(out) / "optimize_k.png", result["k"], {k: v for k, v in series.items() if v is not None},
                   f"What the K best paths preserve ({result['inputs']} input(s), {per_layer} neurons per layer)",
                   "K (best paths kept)", "fraction (1 = as the full model)", mark_x=chosen,
                   mark_label=f"chosen K = {chosen} by {result['criterion']}" if chosen else None)
    pt = result["per_threshold"]
    draw_curve_png(Path(out) / "optimize_threshold.png", result["thresholds"],
                   {"output kept, all layers masked": [max(0.0, 1 - v) for v in pt["all_layers_output_change"]],
                    "strict heatmap SMAPE %": pt["strict_heatmap_smape"]},
                   "GetOptimizer: keep neurons above mean − t·std", "threshold t", "fraction (1 = as the full model)",
                   mark_x=result["chosen_threshold"], secondary={"strict heatmap SMAPE %"}, ylabel2="SMAPE %")
