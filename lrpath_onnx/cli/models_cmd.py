"""``lrpath models``: the zoo, what is available here, and building what is not."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from ..errors import InputError
from ..io.schema import stamp
from ..models.registry import ZOO, cache_dir, get
from .options import progress


def _size(entry) -> str:
    p = entry.locate()
    return f"{p.stat().st_size / 2 ** 20:.1f} MB" if p else "-"


def _state(entry) -> str:
    if entry.available():
        return "ready"
    if entry.missing():
        return "needs " + ",".join(entry.missing())
    return "build" if entry.build else "missing"


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="List as JSON.")
@click.pass_context
def models(ctx, as_json):
    """List the model zoo (ready here, buildable, or which package is missing)."""
    if ctx.invoked_subcommand is not None:
        return 0
    if as_json:
        click.echo(json.dumps(stamp("models", {"models": [{"name": e.name, "state": _state(e), "path": str(e.locate() or ""),
                                "description": e.description, "source": e.source, "license": e.license,
                                "quality": e.quality, "preprocessing": e.preprocessing,
                                "install": e.install} for e in ZOO.values()]}), indent=2))
        return 0
    click.echo(f"{'name':26s} {'state':14s} {'size':>9s}  description")
    for e in ZOO.values():
        click.echo(f"{e.name:26s} {_state(e):14s} {_size(e):>9s}  {e.description}")
        if e.quality:
            click.echo(f"{'':26s} {'':14s} {'':>9s}  ({e.quality})")
    click.echo("build with `lrpath models build NAME`; explain with `lrpath explain --model-name NAME IMAGE`")
    return 0


@models.command()
@click.argument("name")
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              help="vgg16 only: a torchvision VGG16 state_dict (.npz, or .pth with torch installed).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="vgg16 only: where to write the model.")
def build(name, weights, out):
    """Build or export NAME into the cache (nothing is downloaded)."""
    if weights is not None or out is not None:
        if name != "vgg16":
            raise InputError("--weights/--out apply to vgg16 only")
        from ..models.vgg16 import export_vgg16

        path = out or cache_dir() / f"vgg16-{weights.stem if weights else 'random-seed0'}.onnx"
        export_vgg16(path, weights=str(weights) if weights else None)
        click.echo(f"vgg16: wrote {path} ({path.stat().st_size / 2 ** 20:.1f} MB)")
        return 0
    entry = get(name)
    found = entry.locate()
    if found is not None:
        click.echo(f"{name}: ready at {found}")
        return 0
    if entry.build is None:
        entry.path()  # raises the one-line reason (missing package)
    if entry.missing():
        entry.path()
    t0 = time.perf_counter()
    with progress(1, f"building {name}") as bar:
        path = entry.path()
        bar.update(1)
    click.echo(f"{name}: built {path} ({path.stat().st_size / 2 ** 20:.1f} MB) in {time.perf_counter() - t0:.1f} s")
    return 0
