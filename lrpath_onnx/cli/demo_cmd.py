"""``lrpath demo``: the whole pipeline on the shipped ``mnist-vgg`` model and digits, offline."""

from __future__ import annotations

from pathlib import Path

import click

from ..models.registry import HERE, get
from ..deconv.reconstruct import layer_activation, picture, reconstruct, select_neurons
from ..paths.neurons import activation_tensor
from ..paths.run import explain_paths
from ..viz.grid import draw_grid
from .explain_cmd import run_explain
from .report_cmd import write_report
from .session import open_session

DIGITS = ("digit_3.png", "digit_7.png")


@click.command()
@click.option("--out", default="lrpath-demo", show_default=True, type=click.Path(path_type=Path),
              help="Output folder.")
def demo(out):
    """Explain the shipped mnist-vgg digit classifier on shipped digits, draw the neuron graph
    and K best paths of one, reconstruct what its top neurons see, write the case-study
    report.html, explain the same digits with the shipped vision transformer (AttnLRP), and
    say where everything is."""
    entry = get("mnist-vgg")
    click.echo(f"model mnist-vgg: {entry.path()} ({entry.quality})")
    target = Path(out) / "explain"
    ses = open_session(["mnist-vgg", *(HERE / "digits" / d for d in DIGITS)], target)
    folder = run_explain(ses, target, batch_size=len(DIGITS))
    for d in DIGITS:
        click.echo(f"pictures: {folder / Path(d).stem / 'overlay.png'} and heatmap.png beside it")
    paths_out = Path(out) / "paths"
    ses = open_session(["mnist-vgg", HERE / "digits" / DIGITS[0]], paths_out)
    sample = next(ses.reader.batches(ses.paths, 1))[0]
    rec = explain_paths(ses.an, sample, paths_out / sample.name, k=5, per_layer=8, labels=ses.labels,
                        model_name=ses.model_name)
    best = rec["paths"][0]
    click.echo(f"neuron graph: {rec['graph']['nodes']} neurons, 5 best paths, the best through "
               + " > ".join(f"{n['layer']}:{n['neuron']}" for n in best["neurons"]))
    click.echo(f"pictures: {paths_out / sample.name / 'graph.png'}, heatmap_k_paths_relevance.png and "
               f"heatmap_k_paths_activation.png beside it")
    an = ses.an
    tiles = [(sample.display, "input")]
    for name in ("features.7", "features.2"):
        an.request(activation_tensor(an, an.graph.find(name)))
        _, act = layer_activation(an, an.forward(sample.tensor[None]), name)
        neurons = select_neurons(act, name, top=4)
        for nr, rec in zip(neurons, reconstruct(an, sample.tensor[None], neurons)):
            tiles.append((picture(rec, ses.layout), nr.label()))
    grid = Path(out) / "deconv" / "grid.png"
    grid.parent.mkdir(parents=True, exist_ok=True)
    draw_grid(grid, tiles, columns=5, title="digit 3: what the top neurons of features.7 and features.2 see")
    click.echo(f"deconvolution grid: {grid}")
    report_out = Path(out) / "report"
    ses = open_session(["mnist-vgg", HERE / "digits" / DIGITS[0]], report_out)
    page = write_report(ses, report_out, k=5, per_layer=8, k_max=8)
    click.echo(f"case-study report (open in a browser): {page}")
    vit_out = Path(out) / "vit"
    ses = open_session(["mnist-vit", *(HERE / "digits" / d for d in DIGITS)], vit_out)
    click.echo(f"transformer mnist-vit ({get('mnist-vit').quality}), preset {ses.an.plan().describe()}:")
    folder = run_explain(ses, vit_out, batch_size=len(DIGITS), token_map=True)
    click.echo(f"pictures: {folder / Path(DIGITS[0]).stem / 'overlay.png'} and tokens.png (relevance per patch) "
               "beside it")
    return 0
