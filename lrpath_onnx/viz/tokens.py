"""A transformer's relevance per token: the patch grid.

The pixel heatmap brings token relevance back through the patch embedding like any
convolution; the token map stops one step earlier and shows how much relevance each patch
token holds (its features summed) — the grid attention works on.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..graph.layers import ConvLayer, LayerGraph
from .heatmap import heatmap_rgb, with_scale_bar


def patch_embedding(graph: LayerGraph) -> ConvLayer:
    """The first convolution whose windows do not overlap (stride = kernel): a patch embedding."""
    for layer in graph.layers:
        if isinstance(layer, ConvLayer) and tuple(layer.geometry.strides) == tuple(layer.kernel) \
                and layer.kernel != (1, 1):
            return layer
    raise InputError("--token-map needs a patch embedding (a convolution with stride = kernel, as a ViT's); "
                     "this model has none")


def token_grid(relevance: np.ndarray) -> np.ndarray:
    """(grid H, grid W) relevance per token from the patch embedding's output relevance (C, H, W)."""
    return np.asarray(relevance, np.float64).sum(axis=0)


def token_picture(grid: np.ndarray) -> np.ndarray:
    """The grid as a diverging heatmap (one square per token) with its colour bar."""
    return with_scale_bar(heatmap_rgb(grid), grid, note=f"{grid.size} patch tokens ({grid.shape[0]} by {grid.shape[1]})")
