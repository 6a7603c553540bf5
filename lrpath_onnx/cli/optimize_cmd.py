"""``lrpath optimize MODEL INPUT... --k-max 20``: how few paths keep the explanation and the output."""

from __future__ import annotations

import click
import numpy as np

from ..io.outputs import clean_temporaries, ensure_out_dir, write_json
from ..io.schema import model_json, stamp
from ..paths.neurons import graph_layers
from ..paths.optimize import CRITERIA, DEFAULT_CRITERION, draw_sweep, sweep
from .options import floats, path_score_option, progress
from .session import input_options, open_session


@click.command()
@input_options
@click.option("--k-max", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--per-layer", type=click.IntRange(min=1), default=16, show_default=True,
              help="Neurons per layer in the graph the paths are taken from.")
@click.option("--criterion", type=click.Choice(list(CRITERIA)), default=DEFAULT_CRITERION, show_default=True,
              help="The measure K is chosen by: " + "; ".join(f"{k}: {v[3]}" for k, v in CRITERIA.items()) + ".")
@click.option("--tolerance", type=click.FloatRange(min=0), default=0.05, show_default=True,
              help="A K is good when its value on the criterion is within this of the sweep's best: in the "
                   "measure's units for shares, rank correlations and output changes; for MSE and SMAPE a "
                   "share of the larger of the best error and the sweep's spread.")
@click.option("--thresholds", default="-1,-0.5,0,0.5,1,1.5,2", show_default=True,
              help="GetOptimizer thresholds t (keep neurons above mean − t·std) to sweep.")
@path_score_option
def optimize(args, out, k_max, per_layer, criterion, tolerance, thresholds, path_score, **opts):
    """What the K best paths preserve, K = 1…k-max (each layer's relevance share, the
    layer-wise K-path heatmap against the full one, the output with the path neurons only),
    and GetOptimizer's selection over thresholds; chooses the smallest K within tolerance
    on --criterion."""
    ses = open_session(args, out, **opts)
    graph_layers(ses.an)  # a model without a chain of layers is refused before --out is made
    grid = floats(thresholds, "--thresholds")
    xs = []
    for batch in ses.reader.batches(ses.paths, 1):
        xs.append(np.stack([batch[0].tensor]))
    out = ensure_out_dir(out)
    clean_temporaries(out)
    with progress(len(xs), "optimizing") as bar:
        result = sweep(ses.an, xs, k_max, per_layer, grid, ses.layout, ses.target, tolerance, bar.update, criterion,
                       path_score)
    result["inputs_files"] = [str(p) for p in ses.paths]
    result = stamp("optimize", {**model_json(ses.an.model_path, ses.model_name), **result})
    write_json(out / "optimize.json", result)
    draw_sweep(out, result, per_layer)
    click.echo(summary_line(result))
    click.echo(f"GetOptimizer threshold {result['chosen_threshold']} -> {out / 'optimize.json'}")
    return 0


def summary_line(result: dict) -> str:
    """The chosen K, what it keeps, and the K every other criterion would choose."""
    pk, k = result["per_k"], result["chosen_k"]
    if not k:
        return f"no K within tolerance on {result['criterion']}"
    line = (f"chosen K = {k} by {result['criterion']}: {pk['share'][k - 1]:.1%} of each layer's relevance on the "
            f"paths, heatmap rank correlation {pk['heatmap_spearman'][k - 1]:.3f}, output change with all layers "
            f"masked {pk['all_layers_output_change'][k - 1]:.1%}")
    if result["still_improving"]:
        line += f" (still improving at K = {k}: try a larger --k-max)"
    others = ", ".join(f"{c} {v}" for c, v in result["chosen_k_by"].items() if c != result["criterion"])
    return line + (f"; other criteria: {others}" if others else "")
