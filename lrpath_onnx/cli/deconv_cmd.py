"""``lrpath deconv MODEL INPUT --layer L --top 9 --out DIR``: what single neurons see."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np

from ..deconv.crop import box_json, box_text, pair
from ..deconv.dataset import render, scan
from ..deconv.reconstruct import (check_way_down, layer_activation, neurons_on_paths, picture, reconstruct,
                                  select_neurons)
from ..errors import InputError
from ..graph.layers import ConvLayer
from ..io.outputs import clean_temporaries, ensure_out_dir, make_folder, write_json
from ..io.inputs import list_images, read_ahead
from ..io.schema import model_json, stamp, target_json
from ..paths.neurons import activation_tensor
from ..viz.grid import draw_grid
from ..viz.heatmap import save_png
from .options import progress
from .session import input_options, open_session


def neurons_from_paths(path: Path) -> dict[str, list[int]]:
    """Layer → channels on the paths of a ``lrpath paths`` paths.json."""
    try:
        return neurons_on_paths(json.loads(Path(path).read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"--from-paths {path}: not a paths.json of `lrpath paths` ({exc})") from None


def _channels(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(c) for c in text.split(",")]
    except ValueError:
        raise InputError(f"--channels '{text}': expected comma-separated channel numbers") from None


@click.command()
@input_options(rules=False)
@click.option("--layer", "layers", multiple=True, help="Layer to reconstruct from (repeatable).")
@click.option("--channels", default=None, help="Channels of the layer, e.g. 3,17 (default: --top).")
@click.option("--top", type=click.IntRange(min=1), default=9, show_default=True,
              help="The channels with the highest activation for this input.")
@click.option("--from-paths", type=click.Path(path_type=Path), default=None,
              help="Reconstruct the Conv neurons on the paths of a `lrpath paths` paths.json.")
@click.option("--whole-map", is_flag=True, help="Keep the channel's whole map, not only its strongest activation.")
@click.option("--full-frame", is_flag=True,
              help="Show reconstructions on the whole input frame, not cut to each neuron's receptive field.")
@click.option("--dataset", type=click.Path(path_type=Path), default=None,
              help="A folder of images: for each neuron also the ones that activate it most and on which it is "
                   "most relevant for the explained class (--target, default the first input's top class).")
@click.option("--top-images", type=click.IntRange(min=1), default=9, show_default=True,
              help="How many images of --dataset per neuron and ranking.")
def deconv(args, out, layers, channels, top, from_paths, whole_map, full_frame, dataset, top_images, **opts):
    """Zeiler–Fergus reconstructions of single neurons of MODEL for each INPUT, each cut to
    the neuron's receptive field beside the input patch it sees; with --dataset, the images of
    a folder that drive each neuron most."""
    if opts.get("target") is not None and dataset is None:
        raise InputError("--target only applies with --dataset (the class the images' relevance is for)")
    files = list_images(dataset, option="--dataset")[0] if dataset is not None else []
    ses = open_session(args, out, **opts)
    an = ses.an
    wanted = neurons_from_paths(from_paths) if from_paths else {}
    if not from_paths and not layers:
        raise InputError("give --layer NAME (see `lrpath plan`) or --from-paths paths.json")
    for name in list(layers) + list(wanted):
        layer = an.graph.find(name)
        if not isinstance(layer, ConvLayer) and not from_paths:
            raise InputError(f"--layer {name}: deconvolution starts at a Conv layer, not {layer.op}")
    chosen = {l: _channels(channels) for l in layers}
    chosen.update({l: c for l, c in wanted.items() if isinstance(an.graph.find(l), ConvLayer)})
    for name, chans in chosen.items():  # checked before anything is written
        k = an.graph.find(name).out_channels
        bad = [c for c in chans or [] if not 0 <= c < k]
        if bad:
            raise InputError(f"--channels {bad[0]}: layer '{name}' has {k} channels (0..{k - 1})")
    for name in chosen:
        check_way_down(an, name)
        an.request(activation_tensor(an, an.graph.find(name)))
    order = "bgr" if (ses.reader.pre and ses.reader.pre.channel_order == "bgr") else "rgb"
    out = ensure_out_dir(out)
    clean_temporaries(out)
    shown: dict[str, set[int]] = {}
    first_class = None
    for batch in read_ahead(ses.reader.batches(ses.paths, 1)):
        sample = batch[0]
        folder = out / sample.name
        make_folder(folder)
        x = sample.tensor[None]
        fwd = an.forward(x)
        if first_class is None:
            first_class = int(np.asarray(fwd[an.graph.output]).reshape(-1).argmax())
        tiles, records = ([(sample.display, "input")] if full_frame else []), []
        t0 = time.perf_counter()
        for name, chans in chosen.items():
            _, act = layer_activation(an, fwd, name)
            neurons = select_neurons(act, name, chans, None if chans else top)
            shown.setdefault(name, set()).update(nr.channel for nr in neurons)
            recs = reconstruct(an, x, neurons, whole_map)
            for nr, rec in zip(neurons, recs):
                if full_frame:
                    pic, box = picture(rec, ses.layout, order), None
                    tiles.append((pic, nr.label()))
                else:
                    patch, pic, box = pair(an, nr, rec, sample.display, ses.layout, order, whole_map)
                    tiles += [(patch, nr.label()), (pic, box_text(box))]
                fname = f"{name.replace('/', '_')}_c{nr.channel}.png"
                save_png(folder / fname, pic, scale_to=224 if min(pic.shape[:2]) < 224 else None)
                records.append({"layer": name, "channel": nr.channel, "y": nr.y, "x": nr.x,
                                "activation": nr.activation, "file": fname, "receptive_field": box_json(box),
                                "max_abs": float(np.abs(rec).max())})
        seconds = time.perf_counter() - t0
        draw_grid(folder / "grid.png", tiles, columns=min(5 if full_frame else 8, len(tiles)),
                  title=f"{sample.name}: deconvolution of {len(records)} neuron(s)"
                  + ("" if full_frame else ", each input patch beside its reconstruction (receptive field)"))
        write_json(folder / "deconv.json", stamp("deconv", {**model_json(an.model_path, ses.model_name), "input": str(sample.source),
                                                            "whole_map": whole_map, "neurons": records,
                                                            "timings_s": {"reconstruction": seconds}}))
        click.echo(f"{sample.name}: {len(records)} reconstructions in {seconds:.2f} s -> {folder / 'grid.png'}")
    if files:
        target = ses.target if isinstance(ses.target, int) else first_class
        top_images_of(ses, files, {name: sorted(c) for name, c in shown.items()}, target, top_images, order,
                      out / "dataset")
    return 0


def top_images_of(ses, files: list[Path], neurons: dict[str, list[int]], target: int, top: int, order: str,
                  folder: Path) -> None:
    """``--dataset``: the folder's most activating and most relevant images per neuron, as
    grids and ``top_images.json`` in ``folder``."""
    an = ses.an
    t0 = time.perf_counter()
    with progress(len(files), "scanning --dataset") as bar:
        found = scan(an, ses.reader, files, neurons, target, top, progress=bar.update)
    t1 = time.perf_counter()
    records = render(an, ses.reader, files, found, ses.layout, order, folder, top)
    t2 = time.perf_counter()
    write_json(folder / "top_images.json", stamp("top_images", {
        **model_json(an.model_path, ses.model_name), "folder": str(files[0].parent), "images": len(files),
        "target": target_json(target, ses.labels, an.output_neuron(target)), "top": top, "neurons": records,
        "timings_s": {"scan": t1 - t0, "reconstructions": t2 - t1}}))
    click.echo(f"--dataset: {len(files)} images scanned in {t1 - t0:.1f} s, {len(records)} neuron(s) -> {folder}")
