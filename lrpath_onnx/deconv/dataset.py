"""The images of a folder that drive a neuron most, shown as Zeiler & Fergus show them.

For each chosen neuron (a channel of a Conv layer): the ``top`` images on which its strongest
activation is highest (activation maximisation over a dataset), and the ``top`` images on which
it carries the most relevance for the explained class (relevance maximisation, as zennit-crp's
``FeatureVisualization`` does: the channel's relevance summed over positions). Each hit is
shown as the input patch the neuron sees at its strongest position (the receptive field) and
the deconvolution from there.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..api import Analyzer
from ..io.inputs import read_ahead, unique_names
from ..io.outputs import make_folder
from ..paths.neurons import activation_tensor
from ..viz.grid import draw_grid
from .crop import box_json, box_text, pair
from .reconstruct import Neuron, reconstruct

WAYS = ("activation", "relevance")


@dataclass(order=True)
class Hit:
    """One image's value for a neuron, and where in the layer's map it peaks."""

    value: float
    source: str
    name: str
    y: int | None
    x: int | None


def _peak(m: np.ndarray) -> tuple[int | None, int | None]:
    if m.ndim < 2:
        return None, None
    y, x = np.unravel_index(int(np.argmax(m)), m.shape)
    return int(y), int(x)


def scan(an: Analyzer, reader, files: list[Path], neurons: dict[str, list[int]], target, top: int = 9,
         batch_size: int = 8, progress=None) -> dict[tuple[str, int], dict[str, list[Hit]]]:
    """For every (layer, channel) of ``neurons``, the ``top`` hits by activation and by
    relevance for ``target`` over the images ``files`` (read by ``reader``), best first."""
    layers = list(neurons)
    tensors = {name: activation_tensor(an, an.graph.find(name)) for name in layers}
    an.request(*tensors.values())
    heaps: dict[tuple[str, int], dict[str, list[Hit]]] = {(l, c): {w: [] for w in WAYS} for l in layers for c in neurons[l]}
    for batch in read_ahead(reader.batches(files, batch_size)):
        x = np.stack([s.tensor for s in batch])
        exp = an.explain(x, target=target, keep=layers, keep_forward=True)
        for name in layers:
            act, rel = exp.forward[tensors[name]], exp.kept[name]
            for c in neurons[name]:
                for i, s in enumerate(batch):
                    a, r = act[i, c], rel[i, c]
                    for way, value, where in (("activation", float(np.max(a)), a), ("relevance", float(np.sum(r)), r)):
                        if not value > 0:  # a neuron that does not fire, or carries no relevance, shows nothing
                            continue
                        hit = Hit(value, str(s.source), s.name, *_peak(np.asarray(where)))
                        h = heaps[(name, c)][way]
                        (heapq.heappush if len(h) < top else heapq.heappushpop)(h, hit)
        if progress is not None:
            progress(len(batch))
    return {key: {w: sorted(h, reverse=True) for w, h in ways.items()} for key, ways in heaps.items()}


def render(an: Analyzer, reader, files: list[Path], found: dict, layout: str, order: str, folder: Path,
           top: int) -> list[dict]:
    """One grid per neuron in ``folder`` (rows: the most activating patches and their
    reconstructions, then the most relevant ones and theirs) and the JSON records."""
    make_folder(folder)
    base = {str(p): n for p, n in zip(files, unique_names(files))}  # the names the scan's batches gave
    samples: dict[str, dict] = {}

    def sample(hit: Hit):
        if hit.source not in samples:
            samples[hit.source] = {s.name: s for s in reader.read(Path(hit.source), base[hit.source])}
        return samples[hit.source][hit.name]

    records = []
    for (name, channel), ways in found.items():
        rows, rec = [], {"layer": name, "channel": channel}
        for way in WAYS:
            patches, recons, hits = [], [], []
            for hit in ways[way]:
                s = sample(hit)
                nr = Neuron(name, channel, hit.y, hit.x, hit.value)
                image = reconstruct(an, s.tensor[None], [nr])[0]
                patch, pic, box = pair(an, nr, image, s.display, layout, order)
                patches.append((patch, f"{hit.name} {hit.value:.3g}"))
                recons.append((pic, box_text(box)))
                hits.append({"image": hit.name, "source": hit.source, way: hit.value, "y": hit.y, "x": hit.x,
                             "receptive_field": box_json(box)})
            blank = [(np.full((8, 8, 3), 255, np.uint8), "")] * (top - len(hits))
            rows += patches + blank + recons + blank
            rec[f"by_{way}"] = hits
        fname = f"{name.replace('/', '_')}_c{channel}.png"
        draw_grid(folder / fname, rows, columns=top,
                  title=f"{name} c{channel}: most activating (rows 1-2), most relevant (rows 3-4)")
        rec["file"] = fname
        records.append(rec)
    return records
