"""``lrpath explain MODEL INPUT... --out DIR``: relevance heatmaps for images or tensors."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import click
import numpy as np

from ..io.batch_writer import BatchWriter
from ..io.inputs import read_ahead
from ..io.outputs import atomic_path, clean_temporaries, ensure_out_dir, write_npy
from ..io.results import record, write_sample
from ..viz.heatmap import save_png
from ..viz.tokens import patch_embedding, token_grid, token_picture
from .options import progress
from .session import Session, input_options, open_session

#: batches explained faster than this are written in line (see ``BatchWriter``), as are those
#: with layers' relevance kept (never held twice)
WRITE_BESIDE_S = 0.05


@click.command()
@input_options
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--keep-layers", default=None, help="Comma-separated layers whose relevance is saved too ('*' = all).")
@click.option("--token-map", is_flag=True, help="Also write tokens.png/tokens.npy: a ViT's relevance per patch token "
                                                "(at its patch embedding, features summed).")
def explain(args, out, batch_size, keep_layers, token_map, **opts):
    """Explain MODEL's decision on each INPUT (image or .npy tensor) and write to --out.

    MODEL is a .onnx file, or a zoo name (`lrpath models`), whose preprocessing and class
    names are then used unless options say otherwise.
    """
    run_explain(open_session(args, out, **opts), out, batch_size, keep_layers, token_map)
    return 0


def run_explain(ses: Session, out: Path, batch_size: int = 8, keep_layers: str | None = None,
                token_map: bool = False) -> Path:
    """The explain pipeline over a checked session, files written atomically; returns --out."""
    an = ses.an
    keep = tuple(k.strip() for k in keep_layers.split(",")) if keep_layers else ()
    for k in keep:
        if k != "*":
            an.graph.find(k)
    patches = patch_embedding(an.graph) if token_map else None
    out = ensure_out_dir(out)
    clean_temporaries(out)
    written: list[str] = []
    with progress(len(ses.paths), "explaining") as bar, BatchWriter() as writer:
        for batch in read_ahead(ses.reader.batches(ses.paths, batch_size)):
            x = np.stack([s.tensor for s in batch])
            started = time.perf_counter()
            exp = an.explain(x, target=ses.target, keep=keep + ((patches.name,) if patches else ()))
            recs = [record(an, exp, i, sample, ses.labels, len(batch), ses.model_name)
                    for i, sample in enumerate(batch)]
            writer.submit(partial(_write_batch, out, batch, exp.relevance, exp.kept, recs, ses.layout, keep, patches),
                          partial(_report_batch, out, batch, recs, bar, written),
                          inline=bool(keep) or time.perf_counter() - started < WRITE_BESIDE_S)
    click.echo(f"wrote {len(written)} explanation(s) to {out}")
    return out


def _write_batch(out: Path, batch, relevance, kept: dict, recs: list[dict], layout: str, keep: tuple,
                 patches) -> None:
    """Every file of one explained batch (on the writer thread; it holds only what it writes)."""
    for i, (sample, rec) in enumerate(zip(batch, recs)):
        folder = out / sample.name
        write_sample(folder, sample, relevance[i], rec, layout)
        if keep:
            with atomic_path(folder / "layer_relevance.npz") as tmp:
                np.savez(tmp, **{k: v[i] for k, v in kept.items() if k in keep or "*" in keep})
        if patches is not None:
            grid = token_grid(kept[patches.name][i])
            write_npy(folder / "tokens.npy", grid)
            save_png(folder / "tokens.png", token_picture(grid))


def _report_batch(out: Path, batch, recs: list[dict], bar, written: list[str]) -> None:
    """A batch's summary lines and progress, once its files exist."""
    for sample, rec in zip(batch, recs):
        _summary(sample.name, rec, out / sample.name)
        written.append(sample.name)
    bar.update(len({s.source for s in batch}))


def _summary(name: str, rec: dict, folder: Path) -> None:
    t = rec["target"]
    what = t["neuron"] if "neuron" in t else f"class {t['index']}" + (f" ({t['label']})" if t.get("label") else "")
    ratio = rec["conservation"]["ratio"]
    logit = "" if rec["logit"] is None else f", logit {rec['logit']:.4g}"
    cons = "" if ratio is None else f", conservation {ratio:.4f}"
    click.echo(f"{name}: {what}{logit}{cons} -> {folder}")
    for w in rec["warnings"]:
        click.echo(f"warning: {name}: {w}", err=True)
