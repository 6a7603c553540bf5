"""``lrpath explain MODEL INPUT... --out DIR``: relevance heatmaps for images or tensors."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from ..api import Analyzer, NeuronTarget, parse_target
from ..errors import InputError, OutputError
from ..io.images import Preprocess, preprocess_from_input_shape, z_bounds
from ..io.inputs import InputReader, check_paths
from ..io.outputs import atomic_path, clean_temporaries, ensure_out_dir
from ..io.results import read_labels, record, write_sample
from .options import floats, model_options, progress, size


def image_preprocess(shape: tuple, opts: dict) -> Preprocess | None:
    """Preprocessing for image inputs, or None when the model input is not an image batch."""
    if len(shape) != 4:
        if any(opts.get(k) is not None for k in ("mean", "std", "size", "resize")):
            raise InputError(f"the model input {shape} is not an image batch; image options do not apply")
        return None
    overrides = {k: v for k, v in opts.items() if v is not None}
    return preprocess_from_input_shape(shape, **overrides)


def bounds(an: Analyzer, pre: Preprocess | None, low, high, layout: str):
    """z^B bounds in the model's input space: explicit --low/--high, else the images of pixels 0/255."""
    if (low is None) != (high is None):
        raise InputError("give both --low and --high, or neither")
    if low is not None:
        c = pre.channels if pre else 1
        shape = (1, -1, 1, 1) if layout == "nchw" else (1, 1, 1, -1)
        lo, hi = np.asarray(low, np.float32), np.asarray(high, np.float32)
        if lo.size not in (1, c) or hi.size not in (1, c):
            raise InputError(f"--low/--high need 1 or {c} values")
        return (lo.reshape(shape) if lo.size > 1 else lo), (hi.reshape(shape) if hi.size > 1 else hi)
    if pre is not None:
        return z_bounds(pre)
    return np.float32(0.0), np.float32(1.0)


