"""``lrpath bench MODEL``: stage timings against onnxruntime's own forward pass, same run."""

from __future__ import annotations

import gc
import os
import platform
import resource
import sys
import time
from pathlib import Path

import click
import numpy as np

from ..api import Analyzer
from ..errors import InputError
from ..io.outputs import ensure_out_dir, write_json
from ..io.schema import model_json, stamp
from ..threads import openblas_core
from .bench_layers import echo_slowest, layer_rows
from .bench_processes import bench_processes, plain_forward_times
from .options import model_file, model_options, zoo_name


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine() -> dict:
    import numba
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__, "numba": numba.__version__, "openblas_core": openblas_core(),
            "openblas_coretype_env": os.environ.get("OPENBLAS_CORETYPE")}


def _median(ts: list[float]) -> float:
    return float(np.median(ts))


def _deconv_work(an: Analyzer, x: np.ndarray, layer: str, top: int) -> None:
    """What `lrpath deconv --layer LAYER --top N` computes for one image (files aside)."""
    from ..deconv.reconstruct import layer_activation, reconstruct, select_neurons
    from ..paths.neurons import activation_tensor

    an.request(activation_tensor(an, an.graph.find(layer)))
    _, act = layer_activation(an, an.forward(x), layer)
    reconstruct(an, x, select_neurons(act, layer, top=top))


def _paths_work(an: Analyzer, x: np.ndarray, k: int, per_layer: int, layer_maps: bool = False) -> None:
    """What `lrpath paths` computes for one image (files aside; ``layer_maps``: as with
    ``--layer-maps``)."""
    from ..paths import SINK, SOURCE, best_paths, build, explain_for_graph
    from ..paths.conditional import layerwise
    from ..paths.heatmaps import activation_heatmap, inner_masks

    exp = explain_for_graph(an, x)
    ng = build(an, exp, 0, per_layer)
    best, _ = best_paths(ng.graph, SOURCE, SINK, k)
    masks = ng.path_masks([p.nodes for p in best])
    layerwise(an, exp, inner_masks(exp, masks), per_layer=layer_maps)
    activation_heatmap(an, exp, ng, masks, x.shape[2:] if x.shape[1] in (1, 3) else x.shape[1:3])


@click.command()
@click.argument("model")
@model_options
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--runs", type=click.IntRange(min=5), default=5, show_default=True, help="Timed runs per stage (≥ 5).")
@click.option("--warmup", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--rule-forward", type=click.Choice(["kernels", "runtime"]), default="kernels", show_default=True,
              help="Where γ/z⁺/αβ modified forwards run: extra onnxruntime nodes, or numba/BLAS kernels.")
@click.option("--out", "out", type=click.Path(path_type=Path, file_okay=False), default=Path("."),
              show_default=True, help="Folder for bench-<model>-b<B>.json (the results).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random input batch.")
@click.option("--paths", "paths_k", type=click.IntRange(min=1), default=None,
              help="Also time `lrpath paths` work per image (graph with --per-layer neurons, K best paths, "
                   "K-path relevance and activation heatmaps) for this K.")
@click.option("--per-layer", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--deconv", "deconv_layer", default=None, metavar="LAYER",
              help="Also time the deconvolution of the --deconv-top strongest channels of LAYER per image.")
@click.option("--deconv-top", type=click.IntRange(min=1), default=9, show_default=True)
@click.option("--processes", type=click.IntRange(min=2), default=None, metavar="N",
              help="Time whole processes instead: `lrpath explain` and a plain onnxruntime script on 1 and N "
                   ".npy inputs, --process-runs runs each; the marginal seconds per image "
                   "(T(N) − T(1)) / (N − 1), T each count's fastest run (the medians' figure beside it).")
@click.option("--layers", "layers_n", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="Also print the N slowest layers of the backward pass and the time per op and rule "
                   "(every layer's time is in the JSON either way; not with --processes).")
@click.option("--process-runs", type=click.IntRange(min=1), default=3, show_default=True,
              help="With --processes: runs per command and input count (more runs steady the fastest-run "
                   "figure where a process's start varies by seconds).")
