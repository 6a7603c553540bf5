"""``lrpath audit MODEL --images DIR --out DIR``: fail the build when the model's reasoning is off."""

from __future__ import annotations

from pathlib import Path

import click

from ..audit import regions as R
from ..audit.checks import read_expected
from ..audit.config import CHECKS, load_config, with_options
from ..audit.run import AuditRun, previous_records
from ..errors import InputError
from ..io.inputs import list_images
from ..io.outputs import clean_temporaries, ensure_out_dir
from ..paths.ranking import SCORES
from .options import floats, progress
from .session import input_options, open_session


def _checks(chosen: tuple[str, ...] | None, expect, has_regions: bool, an) -> list[str]:
    """The checks to run; ``None`` (auto) = conservation, plus prediction with --expect and region
    with --masks/--boxes. Path fidelity is asked for by name: on models whose paths share a
    bottleneck neuron (the shipped mnist-vgg) few paths do not carry the output, by design."""
    from ..paths.neurons import graph_layers

    if chosen is None:
        return [c for c in CHECKS if c == "conservation" or (c == "prediction" and expect is not None)
                or (c == "region" and has_regions)]
    if "prediction" in chosen and expect is None:
        raise InputError("the prediction check needs --expect labels.csv")
    if "region" in chosen and not has_regions:
        raise InputError("the region check needs --masks DIR or --boxes boxes.json")
    if "path_fidelity" in chosen:
        graph_layers(an)  # a clear error now when the model has no chain of layers
    return [c for c in CHECKS if c in chosen]


@click.command()
@input_options(inputs="", target=False)
@click.option("--images", "images", required=True, type=click.Path(path_type=Path),
              help="Folder of images (or .npy tensors) to audit.")
@click.option("--expect", type=click.Path(path_type=Path), default=None,
              help="CSV of file,label (a class index or name): the prediction check.")
@click.option("--masks", "masks_dir", type=click.Path(path_type=Path), default=None,
              help="Folder of object masks, one per image with the same stem (white = object).")
@click.option("--boxes", type=click.Path(path_type=Path), default=None,
              help='JSON {"file": [x0, y0, x1, y1] or a list of boxes} in image pixels.')
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="TOML with [audit] k, per_layer, path_score, batch_size and [thresholds] conservation, "
                   "region_min_share, path_smape_max; options below override it.")
@click.option("--checks", "checks_text", default=None,
              help="Comma list of prediction, conservation, region, path_fidelity, faithfulness (default: "
                   "conservation, plus prediction with --expect and region with --masks/--boxes).")
@click.option("--min-region-share", type=float, default=None, help="Relevance-in-region threshold (default 0.5).")
@click.option("--conservation-range", default=None, help="LOW,HIGH for the conservation ratio (default 0.8,1.2).")
@click.option("--path-smape-max", type=float, default=None, help="Path-fidelity SMAPE threshold in % (default 20).")
@click.option("--faithfulness-min-gain", type=float, default=None,
              help="MoRF AOPC the heatmap must gain over a random one (default 0.05).")
@click.option("--k", type=click.IntRange(min=1), default=None, help="Paths kept by the path-fidelity check (default 5).")
@click.option("--per-layer", type=click.IntRange(min=1), default=None, help="Neurons per layer of the graph (default 16).")
@click.option("--path-score", type=click.Choice(SCORES), default=None,
              help="How the path-fidelity check ranks paths (default auto: the sum of flows on chains, the "
                   "relevance carried where skip connections make paths differ in length).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per explain batch (default 8).")
@click.option("--recursive", is_flag=True, help="Audit the images of subfolders too.")
@click.option("--resume", is_flag=True, help="Skip images already in OUT/audit.json (same settings, either engine).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Explain here, or on Ray workers (pip install 'lrpath-onnx[ray]').")
@click.option("--ray-address", default=None, help="An existing Ray cluster (e.g. ray://head:10001 or auto); "
                                                  "default: a local one.")
