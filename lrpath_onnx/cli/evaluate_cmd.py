"""``lrpath evaluate MODEL INPUT... --methods ... --out DIR``: how faithful each explanation is."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import onnx
import onnxruntime as ort

from ..errors import InputError, first_line
from ..evaluate import perturb
from ..evaluate.methods import MethodContext, check_methods
from ..evaluate.run import Settings, default_patch, evaluate
from ..evaluate.sanity_run import run_sanity
from ..io.inputs import read_ahead
from ..io.outputs import clean_temporaries, ensure_out_dir, write_json, write_png
from ..io.schema import model_json, stamp
from ..runtime.fixed_batch import run_in_chunks
from ..runtime.session import QUIET_RUN, choose_providers
from ..viz.curve import render_curve
from .options import progress
from .session import input_options, open_session

DEFAULT_METHODS = "auto,gradient,gradient-x-input,random"


def inner_output(an) -> str | None:
    """The explained tensor when it is not the model's first output (the logits before a final
    Softmax the analyzer strips, or another output chosen with ``--model-output``), for
    ``plain_forward``; None when it is."""
    first = an.graph.model_outputs[0]
    return None if an.graph.output == first and not an.graph.stripped else an.graph.output


def plain_forward(model_path: Path, device: str, fixed_batch: int | None, inner: str | None = None):
    """What a user would run: an onnxruntime session with default settings, returning the
    model's first output, or the tensor ``inner`` (``inner_output``), made an output of a copy."""
    providers = choose_providers("auto" if device == "cuda" else device)
    if inner is None:
        sess = ort.InferenceSession(str(model_path), providers=providers)
    else:  # weights stored beside the model stay there: the copy holds the graph, not them
        proto = onnx.load(str(model_path), load_external_data=False)  # (a copy of them passed 2 GB)
        if inner not in {o.name for o in proto.graph.output}:
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(inner))
        opts = ort.SessionOptions()
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                      str(Path(model_path).absolute().parent))
        sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=providers)
    fetch = None if inner is None else [inner]
    name = sess.get_inputs()[0].name
    dtype = np.float16 if sess.get_inputs()[0].type == "tensor(float16)" else np.float32  # a float16 model

    def one(x: np.ndarray) -> np.ndarray:
        try:
            out = sess.run(fetch, {name: x.astype(dtype, copy=False)}, QUIET_RUN)[0]
        except Exception as exc:  # as the analyzer's own session says it: one line, bad input
            msg = first_line(exc)
            raise InputError(f"onnxruntime failed on a batch of {x.shape[0]} inputs: {msg}") from None
        return np.asarray(out, np.float32)

    alone = [False]  # the model runs one sample at a time only (``Analyzer.one_at_a_time``)

    def run(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        if fixed_batch and x.shape[0] != fixed_batch:
            return run_in_chunks(one, x, fixed_batch)
        if alone[0] and x.shape[0] > 1:
            return run_in_chunks(one, x, 1)
        try:
            return one(x)
        except InputError:
            if fixed_batch or x.shape[0] == 1:
                raise
            first = one(x[:1])  # this failing too is the model's error, not the batch's
            alone[0] = True
            return np.concatenate([first, run_in_chunks(one, x[1:], 1)])
    return run


@click.command()
@input_options
@click.option("--methods", default=DEFAULT_METHODS, show_default=True,
              help="Comma-separated: LRP presets (auto, conserving, epsilon-gamma-box, …), gradient, "
                   "gradient-x-input, smoothgrad, occlusion, random.")
@click.option("--patch", type=click.IntRange(min=1), default=None,
              help="Region size in pixels (default 8 for 224² inputs, 4 for MNIST-sized ones).")
@click.option("--steps", type=click.IntRange(min=1), default=50, show_default=True,
              help="Perturbation steps (all regions if there are fewer).")
@click.option("--baseline", type=click.Choice(perturb.BASELINES), default="blur", show_default=True,
              help="What removed regions are replaced by.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of random maps, noise and bootstrap.")
@click.option("--smoothgrad-n", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--smoothgrad-sigma", type=click.FloatRange(min=0), default=0.15, show_default=True,
              help="SmoothGrad noise, relative to each input's value range.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Images explained together.")
@click.option("--forward-batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Perturbed inputs per onnxruntime run.")
@click.option("--sanity", is_flag=True, help="Also run the cascading weight-randomisation sanity check.")
@click.option("--sanity-steps", type=click.IntRange(min=1), default=6, show_default=True,
              help="Layer groups the sanity check randomises, top first.")
def evaluate_cmd(args, out, methods, patch, steps, baseline, seed, smoothgrad_n, smoothgrad_sigma, batch_size,
                 forward_batch, sanity, sanity_steps, **opts):
    """Region-perturbation faithfulness (MoRF/LeRF AOPC, ABPC) of explanation methods on MODEL."""
    names = check_methods([m.strip() for m in methods.split(",") if m.strip()])
    ses = open_session(args, out, **opts)
    an = ses.an
    h, w = ses.reader.pre.size if ses.reader.pre else an.input_shape[-2:]
    settings = Settings(patch=patch or default_patch(h, w), steps=steps, baseline=baseline, seed=seed,
                        batch=forward_batch)
    fixed = an.input_shape[0] if an.input_shape and an.input_shape[0] else None
    forward = plain_forward(an.model_path, opts.get("device", "cpu"), fixed, inner_output(an))
    ctx = MethodContext(str(an.model_path), tuple(opts.get("rules") or ()), an.low, an.high, ses.layout, forward,
                        settings.patch, baseline, seed, smoothgrad_n, smoothgrad_sigma, opts.get("device", "cpu"),
                        output=an.graph.model_output, forward_engine=opts.get("forward_engine", "auto"))
    target = ses.target if isinstance(ses.target, int) else None
    out = ensure_out_dir(out)
    clean_temporaries(out)
    with progress(len(ses.paths), "evaluating") as bar:
        doc = evaluate(read_ahead(ses.reader.batches(ses.paths, batch_size)), names, ctx, settings, forward, target,
                       on_batch=bar.update, labels=ses.labels)
    doc = stamp("evaluate", {**model_json(an.model_path, ses.model_name), **doc})
    write_json(out / "evaluate.json", doc)
    write_png(out / "curves.png", curves_picture(doc))
    click.echo(table(doc))
    for w in doc["warnings"]:
        click.echo(f"warning: {w}", err=True)
    if sanity:
        sdoc = run_sanity(ses, names, ctx, sanity_steps, batch_size, out)
        write_json(out / "sanity.json", stamp("sanity", {**model_json(an.model_path, ses.model_name), **sdoc}))
        for m in sdoc["methods"]:
            click.echo(f"sanity {m['name']}: {m['verdict']}")
    click.echo(f"wrote {out / 'evaluate.json'} and {out / 'curves.png'}" + (f", {out / 'sanity.json'}" if sanity else ""))
    return 0


def table(doc: dict) -> str:
    """The methods ranked by ABPC, with intervals, as the terminal shows them."""
    t, speed = doc["timings_s"], doc["throughput"]
    lines = [f"{len(doc['images'])} image(s), {doc['settings']['patch']}-px patches, {doc['settings']['steps']} steps, "
             f"baseline {doc['settings']['baseline']}; higher MoRF AOPC and ABPC, lower LeRF AOPC are better; "
             "R in/out: an LRP map's sum over the explained logit (median)",
             f"{'method':22s} {'MoRF AOPC':>22s} {'LeRF AOPC':>22s} {'ABPC':>22s} {'R in/out':>9s}"]
    for m in doc["methods"]:
        cell = lambda k: f"{m[k]:7.3f} [{m[k + '_ci'][0]:6.3f}, {m[k + '_ci'][1]:6.3f}]"  # noqa: E731
        kept = m.get("conservation_ratio_median")
        lines.append(f"{m['name']:22s} {cell('morf_aopc'):>22s} {cell('lerf_aopc'):>22s} {cell('abpc'):>22s} "
                     + (f"{kept:9.3g}" if kept is not None else f"{'—':>9s}"))
    ratio = speed["perturbation_stage_over_onnxruntime"]
    lines.append(f"{speed['images_per_second']:.2f} images/s; {speed['perturbed_inputs']} perturbed inputs, onnxruntime "
                 f"{1000 * t['onnxruntime_per_input']:.2f} ms each"
                 + (f", perturbation stage {ratio:.2f}× onnxruntime's time" if ratio else ""))
    return "\n".join(lines)


def curves_picture(doc: dict):
    """MoRF curves above LeRF curves, one colour per method."""
    from PIL import Image

    charts = []
    for how, title in (("morf", "MoRF: most relevant regions removed first (lower is better)"),
                       ("lerf", "LeRF: least relevant regions removed first (higher is better)")):
        series = {m["name"]: m[f"{how}_curve"] for m in doc["methods"]}
        n = len(next(iter(series.values())))
        xs = np.linspace(0, 100, n).tolist()
        charts.append(render_curve(xs, series, title, "regions removed (%)", "explained logit / unperturbed",
                                   size=(1000, 520)))
    pic = Image.new("RGB", (1000, 1040), "white")
    pic.paste(charts[0], (0, 0))
    pic.paste(charts[1], (0, 520))
    return pic
