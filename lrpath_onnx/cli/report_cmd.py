"""``lrpath report MODEL IMAGE --out DIR``: the case study of one decision as report.html."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import InputError
from ..io.outputs import clean_temporaries, ensure_out_dir, write_json, write_text
from ..io.schema import stamp
from ..report.build import case_study
from ..report.html import render
from .options import floats, path_score_option
from .session import input_options, open_session


def write_report(ses, out: Path, k: int = 5, per_layer: int = 16, k_max: int = 10,
                 thresholds=(-1.0, 0.0, 1.0, 2.0), score: str = "auto") -> Path:
    """The case study of the session's first input, written to ``out/report.html`` (with its
    pictures and ``report.json`` beside it)."""
    sample = next(ses.reader.batches(ses.paths, 1))[0]
    out = ensure_out_dir(out)
    clean_temporaries(out)
    cs = case_study(ses, sample, out, k=k, per_layer=per_layer, k_max=k_max, thresholds=thresholds,
                    model_path=str(ses.an.model_path), model_name=ses.model_name, score=score)
    write_json(out / "report.json", stamp("report", {k_: v for k_, v in cs.items() if k_ not in ("paths", "optimize")}))
    return write_text(out / "report.html", render(cs, out))


@click.command()
@input_options(inputs="IMAGE", target=False)
@click.option("--k", type=click.IntRange(min=1), default=5, show_default=True, help="How many best paths.")
@click.option("--per-layer", type=click.IntRange(min=1), default=16, show_default=True,
              help="Neurons per layer of the neuron graph.")
@click.option("--k-max", type=click.IntRange(min=1), default=10, show_default=True,
              help="Largest K of the MSE/SMAPE sweep.")
@click.option("--thresholds", default="-1,0,1,2", show_default=True, help="GetOptimizer thresholds to sweep.")
@path_score_option
def report(args, out, k, per_layer, k_max, thresholds, path_score, **opts):
    """One self-contained report.html on why MODEL decides as it does for IMAGE: prediction, LRP
    heatmap and rule plan, neuron graph with the K best paths, K-path heatmaps, the MSE/SMAPE
    curve, the deconvolution of the path neurons, timings."""
    if len(args) > 2 or (len(args) == 2 and opts.get("model_name")):
        raise InputError("report explains one IMAGE; run it once per image")
    grid = floats(thresholds, "--thresholds")
    ses = open_session(args, out, **opts)
    page = write_report(ses, out, k, per_layer, k_max, grid, path_score)
    click.echo(f"report: {page}")
    return 0
