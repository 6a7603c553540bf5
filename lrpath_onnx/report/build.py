"""Runs the case study for one input and collects what the page shows: prediction, LRP
heatmap and plan, neuron graph and K paths, K-path heatmaps, the MSE/SMAPE sweep, the
deconvolution of the path neurons, timings. Pictures are written to the output folder
too, so the page's figures can be opened full size."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np

from ..deconv.crop import box_json, box_text, pair
from ..deconv.reconstruct import deepest_first, layer_activation, neurons_on_paths, reconstruct, select_neurons
from ..errors import InputError
from ..graph.layers import ConvLayer
from ..io.results import top_outputs
from ..io.schema import model_json, target_json
from ..paths.neurons import activation_tensor, graph_layers
from ..paths.optimize import draw_sweep, sweep
from ..paths.run import explain_paths
from ..viz.tokens import patch_embedding, token_grid, token_picture
from ..viz.grid import draw_grid
from ..viz.heatmap import heatmap_rgb, overlay_rgb, relevance_map, save_png, with_scale_bar


def _patch_embedding(an):
    """The patch embedding of a transformer explained by a transformer preset, else None."""
    if an.plan().applied not in ("attnlrp", "cp-lrp"):
        return None
    try:
        return patch_embedding(an.graph)
    except InputError:
        return None


def case_study(ses, sample, out: Path, k: int = 5, per_layer: int = 16, k_max: int = 10,
               thresholds=(-1.0, 0.0, 1.0, 2.0), deconv_max: int = 16, model_path: str = "",
               model_name: str | None = None, score: str = "auto") -> dict:
    """Everything ``report.html`` shows, as a dict of values and picture paths under ``out``;
    ``score`` ranks the paths (``paths.ranking.SCORES``)."""
    an, layout = ses.an, ses.layout
    x = sample.tensor[None]
    timings: dict[str, float] = {}
    scale = 224 if min(sample.display.shape[:2]) < 224 else None

    patches = _patch_embedding(an)
    t = time.perf_counter()
    exp = an.explain(x, keep=(patches.name,) if patches else ())
    timings["explain"] = time.perf_counter() - t
    if patches is not None:  # a transformer's relevance per patch token, beside the pixel heatmap
        save_png(out / "tokens.png", token_picture(token_grid(exp.kept[patches.name][0])))
    full = relevance_map(exp.relevance[0], layout)
    save_png(out / "input.png", sample.display, scale_to=scale)
    save_png(out / "heatmap.png", with_scale_bar(heatmap_rgb(full), full))
    save_png(out / "overlay.png", overlay_rgb(sample.display, full), scale_to=scale)
    cons = exp.conservation(0)
    t = time.perf_counter()
    faith = faithfulness(ses, x, exp, out)
    timings["faithfulness"] = time.perf_counter() - t
    plan = an.plan()
    page = {**model_json(model_path, model_name), "input": str(sample.source), "sample": sample.name,
            "input_shape": list(x.shape), "layout": layout, "device": an.device, "provider": exp.provider,
            "model_output": an.graph.model_output, "model_outputs": list(an.graph.model_outputs),
            "preset": plan.preset, "preset_applied": plan.applied, "rule_overrides": list(plan.overrides),
            "rules": plan.to_json(), "top5": top_outputs(an, exp.logits[0], ses.labels, 5),
            "target": target_json(int(exp.targets[0]), ses.labels, an.output_neuron(int(exp.targets[0]))),
            "conservation": {k_: cons[k_] for k_ in ("ratio", "output_relevance", "input_relevance")},
            "faithfulness": faith, "k": k, "per_layer": per_layer, "k_max": k_max, "thresholds": list(thresholds),
            "timings_s": timings, "paths": None, "optimize": None, "deconv": [],
            "no_paths": None, "tokens": patches is not None,
            "machine": {"cpu": platform.processor() or platform.machine(),
                                          "python": platform.python_version()}}
    try:
        graph_layers(an)
    except InputError as e:  # a residual or branching network: LRP only, and the page says why
        page["no_paths"] = str(e)
        return page

    t = time.perf_counter()
    paths = explain_paths(an, sample, out / "paths", k=k, per_layer=per_layer, layout=layout, labels=ses.labels,
                          model_name=ses.model_name, score=score, layer_maps=True)
    timings["paths"] = time.perf_counter() - t

    t = time.perf_counter()
    opt = sweep(an, [x], k_max, per_layer, thresholds, layout, None, score=score)
    draw_sweep(out, opt, per_layer)
    timings["sweep"] = time.perf_counter() - t

    t = time.perf_counter()
    on_paths = {name: chans for name, chans in neurons_on_paths(paths).items() if isinstance(an.graph.find(name), ConvLayer)}
    chosen = deepest_first(on_paths, deconv_max)
    for name in chosen:
        an.request(activation_tensor(an, an.graph.find(name)))
    fwd = an.forward(x)
    order = "bgr" if (ses.reader.pre and ses.reader.pre.channel_order == "bgr") else "rgb"
    tiles, deconv = [], []
    for name, chans in chosen.items():
        _, act = layer_activation(an, fwd, name)
        neurons = select_neurons(act, name, chans)
        for nr, rec in zip(neurons, reconstruct(an, x, neurons)):
            patch, pic, box = pair(an, nr, rec, sample.display, layout, order)
            tiles += [(patch, nr.label()), (pic, box_text(box))]
            deconv.append({"layer": name, "channel": nr.channel, "y": nr.y, "x": nr.x, "activation": nr.activation,
                           "receptive_field": box_json(box)})
    if deconv:
        draw_grid(out / "deconv_grid.png", tiles, columns=min(8, len(tiles)),
                  title=f"{sample.name}: what the path neurons see, deepest first (input patch, reconstruction)")
    timings["deconvolution"] = time.perf_counter() - t

    page.update(paths=paths, optimize=opt, deconv=deconv)
    return page


def faithfulness(ses, x, exp, out: Path, steps: int = 30) -> dict:
    """MoRF/LeRF curves of this image under the LRP heatmap, gradient × input and a random map,
    drawn side by side into ``faithfulness.png``."""
    from PIL import Image

    from ..evaluate.faithfulness import MorfScorer
    from ..evaluate.perturb import aopc
    from ..io.outputs import write_png
    from ..viz.curve import render_curve

    an = ses.an
    target = int(exp.targets[0])
    scorer = MorfScorer(ses, steps=steps)
    maps = {f"LRP ({an.plan().applied})": exp.relevance[0],
            "gradient × input": an.gradient(x, target=[target]).relevance[0] * x[0],
            "random": np.random.default_rng(0).uniform(0, 1, x[0].shape)}
    curves = {name: scorer.curves(x[0], m, target) for name, m in maps.items()}
    charts = []
    for how, title in (("morf", "most relevant regions removed first"), ("lerf", "least relevant regions removed first")):
        series = {name: c[how].tolist() for name, c in curves.items()}
        xs = np.linspace(0, 100, len(next(iter(series.values())))).tolist()
        charts.append(render_curve(xs, series, title, "regions removed (%)", "explained logit / unperturbed",
                                   size=(640, 420)))
    pic = Image.new("RGB", (1280, 420), "white")
    pic.paste(charts[0], (0, 0))
    pic.paste(charts[1], (640, 0))
    write_png(out / "faithfulness.png", pic)
    rows = [{"name": name, "morf_aopc": aopc(c["morf"]), "lerf_aopc": aopc(c["lerf"]),
             "abpc": aopc(c["morf"]) - aopc(c["lerf"])} for name, c in curves.items()]
    return {"methods": rows, "steps": steps, "patch": scorer.patch, "baseline": scorer.baseline,
            "picture": "faithfulness.png"}
