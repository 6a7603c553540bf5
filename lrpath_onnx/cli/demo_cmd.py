"""``lrpath demo``: the whole pipeline on a model and picture it builds itself, offline."""

from __future__ import annotations

from pathlib import Path

import click
import onnx
from PIL import Image

from ..io.outputs import atomic_path, ensure_out_dir
from ..models.demo import build_demo_cnn, demo_picture
from .explain_cmd import run_explain


@click.command()
@click.option("--out", default="lrpath-demo", show_default=True, type=click.Path(path_type=Path),
              help="Output folder.")
def demo(out):
    """Build a small demo CNN and picture, explain it, and say where the pictures are.

    The demo network has seeded random weights (a trained demo model is on its way);
    it shows every output `lrpath explain` writes.
    """
    out = ensure_out_dir(out)
    model_path, picture = out / "demo_cnn.onnx", out / "shapes.png"
    with atomic_path(model_path) as tmp:
        onnx.save(build_demo_cnn(), str(tmp))
    with atomic_path(picture) as tmp:
        Image.fromarray(demo_picture()).save(tmp)
    click.echo(f"demo model {model_path} (random weights), picture {picture}")
    run_explain(model_path, [picture], out / "explain", {}, batch_size=1)
    click.echo(f"open {out / 'explain' / 'shapes' / 'overlay.png'} and heatmap.png beside it")
    return 0
