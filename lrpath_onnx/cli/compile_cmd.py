"""``lrpath compile MODEL --out MODEL.lrp.onnx``: the model and its relevance pass as one ONNX file."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from ..errors import InputError
from ..io.outputs import atomic_path
from .options import output_option
from .session import open_session


@click.command(name="compile")
@click.argument("args", nargs=-1, metavar="[MODEL] [INPUT...]")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The compiled .onnx file.")
@click.option("--preset", default="auto", show_default=True, metavar="NAME", help="Rule preset, as for explain.")
@click.option("--rule", "rules", multiple=True, metavar="PATTERN=RULE[:PARAM]", help="Rule overrides, as for explain.")
@click.option("--keep-layers", default=None, help="Comma-separated layers whose relevance is an output too.")
@click.option("--mean", default=None, help="Per-channel mean after scaling (z^B bounds, --check images).")
@click.option("--std", default=None, help="Per-channel std after scaling (z^B bounds, --check images).")
@click.option("--scale", type=float, default=None, help="Pixel scale before mean/std (default 1/255).")
@click.option("--low", default=None, help="z^B lower bound(s) in the model's input space.")
@click.option("--high", default=None, help="z^B upper bound(s) in the model's input space.")
@click.option("--size", "size_", default=None,
              help="Input size H[,W] the file is compiled for, when the model does not fix it.")
@click.option("--layout", type=click.Choice(["auto", "nchw", "nhwc"]), default="auto", show_default=True)
@click.option("--target", default=None, help="Class for --check (default: top-1; the file takes any).")
@click.option("--check", is_flag=True, help="Run the compiled file in a plain onnxruntime session and the "
                                            "analyzer on each INPUT; print the largest difference.")
@click.option("--web", type=click.Path(path_type=Path), default=None,
              help="Also write a static page to this folder that explains dropped pictures in the browser "
                   "(onnxruntime-web; serve it with `python -m http.server -d DIR`).")
@click.option("--labels", type=click.Path(path_type=Path), default=None,
              help="Class names for --web's page, one per line (default: a zoo model's own).")
@click.option("--ort-web", type=click.Path(path_type=Path), default=None,
              help="onnxruntime-web for --web: the npm package's .tgz (`npm pack onnxruntime-web`) or folder "
                   "(default: $LRPATH_ORT_WEB, ./node_modules/onnxruntime-web, ~/.cache/lrpath-onnx/onnxruntime-web-*.tgz).")
@click.option("--model-name", default=None, help="A zoo model (`lrpath models`); MODEL is then left out.")
@output_option
def compile_cmd(args, out, keep_layers, check, web, ort_web, **opts):
    """Write MODEL with its LRP relevance pass as standard ONNX operators.

    The file keeps the model's inputs and outputs, takes an optional int64 input `target`
    [N] (class per sample; -1 or absent: top-1) and adds the output `relevance` (the
    input's shape and layout), plus `relevance/<layer>` for --keep-layers. It runs in any
    onnxruntime (C++, C#, Java, JavaScript, mobile; CPU, CUDA, TensorRT, DirectML).
    """
    from ..compile.check import compare
    from ..compile.model import compile_model, save
    from ..compile.web import (
        HOW,
        SITE,
        WEB_LIMIT,
        check_site_folder,
        ort_web_candidates,
        page_config,
        write_site,
    )

    if out.suffix.lower() != ".onnx":
        raise InputError(f"--out {out}: give a .onnx file name")
    if out.exists() and out.is_dir():
        raise InputError(f"--out {out} is a folder; give a .onnx file name")
    if opts.get("forward_engine", "auto") == "auto":  # the file runs onnxruntime's forward: --check compares with it
        opts["forward_engine"] = "onnxruntime"
    ses = open_session(args, out.parent if str(out.parent) else Path("."), inputs_optional=True, **opts)
    if check and not ses.paths:
        raise InputError("--check needs INPUT files (images or .npy tensors) to compare on")
    if ses.paths and not check:
        raise InputError("INPUT files are only read with --check")
    if ses.target is not None and not isinstance(ses.target, int):
        raise InputError(f"--target {ses.target}: the compiled file explains classes; give a class")
    keep = tuple(k.strip() for k in keep_layers.split(",")) if keep_layers else ()
    if web is not None:
        if ses.reader.pre is None:
            raise InputError("--web needs a model that takes pictures (its input is not an image batch)")
        check_site_folder(web, out)
        if not any(c.exists() for c in ort_web_candidates(ort_web)):
            raise InputError(f"--web needs onnxruntime-web: {HOW}")
    proto = compile_model(ses.an, keep)
    if web is not None and proto.ByteSize() > WEB_LIMIT:
        raise InputError(f"--web: the compiled model is {proto.ByteSize() / 2**30:.1f} GB; a page can load "
                         f"at most {WEB_LIMIT / 2**30:.1f} GB (one protobuf, WebAssembly's memory)")
    with atomic_path(out) as tmp:
        save(proto, tmp)
    n_nodes = len(proto.graph.node)
    click.echo(f"wrote {out} ({n_nodes} nodes, preset {ses.an.plan().describe()})")
    if web is not None:
        config = page_config(ses.an, ses.reader.pre, ses.labels, SITE[1])
        version = write_site(web, out, proto, config, ort_web)
        click.echo(f"wrote {web}/index.html (onnxruntime-web {version}); serve it: python -m http.server -d {web}")
    if check:
        x = np.concatenate([np.stack([s.tensor for s in b]) for b in ses.reader.batches(ses.paths, 8)])
        for line in compare(ses.an, out, x, ses.target, keep):
            click.echo(line)
    return 0

