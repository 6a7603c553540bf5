"""``lrpath paths MODEL INPUT --k 5 --out DIR``: neuron graph, K best paths, path heatmaps."""

from __future__ import annotations

import click

from ..io.inputs import read_ahead
from ..io.outputs import clean_temporaries, ensure_out_dir
from ..paths.conditional import MODES
from ..paths.graph_files import MAX_FLOWS
from ..paths.neurons import graph_layers
from ..paths.run import explain_paths
from .options import path_score_option, progress
from .session import input_options, open_session


def _percent(share: float | None) -> str:
    return "—" if share is None else f"{100 * share:.2g} %"


def path_options(fn):
    fn = click.option("--threshold", type=float, default=1.0, show_default=True,
                      help="GetOptimizer: keep neurons whose value is above mean − threshold·std.")(fn)
    fn = click.option("--select", "how", type=click.Choice(["top", "getoptimizer"]), default="top",
                      show_default=True, help="Neurons per layer: the most relevant, or GetOptimizer's.")(fn)
    fn = click.option("--per-layer", type=click.IntRange(min=1), default=16, show_default=True,
                      help="Neurons kept per layer (with --select top).")(fn)
    return fn


@click.command()
@input_options
@path_options
@click.option("--k", type=click.IntRange(min=1), default=5, show_default=True, help="How many best paths.")
@click.option("--path-heatmap", type=click.Choice(MODES), default="layerwise", show_default=True,
              help="The relevance-based K-path heatmap: per graph layer what the path neurons carry, "
                   "averaged (layerwise), or the path neurons kept at every layer at once (strict).")
@click.option("--path-heatmap-scale", type=click.Choice(["full", "own"]), default="full", show_default=True,
              help="Colour scale of the relevance-based K-path heatmaps: the full heatmap's, or their own.")
@click.option("--layer-maps/--no-layer-maps", default=False, show_default=True,
              help="Also draw what each graph layer's path neurons carry (heatmap_k_paths_layers.png, and their "
                   "input shares): one backward pass per layer (VGG16: paths 4.8x explain instead of 1.9x). "
                   "Without, the mean map alone, in one pass; `lrpath report` draws the row.")
@click.option("--max-flows", type=click.IntRange(min=0), default=MAX_FLOWS, show_default=True,
              help="graph.json and graph.graphml keep every neuron but only this many heaviest flows, and the "
                   "K paths' (0: all; a GetOptimizer graph of VGG16 has millions).")
@path_score_option
def paths(args, out, k, per_layer, how, threshold, path_heatmap, path_heatmap_scale, layer_maps, max_flows,
          path_score, **opts):
    """Neuron graph of MODEL for each INPUT, its K best paths, and the K-path heatmaps.

    Writes graph.png/.svg/.graphml/.json, paths.json, heatmap_full.png,
    heatmap_k_paths_relevance.png, heatmap_k_paths_activation.png and, with
    --layer-maps, heatmap_k_paths_layers.png per input.
    """
    ses = open_session(args, out, **opts)
    graph_layers(ses.an)  # a model without a chain of layers is refused before --out is made
    out = ensure_out_dir(out)
    clean_temporaries(out)
    with progress(len(ses.paths), "paths") as bar:
        for batch in read_ahead(ses.reader.batches(ses.paths, 1)):
            sample = batch[0]
            rec = explain_paths(ses.an, sample, out / sample.name, k, per_layer, how, threshold, ses.target,
                                ses.layout, ses.labels, path_heatmap_scale, ses.model_name, path_heatmap,
                                path_score, max_flows, layer_maps)
            graph = rec["graph"]
            if graph["edges_written"] < graph["edges"]:
                click.echo(f"warning: {sample.name}: graph.json and graph.graphml hold {graph['edges_written']:,} of "
                           f"{graph['edges']:,} flows, the heaviest and the paths' (--max-flows {max_flows:,}; "
                           "0 writes all)", err=True)
            best = rec["paths"][0] if rec["paths"] else None
            route = " > ".join(f"{n['layer']}:{n['neuron']}" for n in best["neurons"]) if best else "none"
            click.echo(f"{sample.name}: {rec['graph']['nodes']} neurons, {rec['graph']['edges']} flows; best path by "
                       f"{rec['path_score']} (flow {best['weight'] if best else 0:.4g}, carries "
                       f"{_percent(best['carried_share'] if best else None)} of the target's relevance): "
                       f"{route} -> {out / sample.name}")
            bar.update(1)
    return 0
