"""Run the cascading randomisation check for ``lrpath evaluate --sanity`` and draw its picture row."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ..paths.scores import spearman
from ..viz.grid import draw_grid
from ..viz.heatmap import heatmap_rgb, relevance_map
from .methods import MethodContext, attribute
from .sanity import randomized, ssim, temporary_folder, verdict, weight_groups, write_model


def _maps(ctx: MethodContext, names: list[str], x: np.ndarray, targets: list[int], batch: int) -> dict:
    out = {m: [] for m in names}
    for i in range(0, len(x), batch):
        for m in names:
            out[m].append(attribute(m, ctx, x[i:i + batch], targets[i:i + batch]))
    return {m: [relevance_map(r, ctx.layout) for r in np.concatenate(v)] for m, v in out.items()}


def run_sanity(ses, names: list[str], ctx: MethodContext, steps: int, batch: int, out: Path) -> dict:
    """Randomise the top layer group, then the top two … down to the first; compare every
    method's maps with the trained network's (same images, same explained classes)."""
    from ..cli.evaluate_cmd import inner_output, plain_forward

    methods = [m for m in names if m != "random"]
    graph = ses.an.graph
    groups = weight_groups(graph, steps)
    samples = [s for b in ses.reader.batches(ses.paths, batch) for s in b]
    x = np.stack([s.tensor for s in samples])
    logits = np.asarray(ctx.forward(x)).reshape(len(x), -1)
    targets = [int(ses.target) if isinstance(ses.target, int) else int(l.argmax()) for l in logits]
    trained = _maps(ctx, methods, x, targets, batch)
    fixed = ses.an.input_shape[0] if ses.an.input_shape and ses.an.input_shape[0] else None
    steps_doc, pictures = [], {m: [(heatmap_rgb(trained[m][0]), "trained")] for m in methods}
    done: list[str] = []
    with temporary_folder() as tmp:
        for k, group in enumerate(groups):
            done += group
            path = write_model(randomized(Path(ctx.model_path), graph, done, ctx.seed), Path(tmp), f"r{k}.onnx")
            forward = plain_forward(path, ctx.device, fixed, inner_output(ses.an))
            rctx = replace(ctx, model_path=str(path), forward=forward, _analyzers={}, _random=None)
            maps = _maps(rctx, methods, x, targets, batch)
            rec = {"randomized": list(done), "methods": {}}
            for m in methods:
                rec["methods"][m] = {
                    "spearman_abs": float(np.mean([spearman(np.abs(a), np.abs(b), support=True)
                                                   for a, b in zip(trained[m], maps[m])])),
                    "spearman": float(np.mean([spearman(a, b) for a, b in zip(trained[m], maps[m])])),
                    "ssim": float(np.mean([ssim(a, b) for a, b in zip(trained[m], maps[m])])),
                }
                pictures[m].append((heatmap_rgb(maps[m][0]), f"top {len(done)} layer(s)"))
            steps_doc.append(rec)
    tiles = [t for m in methods for t in [(p, f"{m}: {label}") for p, label in pictures[m]]]
    draw_grid(out / "sanity.png", tiles, columns=len(groups) + 1,
              title=f"{samples[0].name}: heatmaps as the layers are randomised, top first")
    summary = []
    for m in methods:
        first = steps_doc[0]["methods"][m]["spearman_abs"]
        last = steps_doc[-1]["methods"][m]
        summary.append({"name": m, "spearman_abs_top_group": first, "spearman_abs_all_layers": last["spearman_abs"],
                        "spearman_all_layers": last["spearman"],
                        "verdict": verdict(first, last["spearman_abs"], last["spearman"])})
    return {"model": ctx.model_path, "images": [s.name for s in samples], "groups": groups, "steps": steps_doc,
            "methods": summary, "picture": "sanity.png"}
