"""The cascading model-randomisation sanity check (Adebayo et al., NeurIPS 2018).

Re-initialise the weights of the top layer group, explain again, then the top two groups,
and so on down to the first layer; after each step compare every method's heatmaps with
the original ones (Spearman rank correlation of the absolute maps — over the pixels where
either map is non-zero — and of the signed maps, SSIM). A method whose
maps survive the network's randomisation explains the input, not the model: Sixt et al.
(ICML 2020) show that z⁺/αβ-like rules can be insensitive to the upper layers.
"""

from __future__ import annotations

import tempfile
import zlib
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import InputError
from ..graph.constants import stored_tensors
from ..graph.layers import ConvLayer, DenseLayer, LayerGraph
from .perturb import gaussian_blur

#: below these, a method's maps changed enough once every layer was randomised
FAIL_SPEARMAN = 0.5
#: above this after randomising only the top group, a method ignores the upper layers
TOP_INSENSITIVE = 0.9


def weight_groups(graph: LayerGraph, steps: int) -> list[list[str]]:
    """Conv/dense layers from the output down, split into ``steps`` consecutive groups."""
    layers = [l.name for l in reversed(graph.layers) if isinstance(l, (ConvLayer, DenseLayer))]
    if not layers:
        raise InputError("the model has no Conv or dense layer to randomise")
    steps = max(1, min(steps, len(layers)))
    cuts = np.rint(np.linspace(0, len(layers), steps + 1)).astype(int)
    return [layers[a:b] for a, b in zip(cuts[:-1], cuts[1:])]


def randomized(model_path: Path, graph: LayerGraph, layer_names: list[str], seed: int) -> onnx.ModelProto:
    """The model with the weights (and biases) of ``layer_names`` redrawn from N(0, σ²) with
    each tensor's own σ; every other tensor as it was. Each tensor's draw depends only on
    ``seed`` and its name, so a cascade keeps the layers it already randomised as they were."""
    proto = onnx.load(str(model_path))
    stored = stored_tensors(proto)
    for name in layer_names:
        for src in graph.find(name).sources:
            rng = np.random.default_rng([seed, zlib.crc32(src.encode())])
            if src in stored:
                old = numpy_helper.to_array(stored[src])
                new = rng.normal(0.0, float(old.std()) or 1e-2, old.shape).astype(old.dtype)
                stored[src].CopyFrom(numpy_helper.from_array(new, stored[src].name))
            else:
                raise InputError(f"cannot randomise '{name}': its weight '{src}' is computed, not stored")
    return proto


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity of two maps, each scaled to [0, 1] by its largest magnitude
    (Wang et al. 2004: Gaussian window σ = 1.5, K1 = 0.01, K2 = 0.03)."""
    x, y = (np.abs(m) / (np.abs(m).max() or 1.0) for m in (a, b))
    blur = lambda m: gaussian_blur(m[None].astype(np.float64), 1.5)[0]  # noqa: E731
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return float(np.mean((2 * mx * my + c1) * (2 * sxy + c2) / ((mx * mx + my * my + c1) * (sxx + syy + c2))))


def verdict(first_step: float, last_step: float, last_signed: float) -> str:
    """What the Spearman correlations (of absolute maps) after the top group and after every
    layer say; ``last_signed`` is the signed maps' correlation after every layer."""
    if last_step >= FAIL_SPEARMAN:
        return (f"fails: with every layer randomised, where its maps put relevance still correlates "
                f"{last_step:.2f} with the trained network's (signed maps: {last_signed:.2f}) — their shape "
                "comes from the input, not the model")
    if first_step >= TOP_INSENSITIVE:
        return (f"insensitive to the top layers: randomising them leaves a correlation of {first_step:.2f} "
                "(as Sixt et al. 2020 show for z⁺/αβ-like rules)")
    return "passes: the maps change as the network is randomised"


def write_model(proto: onnx.ModelProto, folder: Path, name: str) -> Path:
    path = folder / name
    onnx.save(proto, str(path))
    return path


def temporary_folder():
    return tempfile.TemporaryDirectory(prefix="lrpath-sanity-")
