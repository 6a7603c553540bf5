"""``lrpath optimize MODEL INPUT... --k-max 20``: how few paths keep the explanation and the output."""

from __future__ import annotations

import click
import numpy as np

from ..io.outputs import clean_temporaries, ensure_out_dir, write_json
from ..io.schema import model_json, stamp
from ..paths.optimize import draw_sweep, sweep
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
    result = stamp("optimize", {**model_json(ses.an.model_path, ses.model_name), **result})
    write_json(out / "optimize.json", result)
    draw_sweep(out, result, per_layer)
    pk = result["per_k"]
    k = result["chosen_k"]
    msg = (f"chosen K = {k}: softmax MSE {pk['prob_mse'][k - 1]:.3g}, same class in "
           f"{pk['same_class'][k - 1]:.0%} of inputs" if k else "no K within tolerance")
    click.echo(f"{msg}; GetOptimizer threshold {result['chosen_threshold']} -> {out / 'optimize.json'}")
    return 0
