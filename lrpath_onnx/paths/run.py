"""``lrpath paths`` for one input: graph, K best paths, path heatmaps, all written to a folder."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..api import Analyzer
from ..io.inputs import Sample
from ..io.outputs import make_folder, write_json
from ..io.schema import model_json, stamp, target_json
from ..viz.graph_draw import draw_graph
from ..viz.heatmap import heatmap_rgb, overlay_rgb, relevance_map, save_png, scale_of, with_scale_bar
from .conditional import layerwise
from .graph_files import MAX_FLOWS, heaviest_flows, write_graph_json, write_graphml
from .heatmaps import activation_heatmap, draw_layer_row, inner_masks, relevance_heatmap
from .neurons import SINK, SOURCE, NeuronGraph, build, explain_for_graph
from .ranking import RankedPath, best_paths


def path_record(path: RankedPath, ng: NeuronGraph) -> dict:
    """A path in paths.json: the sum of its flows, the relevance following it (and its share
    of the target's), its neurons."""
    target = ng.graph.nodes[SINK]["relevance"]
    return {"weight": path.weight, "carried": path.carried,
            "carried_share": path.carried / target if target else None,
            "neurons": [{"layer": n[0], "neuron": n[1], "relevance": ng.graph.nodes[n]["relevance"]}
                        for n in path.nodes if isinstance(n, tuple)]}


def explain_paths(an: Analyzer, sample: Sample, out: Path, k: int = 5, per_layer: int = 16,
                  how: str = "top", threshold: float = 1.0, target=None, layout: str = "nchw",
                  labels: list[str] | None = None, path_scale: str = "full", model_name: str | None = None,
                  path_heatmap: str = "layerwise", score: str = "auto", max_flows: int = MAX_FLOWS,
                  layer_maps: bool = False) -> dict:
    """Everything ``lrpath paths`` writes for one input into ``out``; returns paths.json's content.

    ``path_heatmap``: the relevance-based K-path heatmap is ``layerwise`` (the mean over graph
    layers of what the path neurons of that layer carry, ``conditional``) or ``strict`` (the
    path neurons kept at every layer at once). ``path_scale``: it is drawn on the full
    heatmap's colour scale (``full``: its share of the relevance shows) or on its own (``own``).
    ``score``: how paths are ranked (``ranking.SCORES``). ``max_flows``: graph.json and
    graph.graphml keep every neuron but only this many heaviest flows, and the paths' (0: all).
    ``layer_maps``: also draw each graph layer's map H_l (heatmap_k_paths_layers.png, one
    backward pass per layer: VGG16's 15 cost 2.5 explanations); without, the mean map alone,
    in one pass (paths within 2x an explanation)."""
    t0 = time.perf_counter()
    x = sample.tensor[None]
    exp = explain_for_graph(an, x, target)
    t1 = time.perf_counter()
    ng = build(an, exp, 0, per_layer, how, threshold)
    if labels and isinstance(ng.target, (int, np.integer)) and ng.target < len(labels) and exp.logits.ndim == 2:
        name = labels[ng.target]
        ng.graph.nodes[SINK]["label"] = f"class {ng.target}" + ("" if name == str(ng.target) else f" {name}")
    best, choice = best_paths(ng.graph, SOURCE, SINK, k, score)
    t2 = time.perf_counter()
    masks = ng.path_masks([p.nodes for p in best])
    lw = layerwise(an, exp, inner_masks(exp, masks), per_layer=layer_maps)
    if path_heatmap == "strict":
        rel_k = relevance_heatmap(an, x, target if target is not None else exp.targets[0], masks)
    else:
        rel_k = lw.summary
    hw = sample.display.shape[:2]
    act_k = activation_heatmap(an, exp, ng, masks, hw)
    t3 = time.perf_counter()
    make_folder(out)
    title = (f"{len(best)} best relevance paths ({choice.score}) to {ng.graph.nodes[SINK].get('label', 'target')}, "
             f"{per_layer if how == 'top' else 'GetOptimizer'} neurons per layer")
    routes = [p.nodes for p in best]
    drawn = draw_graph(ng.graph, routes, out / "graph.png", out / "graph.svg", title=title)
    flows = ng.graph.number_of_edges()
    written = heaviest_flows(ng.graph, max_flows, routes)
    write_graphml(written, out / "graph.graphml", flows)
    write_graph_json(written, out / "graph.json", flows)
    full = relevance_map(exp.relevance[0], layout)
    scale = 224 if min(full.shape) < 224 else None
    part = relevance_map(rel_k, layout)
    share = float(rel_k.sum() / exp.relevance[0].sum()) if exp.relevance[0].sum() else None
    own = path_scale == "own"
    save_png(out / "heatmap_full.png", with_scale_bar(heatmap_rgb(full), full))
    save_png(out / "heatmap_k_paths_relevance.png", with_scale_bar(
        heatmap_rgb(part, scale=None if own else scale_of(full)), part, scale=None if own else scale_of(full),
        note=(f"{share:.3g} of the relevance; " if share is not None else "")
        + ("its own scale" if own else "the full heatmap's scale")))
    save_png(out / "heatmap_k_paths_activation.png", overlay_rgb(sample.display, act_k), scale_to=scale)
    (out / "heatmap_k_paths_layers.png").unlink(missing_ok=True)  # an earlier run's, in the same folder
    if layer_maps:
        draw_layer_row(out / "heatmap_k_paths_layers.png", lw, layout,
                       f"What the {len(best)} paths' neurons of each layer carry down to the input "
                       "(each map on its own scale; % = the layer's relevance on them)")
    t4 = time.perf_counter()
    record = stamp("paths", {
        **model_json(an.model_path, model_name), "input": str(sample.source),
        "target": target_json(ng.target, labels, an.output_neuron(ng.target)
                              if isinstance(ng.target, (int, np.integer)) else None),
        "device": an.device, "k": k, "selection": how, "per_layer": per_layer if how == "top" else None,
        "threshold": threshold if how == "getoptimizer" else None,
        "layers": ng.layers, "kept": {name: ng.kept[name].tolist() for name in ng.layers},
        "graph": {"nodes": ng.graph.number_of_nodes(), "edges": flows, "edges_written": written.number_of_edges(),
                  "edges_drawn": drawn},
        "path_score": choice.score, "path_score_reason": choice.reason,
        "longest": path_record(best[0], ng) if best else None,
        "paths": [{"rank": i + 1, **path_record(p, ng)} for i, p in enumerate(best)],
        "path_heatmap": path_heatmap, "relevance_share_k_paths": share, "path_heatmap_scale": path_scale,
        "layer_maps": layer_maps,
        "share_per_layer": lw.shares_json(),
        "timings_s": {"explain": t1 - t0, "graph_and_paths": t2 - t1, "path_heatmaps": t3 - t2,
                      "write": t4 - t3, "total": t4 - t0},
    })
    write_json(out / "paths.json", record)
    return record
