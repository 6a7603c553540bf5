"""``lrpath demo``: the whole pipeline on the shipped ``mnist-vgg`` model and digits, offline."""

from __future__ import annotations

from pathlib import Path

import click

from ..models.registry import HERE, get
from .explain_cmd import run_explain
from .session import open_session

DIGITS = ("digit_3.png", "digit_7.png")


@click.command()
@click.option("--out", default="lrpath-demo", show_default=True, type=click.Path(path_type=Path),
              help="Output folder.")
def demo(out):
    """Explain the shipped mnist-vgg digit classifier on shipped digits; say where the pictures are."""
    entry = get("mnist-vgg")
    click.echo(f"model mnist-vgg: {entry.path()} ({entry.quality})")
    target = Path(out) / "explain"
    ses = open_session(["mnist-vgg", *(HERE / "digits" / d for d in DIGITS)], target)
    folder = run_explain(ses, target, batch_size=len(DIGITS))
    for d in DIGITS:
        click.echo(f"pictures: {folder / Path(d).stem / 'overlay.png'} and heatmap.png beside it")
    return 0