def check_out(out: Path) -> None:
    """Refuse an --out that is a file before anything is computed."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} exists and is not a folder")


def resolve_model(args: tuple, model_name: str | None):
    """(model path, inputs, zoo entry or None) from the positional args and --model-name."""
    from ..models.registry import ZOO, get

    paths = [Path(a) for a in args]
    if model_name is None and paths and not paths[0].exists() and str(paths[0]) in ZOO:
        model_name, paths = str(paths[0]), paths[1:]
    if model_name is not None:
        entry = get(model_name)
        return entry.path(), paths, entry
    if not paths:
        raise click.UsageError("missing MODEL (a .onnx file, or a zoo name: see `lrpath models`)")
    return paths[0], paths[1:], None


@click.command()
@click.argument("args", nargs=-1, metavar="[MODEL] INPUT...")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--model-name", default=None, help="A zoo model (`lrpath models`); MODEL is then left out.")
@model_options
@click.option("--target", default=None, help="Class index N, LAYER:CHANNEL or LAYER:CHANNEL:Y:X (default: top-1).")
@click.option("--mean", default=None, help="Per-channel mean after scaling, e.g. 0.485,0.456,0.406.")
@click.option("--std", default=None, help="Per-channel std after scaling, e.g. 0.229,0.224,0.225.")
@click.option("--scale", type=float, default=None, help="Pixel scale before mean/std (default 1/255).")
@click.option("--low", default=None, help="z^B lower bound(s) in the model's input space (overrides mean/std).")
@click.option("--high", default=None, help="z^B upper bound(s) in the model's input space.")
@click.option("--size", "size_", default=None, help="Input size H[,W] when the model does not fix it.")
@click.option("--resize", type=click.IntRange(min=1), default=None, help="Short side before the centre crop.")
@click.option("--fit", type=click.Choice(["crop", "stretch"]), default=None, help="Resize then crop (default) or stretch.")
@click.option("--layout", type=click.Choice(["auto", "nchw", "nhwc"]), default="auto", show_default=True)
@click.option("--channel-order", type=click.Choice(["rgb", "bgr"]), default=None, help="Channel order of the model.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--labels", type=click.Path(path_type=Path), default=None, help="Class names, one per line.")
@click.option("--keep-layers", default=None, help="Comma-separated layers whose relevance is saved too ('*' = all).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=50_000_000, show_default=True,
              help="Refuse larger images (decompression bombs).")
def explain(args, out, model_name, preset, rules, device, target, mean, std, scale, low, high, size_, resize,
            fit, layout, channel_order, batch_size, labels, keep_layers, max_pixels):
    """Explain MODEL's decision on each INPUT (image or .npy tensor) and write to --out.

    MODEL is a .onnx file, or a zoo name (`lrpath models`), whose preprocessing and class
    names are then used unless options say otherwise.
    """
    model, paths, entry = resolve_model(args, model_name)
    opts = {"mean": floats(mean, "--mean"), "std": floats(std, "--std"), "scale": scale,
            "size": size(size_), "resize": resize, "fit": fit, "channel_order": channel_order,
            "layout": None if layout == "auto" else layout}
    run_explain(model, paths, out, opts, preset=preset, rules=rules, device=device, target=target,
                low=floats(low, "--low"), high=floats(high, "--high"), batch_size=batch_size,
                labels_file=labels, keep_layers=keep_layers, max_pixels=max_pixels, entry=entry)
    return 0


def _zoo_opts(entry) -> dict:
    pre = dict(entry.preprocessing) if entry is not None else {}
    if "size" in pre:
        pre["size"] = tuple(pre["size"])
    for k in ("mean", "std"):
        if k in pre:
            pre[k] = tuple(pre[k])
    return pre


def run_explain(model: Path, paths: list[Path], out: Path, opts: dict, *, preset="epsilon-gamma-box",
                rules=(), device="cpu", target=None, low=None, high=None, batch_size=8,
                labels_file=None, keep_layers=None, max_pixels=50_000_000, entry=None) -> Path:
    """The explain pipeline: checks first, then batches, files written atomically; returns --out."""
    check_paths(paths)
    check_out(out)
    tgt = parse_target(target)
    opts = {**_zoo_opts(entry), **{k: v for k, v in opts.items() if v is not None}}
    an = Analyzer(model, preset=preset, rules=rules, device=device)
    pre = image_preprocess(an.input_shape, opts)
    lay = pre.layout if pre else (opts.get("layout") or "nchw")
    an.set_bounds(*bounds(an, pre, low, high, lay))
    names = read_labels(labels_file, an.num_classes) if labels_file else (entry.labels() if entry else None)
    if isinstance(tgt, int) and an.num_classes is not None and not 0 <= tgt < an.num_classes:
        raise InputError(f"--target {tgt} is out of range: the model has {an.num_classes} classes "
                         f"(0..{an.num_classes - 1})")
    if isinstance(tgt, NeuronTarget):
        an.graph.find(tgt.layer)
    keep = tuple(k.strip() for k in keep_layers.split(",")) if keep_layers else ()
    for k in keep:
        if k != "*":
            an.graph.find(k)
    reader = InputReader(an.input_shape, pre, lay, max_pixels)
    out = ensure_out_dir(out)
    clean_temporaries(out)
    written = 0
    with progress(len(paths), "explaining") as bar:
        for batch in reader.batches(paths, batch_size):
            x = np.stack([s.tensor for s in batch])
            exp = an.explain(x, target=tgt, keep=keep)
            for i, sample in enumerate(batch):
                rec = record(an, exp, i, sample, names, len(batch))
                folder = out / sample.name
                write_sample(folder, sample, exp.relevance[i], rec, lay)
                if keep:
                    with atomic_path(folder / "layer_relevance.npz") as tmp:
                        np.savez(tmp, **{k: v[i] for k, v in exp.kept.items()})
                written += 1
                _summary(sample.name, rec, folder)
            bar.update(len({s.source for s in batch}))
    click.echo(f"wrote {written} explanation(s) to {out}")
    return out


def _summary(name: str, rec: dict, folder: Path) -> None:
    t = rec["target"]
    what = f"class {t['index']}" + (f" ({t['label']})" if t.get("label") else "") if "index" in t else t["neuron"]
    ratio = rec["conservation"]["ratio"]
    logit = "" if rec["logit"] is None else f", logit {rec['logit']:.4g}"
    cons = "" if ratio is None else f", conservation {ratio:.4f}"
    click.echo(f"{name}: {what}{logit}{cons} -> {folder}")
