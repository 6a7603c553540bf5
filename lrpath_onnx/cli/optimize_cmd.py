"""``lrpath optimize MODEL INPUT... --k-max 20``: how few paths keep the explanation and the output."""

from __future__ import annotations

import click
import numpy as np

from ..io.outputs import clean_temporaries, ensure_out_dir, write_json
from ..paths.optimize import sweep
from ..viz.curve import draw_curve_png
from .options import floats, progress
from .session import input_options, open_session


@click.command()
@input_options
@click.option("--k-max", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--per-layer", type=click.IntRange(min=1), default=16, show_default=True,
              help="Neurons per layer in the graph the paths are taken from.")
@click.option("--tolerance", type=click.FloatRange(min=0), default=0.05, show_default=True,
              help="Relative: a K is good when its mean error is within this share of the sweep's largest.")
@click.option("--thresholds", default="-1,-0.5,0,0.5,1,1.5,2", show_default=True,
              help="GetOptimizer thresholds t (keep neurons above mean − t·std) to sweep.")
def optimize(args, out, k_max, per_layer, tolerance, thresholds, **opts):
    """MSE/SMAPE of the K-path heatmap and of the K-path model's output, K = 1…k-max, and
    of GetOptimizer's selection over thresholds; chooses the smallest K within tolerance."""
    ses = open_session(args, out, **opts)
    grid = floats(thresholds, "--thresholds")
    xs = []
    for batch in ses.reader.batches(ses.paths, 1):
        xs.append(np.stack([batch[0].tensor]))
    out = ensure_out_dir(out)
    clean_temporaries(out)
    with progress(len(xs), "optimizing") as bar:
        result = sweep(ses.an, xs, k_max, per_layer, grid, ses.layout, ses.target, tolerance, bar.update)
    result["inputs_files"] = [str(p) for p in ses.paths]
    write_json(out / "optimize.json", result)
    pk = result["per_k"]
    draw_curve_png(out / "optimize_k.png", result["k"],
                   {"output MSE (softmax)": pk["prob_mse"], "heatmap MSE ×1e4": [v * 1e4 for v in pk["heatmap_mse"]],
                    "output SMAPE % (softmax)": pk["prob_smape"]},
                   f"How many paths suffice ({result['inputs']} input(s), {per_layer} neurons per layer)",
                   "K (best paths kept)", "MSE", mark_x=result["chosen_k"], secondary={"output SMAPE % (softmax)"},
                   ylabel2="SMAPE %", mark_label=f"chosen K = {result['chosen_k']}")
    pt = result["per_threshold"]
    draw_curve_png(out / "optimize_threshold.png", result["thresholds"],
                   {"output MSE (softmax)": pt["prob_mse"], "output SMAPE % (softmax)": pt["prob_smape"]},
                   "GetOptimizer: keep neurons above mean − t·std", "threshold t", "MSE",
                   mark_x=result["chosen_threshold"], secondary={"output SMAPE % (softmax)"}, ylabel2="SMAPE %")
    k = result["chosen_k"]
    msg = (f"chosen K = {k}: softmax MSE {pk['prob_mse'][k - 1]:.3g}, same class in "
           f"{pk['same_class'][k - 1]:.0%} of inputs" if k else "no K within tolerance")
    click.echo(f"{msg}; GetOptimizer threshold {result['chosen_threshold']} -> {out / 'optimize.json'}")
    return 0
