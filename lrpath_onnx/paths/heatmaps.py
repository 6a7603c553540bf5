"""Heatmaps of the K best paths: relevance-based and activation-based.

Relevance-based, ``layerwise`` (the default): see ``conditional``. Relevance-based,
``strict``: LRP run again from the same target, keeping at every graph layer only the
relevance of the neurons on the K paths (the others are zeroed where the relevance
arrives at the layer's output), down to the input.

Activation-based: for every Conv layer on the paths, the activation maps (after the
layer's ReLU) of its path neurons, each divided by its own maximum (maps that never fire
are left out), averaged, resized to the input's height and width (bilinear); the map is the
mean over those layers, in [0, 1]. Dense layers have no spatial extent and do not take part.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..api import Analyzer, Explanation
from ..graph.layers import ConvLayer
from ..viz.grid import draw_grid
from ..viz.heatmap import heatmap_rgb, relevance_map
from .conditional import LayerwiseHeatmaps
from .neurons import NeuronGraph, activation_tensor, graph_layers


def inner_masks(exp: Explanation, masks: dict[str, np.ndarray], sample: int = 0) -> dict[str, np.ndarray]:
    """The path masks of the layers they restrict: a layer whose relevance lies wholly on its
    path neurons (the target's own layer, or the one feeding it channel by channel) is left
    out, as restricting it changes nothing; so is a layer no path passes through (a
    projection on a skip connection the paths go round), which they do not restrict but skip."""
    out = {}
    for name, m in masks.items():
        r = exp.kept[name][sample]
        if np.any(m) and np.any(r.reshape(len(m), -1)[np.asarray(m) == 0]):
            out[name] = m
    return out


def draw_layer_row(path, lw: LayerwiseHeatmaps, layout: str, title: str) -> None:
    """One heatmap per graph layer (H_l), each on its own scale and labelled with the share of
    the layer's relevance on the path neurons, then the summary map."""
    tiles = []
    for name in lw.layers:
        share = lw.layer_share[name]
        tiles.append((heatmap_rgb(relevance_map(lw.maps[name], layout)),
                      f"{name} {share:.0%}" if share is not None else name))
    share = lw.summary_share
    tiles.append((heatmap_rgb(relevance_map(lw.summary, layout)),
                  "mean" + (f", {share:.1%} of R" if share is not None else "")))
    draw_grid(path, tiles, columns=min(7, len(tiles)), tile=150, title=title)


def relevance_heatmap(an: Analyzer, x: np.ndarray, target, masks: dict[str, np.ndarray]) -> np.ndarray:
    """Input relevance (one sample, model layout) with only the masked neurons passing."""
    return an.explain(x, target=target, masks=masks).relevance[0]


def activation_heatmap(an: Analyzer, exp: Explanation, ng: NeuronGraph, masks: dict[str, np.ndarray],
                       size: tuple[int, int], sample: int = 0) -> np.ndarray:
    """(H, W) map in [0, 1] of the path neurons' activations (see module docstring)."""
    per_layer = []
    for layer in graph_layers(an):
        if not isinstance(layer, ConvLayer):
            continue
        act = exp.forward[activation_tensor(an, layer)][sample]
        chosen = np.nonzero(masks.get(layer.name, np.zeros(0)))[0]
        maps = []
        for c in chosen:
            m = np.maximum(act[c].astype(np.float64), 0)
            if m.max() > 0:
                maps.append(m / m.max())
        if maps:
            mean = np.mean(maps, axis=0).astype(np.float32)
            img = Image.fromarray(mean, mode="F").resize((size[1], size[0]), Image.BILINEAR)
            per_layer.append(np.asarray(img, np.float64))
    if not per_layer:
        return np.zeros(size)
    out = np.mean(per_layer, axis=0)
    return np.clip(out / out.max(), 0, 1) if out.max() > 0 else out