@click.option("--num-workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Ray actors, each with its own model session.")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="GPUs per Ray actor; > 0 runs the relevance pass with --device cuda there.")
def audit(args, out, images, expect, masks_dir, boxes, config_path, checks_text, min_region_share,
          conservation_range, path_smape_max, faithfulness_min_gain, k, per_layer, path_score, batch_size,
          recursive, resume, engine, ray_address, num_workers, gpus_per_worker, **opts):
    """Check every image in --images: expected prediction, relevance conservation, relevance
    inside the object region (the Clever Hans check) and path fidelity (the K-path model keeps
    the prediction). Writes OUT/audit.json and OUT/junit.xml; exit 0 when every check passes,
    1 when one fails, 2 on bad input."""
    if len(args) > 1:
        raise click.UsageError("audit takes one MODEL; the images come from --images")
    if masks_dir is not None and boxes is not None:
        raise InputError("give --masks or --boxes, not both")
    cons = floats(conservation_range, "--conservation-range")
    if cons is not None and len(cons) != 2:
        raise InputError("--conservation-range needs LOW,HIGH")
    chosen = tuple(c.strip() for c in checks_text.split(",") if c.strip()) if checks_text is not None else None
    cfg = with_options(load_config(config_path), region_min_share=min_region_share, path_smape_max=path_smape_max,
                       faithfulness_min_gain=faithfulness_min_gain,
                       k=k, per_layer=per_layer, path_score=path_score, batch_size=batch_size, checks=chosen,
                       conservation_min=cons[0] if cons else None, conservation_max=cons[1] if cons else None)
    if engine == "ray":  # before anything is read or written: no Ray is one line, exit 2
        from ..audit.ray_engine import import_ray

        import_ray()
    paths, skipped = list_images(images, recursive)
    if skipped:
        click.echo(f"note: skipped {skipped} entr{'y' if skipped == 1 else 'ies'} of {images} that "
                   f"{'are' if skipped > 1 else 'is'} neither an image nor a .npy tensor"
                   + ("" if recursive else " (subfolders need --recursive)"), err=True)
    ses = open_session([*args, *paths], out, **opts)
    an = ses.an
    expected = read_expected(expect, paths, ses.labels, an.num_classes) if expect is not None else {}
    checks = _checks(cfg.checks, expect, masks_dir is not None or boxes is not None, an)
    regions = None
    if "region" in checks:
        pre = ses.reader.pre
        hw = pre.size if pre is not None else tuple(an.input_shape[2:] if ses.layout == "nchw" else an.input_shape[1:3])
        if masks_dir is not None:
            regions = R.RegionSource(pre, hw, masks=R.find_masks(masks_dir, paths))
        else:
            regions = R.RegionSource(pre, hw, boxes=R.read_boxes(boxes, paths))
        regions.mask(paths[0])  # a mask that cannot fit the input at all is refused before any output
    out = ensure_out_dir(out)
    clean_temporaries(out)
    records = previous_records(out, cfg, checks) if resume else []
    run = AuditRun(ses, cfg, checks, expected, regions, out)
    if engine == "ray":
        from ..audit.ray_engine import RayEngine

        ray_engine = RayEngine(num_workers, gpus_per_worker, ray_address, [*args, paths[0]], opts, run)
        with progress(len(paths), "auditing") as bar:
            doc = ray_engine.run(run, paths, records, bar)
        ray_engine.shutdown()
    else:
        with progress(len(paths), "auditing") as bar:
            doc = run.run(paths, records, bar)
    s = doc["summary"]
    per = ", ".join(f"{c} {v['passed']}/{v['passed'] + v['failed']}" for c, v in s["checks"].items())
    speed = f", {s['images_per_second']:.2f} images/s" if s["images_per_second"] else ""
    if engine == "ray":
        speed += f" on {num_workers} Ray worker(s), {doc.get('retries', 0)} retried batch(es)"
    click.echo(f"audited {s['images']} images{speed}: {per}")
    for r in doc["images"]:
        for c, v in r["checks"].items():
            if not v["passed"]:
                click.echo(f"FAIL {r['image']} {c}: {v['message']}")
    click.echo(f"{'PASS' if s['passed'] else 'FAIL'}: {out / 'audit.json'}, {out / 'junit.xml'}")
    return 0 if s["passed"] else 1
