"""``lrpath demo``: the whole pipeline on the shipped ``mnist-vgg`` model and digits, offline."""

from __future__ import annotations

from pathlib import Path

import click

from ..models.registry import HERE, get
from .explain_cmd import run_explain

DIGITS = ("digit_3.png", "digit_7.png")


@click.command()
@click.option("--out", default="lrpath-demo", show_default=True, type=click.Path(path_type=Path),
              help="Output folder.")
def demo(out):
    """Explain the shipped mnist-vgg digit classifier on shipped digits; say where the pictures are."""
    entry = get("mnist-vgg")
    model = entry.path()
    click.echo(f"model mnist-vgg: {model} ({entry.quality})")
    folder = run_explain(model, [HERE / "digits" / d for d in DIGITS], Path(out) / "explain", {},
                         batch_size=len(DIGITS), entry=entry)
    for d in DIGITS:
        click.echo(f"pictures: {folder / Path(d).stem / 'overlay.png'} and heatmap.png beside it")
    return 0