def bench(model, preset, rules, device, forward_engine, batch_size, runs, warmup, rule_forward, out, seed, paths_k,
          per_layer, deconv_layer, deconv_top, processes, process_runs, layers_n):
    """Time explain stages on MODEL (a path or a zoo name, e.g. vgg16) against onnxruntime's forward.

    Stages: onnxruntime forward (a plain session with default settings in its own process, as
    a user would run the model; timed before and after the rest), forward with activations
    (the analyzer's: its own kernels or its onnxruntime session, --forward-engine), backward,
    total. Reported as median seconds per image and as ratios to the plain forward, all
    measured in this run; plus peak RSS. With --processes, whole command runs instead.
    """
    path = model_file(model)
    out = ensure_out_dir(out)  # refused now, not after minutes of timing
    if processes:
        return bench_processes(path, out, device, batch_size, processes, preset, rules, zoo_name(model),
                               process_runs, forward_engine)
    plain_before = plain_forward_times(path, device, batch_size, runs, warmup, seed)  # before any of our pools
    t0 = time.perf_counter()
    an = Analyzer(path, preset=preset, rules=rules, device=device, rule_forward=rule_forward,
                  forward_engine=forward_engine)
    shape = tuple(batch_size if i == 0 else d for i, d in enumerate(an.input_shape))
    if any(d is None for d in shape):
        raise InputError(f"model input {an.input_shape} has unknown dims; bench needs a fixed input size")
    x = np.random.default_rng(seed).random(shape, dtype=np.float32)
    first = an.explain(x)
    first_s = time.perf_counter() - t0
    for _ in range(warmup):
        an.explain(x)
    rss_explain = peak_rss_mb()

    t_fwd, t_bwd, t_total, t_paths, t_paths_rows, t_explain2, t_layers = [], [], [], [], [], [], []
    for _ in range(runs):
        t = time.perf_counter()
        an.forward(x)
        t_fwd.append(time.perf_counter() - t)
        e = an.explain(x)
        t_bwd.append(e.timings_s["backward"])
        t_total.append(e.timings_s["total"])
        t_layers.append(e.layer_seconds)
    t_deconv = []
    if deconv_layer:  # after: it asks the session for one more activation
        _deconv_work(an, x[:1], deconv_layer, deconv_top)
        for _ in range(runs):
            t = time.perf_counter()
            for i in range(batch_size):
                _deconv_work(an, x[i:i + 1], deconv_layer, deconv_top)
            t_deconv.append(time.perf_counter() - t)
    if paths_k:  # after: the graph asks the session for more activations, which would slow explain
        _paths_work(an, x[:1], paths_k, per_layer)
        for _ in range(runs):
            t_explain2.append(an.explain(x).timings_s["total"])
            t = time.perf_counter()
            for i in range(batch_size):
                _paths_work(an, x[i:i + 1], paths_k, per_layer)
            t_paths.append(time.perf_counter() - t)
            t = time.perf_counter()
            for i in range(batch_size):
                _paths_work(an, x[i:i + 1], paths_k, per_layer, layer_maps=True)
            t_paths_rows.append(time.perf_counter() - t)
    gc.collect()
    t_plain = plain_before + plain_forward_times(path, device, batch_size, runs, warmup, seed)  # and after: drift
    base = _median(t_plain) / batch_size
    stages = []
    for name, ts in (("onnxruntime_forward", t_plain), ("forward_with_activations", t_fwd),
                     ("backward", t_bwd), ("explain_total", t_total), ("paths_total", t_paths),
                     ("paths_total_layer_maps", t_paths_rows),
                     (f"deconv_{deconv_top}_neurons", t_deconv)):
        if not ts:
            continue
        per = _median(ts) / batch_size
        stages.append({"stage": name, "median_s_per_image": per, "ratio_to_ort_forward": per / base,
                       "runs": len(ts)})
    result = {"machine": machine(), **model_json(path, zoo_name(model)), "input_shape": list(shape),
              "batch_size": batch_size,
              "preset": preset, "rule_overrides": list(rules), "rule_forward": rule_forward,
              "forward_engine": forward_engine, "provider": first.provider,
              "device": an.device, "warmup": warmup, "stages": stages,
              "baseline": "a plain onnxruntime.InferenceSession with default settings in its own process "
                          f"(plain_forward.py), {runs} runs before and {runs} after the analyzer's",
              "paths": {"k": paths_k, "per_layer": per_layer} if paths_k else None,
              "deconv": {"layer": deconv_layer, "neurons": deconv_top} if deconv_layer else None,
              "peak_rss_mb_explain": rss_explain, "first_explain_s_incl_load": first_s,
              "conservation_ratio_sample0": first.conservation(0)["ratio"],
              "layers": layer_rows(an, t_layers, batch_size)}
    click.echo(f"{path.name}  batch {batch_size}  preset {preset}  provider {first.provider}  "
               f"({result['machine']['cpu']}, {result['machine']['cores']} cores, "
               f"OpenBLAS {result['machine']['openblas_core'] or 'not found'} kernels)")
    click.echo(f"{'stage':28s} {'s/image':>10s} {'x ort fwd':>10s}")
    for s in stages:
        click.echo(f"{s['stage']:28s} {s['median_s_per_image']:10.4f} {s['ratio_to_ort_forward']:10.2f}")
    if paths_k:
        ratio = _median(t_paths) / _median(t_explain2)
        rows = _median(t_paths_rows) / _median(t_explain2)
        result["paths"].update(ratio_to_explain_same_session=ratio, ratio_layer_maps=rows)
        click.echo(f"paths / explain = {ratio:.2f}, {rows:.2f} with --layer-maps  (K={paths_k}, "
                   f"{per_layer} neurons per layer, both timed with the graph's session)")
    if layers_n:
        echo_slowest(result["layers"], layers_n, click.echo)
    click.echo(f"peak RSS {rss_explain:.0f} MB (explain only)   "
               f"first explain incl. load {first_s:.2f} s")
    json_path = out / f"bench-{path.stem}-b{batch_size}.json"
    write_json(json_path, stamp("bench", result))
    click.echo(f"wrote {json_path}")
    sys.stdout.flush()
    return 0
