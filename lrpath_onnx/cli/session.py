"""What every input-taking command shares: the model (path or zoo name), the input options,
and one checked ``Session`` built before anything is written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from ..api import Analyzer, ClassName, NeuronTarget, Target, parse_target
from ..errors import InputError, OutputError
from ..graph.input_scaling import raw_pixel_options
from ..io.images import Preprocess, preprocess_from_input_shape, z_bounds
from ..io.inputs import InputReader, check_paths
from ..io.results import read_labels
from ..names import resolve_class
from .options import device_option, floats, model_options, output_option, size, zoo_hint


def input_options(fn=None, *, inputs: str = "INPUT...", target: bool = True, rules: bool = True):
    """The model, its inputs and the image/tensor options every input-taking command shares.

    ``inputs``: the metavar of the positional inputs (``""``: the command takes none, e.g. audit's
    ``--images``); ``target``: the command takes ``--target``; ``rules``: it takes ``--preset``/
    ``--rule`` (commands that do not propagate relevance do not)."""
    if fn is None:
        return lambda f: input_options(f, inputs=inputs, target=target, rules=rules)
    opts = [
        click.option("--max-pixels", type=click.IntRange(min=1), default=50_000_000, show_default=True,
                     help="Refuse larger images (decompression bombs)."),
        click.option("--labels", type=click.Path(path_type=Path), default=None, help="Class names, one per line."),
        click.option("--channel-order", type=click.Choice(["rgb", "bgr"]), default=None,
                     help="Channel order of the model."),
        click.option("--layout", type=click.Choice(["auto", "nchw", "nhwc"]), default="auto", show_default=True,
                     help="Where the model's channel axis is (auto: from its input shape)."),
        click.option("--fit", type=click.Choice(["crop", "stretch"]), default=None,
                     help="Resize then crop (default) or stretch."),
        click.option("--resize", type=click.IntRange(min=1), default=None, help="Short side before the centre crop."),
        click.option("--size", "size_", default=None, help="Input size H[,W] when the model does not fix it."),
        click.option("--high", default=None, help="z^B upper bound(s) in the model's input space."),
        click.option("--low", default=None, help="z^B lower bound(s) in the model's input space (overrides mean/std)."),
        click.option("--scale", type=float, default=None, help="Pixel scale before mean/std (default 1/255)."),
        click.option("--std", default=None, help="Per-channel std after scaling, e.g. 0.229,0.224,0.225."),
        click.option("--mean", default=None, help="Per-channel mean after scaling, e.g. 0.485,0.456,0.406."),
        *([click.option("--target", default=None,
                        help="Class index N, a class name or synonym, LAYER:CHANNEL or LAYER:CHANNEL:Y:X "
                             "(default: top-1).")] if target else []),
        model_options if rules else device_option,
        output_option,
        click.option("--model-name", default=None, help="A zoo model (`lrpath models`); MODEL is then left out."),
        click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder."),
        click.argument("args", nargs=-1, metavar=f"[MODEL] {inputs}".strip()),
    ]
    for o in opts:
        fn = o(fn)
    return fn


@dataclass
class Session:
    """A checked model + inputs + preprocessing, ready to run."""

    an: Analyzer
    paths: list[Path]
    reader: InputReader
    layout: str
    labels: list[str] | None
    target: Target
    entry: object = None

    @property
    def model_name(self) -> str | None:
        """The zoo name the model was opened by, or None for a file."""
        return self.entry.name if self.entry is not None else None


def resolve_model(args: tuple, model_name: str | None):
    """(model path, inputs, zoo entry or None) from the positional args and --model-name."""
    from ..models.registry import ZOO, get

    paths = [Path(a) for a in args]
    if model_name is not None and paths and (paths[0].suffix.lower() == ".onnx" or str(paths[0]) in ZOO):
        raise InputError(f"both --model-name {model_name} and a MODEL ({paths[0]}) were given; give one")
    if model_name is None and paths and not paths[0].exists() and str(paths[0]) in ZOO:
        model_name, paths = str(paths[0]), paths[1:]
    if model_name is not None:
        entry = get(model_name)
        if entry.notice:
            click.echo(f"note: {entry.notice}", err=True)
        return entry.path(), paths, entry
    if not paths:
        raise click.UsageError("missing MODEL (a .onnx file, or a zoo name: see `lrpath models`)")
    hint = "" if paths[0].exists() else zoo_hint(paths[0])
    if hint:
        raise InputError(f"model file not found: {paths[0]}{hint}")
    return paths[0], paths[1:], None


def image_preprocess(shape: tuple, opts: dict, images: bool = True) -> Preprocess | None:
    """Preprocessing for image inputs, or None when the model input is not an image batch.
    Without ``images`` (only .npy tensors, used as they are) a model no picture fits (two
    channels, say) needs none."""
    if len(shape) != 4:
        if any(opts.get(k) is not None for k in ("mean", "std", "size", "resize")):
            raise InputError(f"the model input {shape} is not an image batch; image options do not apply")
        return None
    overrides = {k: v for k, v in opts.items() if v is not None}
    try:
        return preprocess_from_input_shape(shape, **overrides)
    except InputError:
        if images:
            raise
        return None


def bounds(pre: Preprocess | None, low, high, layout: str):
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


def _zoo_opts(entry) -> dict:
    pre = dict(entry.preprocessing) if entry is not None else {}
    if "size" in pre:
        pre["size"] = tuple(pre["size"])
    for k in ("mean", "std"):
        if k in pre:
            pre[k] = tuple(pre[k])
    return pre


def open_session(args, out: Path, *, model_name=None, preset="auto", rules=(), device="cpu", forward_engine="auto",
                 target=None, mean=None, std=None, scale=None, low=None, high=None, size_=None, resize=None,
                 fit=None, layout="auto", channel_order=None, labels=None, max_pixels=50_000_000,
                 output=None, inputs_optional: bool = False, **_ignored) -> Session:
    """Every check of model, inputs and options, before any output is written."""
    model, paths, entry = resolve_model(tuple(args), model_name)
    if paths or not inputs_optional:
        check_paths(paths)
    check_out(out)
    if target is not None and not target.strip():  # `--target "$CLASS"` with CLASS unset: not the top class
        raise InputError("--target is empty; leave it out to explain the top class")
    tgt = parse_target(target)
    opts = {"mean": floats(mean, "--mean"), "std": floats(std, "--std"), "scale": scale, "size": size(size_),
            "resize": resize, "fit": fit, "channel_order": channel_order,
            "layout": None if layout == "auto" else layout}
    opts = {**_zoo_opts(entry), **{k: v for k, v in opts.items() if v is not None}}
    lo, hi = floats(low, "--low"), floats(high, "--high")
    an = Analyzer(model, preset=preset, rules=rules, device=device, size=opts.get("size"), output=output,
                  forward_engine=forward_engine)
    scaled = raw_pixel_options(an.graph, opts)
    images = any(p.suffix.lower() != ".npy" for p in paths)
    pre = image_preprocess(an.input_shape, opts, images=not paths or images)
    if scaled is not None and pre is not None and images:  # divided by 255 first: a nearly black image, silently
        click.echo(f"note: the model rescales its input itself (x{scaled.scale:.3g}, from '{scaled.layer}'), so "
                   "pixels go in as 0-255 (--scale 1); give --scale to change that", err=True)
    lay = pre.layout if pre else (opts.get("layout") or "nchw")
    an.set_bounds(*bounds(pre, lo, hi, lay))
    names = read_labels(labels, an.num_classes) if labels else (entry.labels() if entry else None)
    if isinstance(tgt, ClassName):
        tgt = resolve_class(tgt.name, names, an.num_classes, "--target")
    if isinstance(tgt, int) and an.num_classes is not None and not 0 <= tgt < an.num_classes:
        raise InputError(f"--target {tgt} is out of range: the model has {an.num_classes} classes "
                         f"(0..{an.num_classes - 1})")
    if isinstance(tgt, NeuronTarget):
        an.graph.find(tgt.layer)
    return Session(an, paths, InputReader(an.input_shape, pre, lay, max_pixels), lay, names, tgt, entry)
