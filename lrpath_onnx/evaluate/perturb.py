"""Region perturbation (Samek et al., IEEE TNNLS 2017): remove regions in the order a heatmap
ranks them and watch the explained output.

The input is split into square patches (the last row/column of patches is cut where the
patch size does not divide the image). A heatmap ranks them by the relevance they hold
(MoRF: most relevant first; LeRF: least relevant first; ties by patch index). Step k of S
replaces the first ``round(k·R/S)`` patches of that order by a baseline image, so step 0 is
the image itself and step S the baseline everywhere. Everything works on (C, H, W) views;
the runner moves NHWC models' tensors into that view and back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..errors import InputError

BASELINES = ("blur", "mean", "zeros", "noise")


@dataclass(frozen=True)
class Regions:
    """Patch index of every pixel (``labels``, H × W) and how many patches there are."""

    labels: np.ndarray
    count: int

    @classmethod
    def patches(cls, height: int, width: int, patch: int) -> "Regions":
        if patch < 1:
            raise InputError(f"--patch must be at least 1 pixel, got {patch}")
        cols = -(-width // patch)
        rows = -(-height // patch)
        labels = (np.arange(height)[:, None] // patch) * cols + (np.arange(width)[None, :] // patch)
        return cls(labels.astype(np.int64), rows * cols)

    def scores(self, heatmap: np.ndarray) -> np.ndarray:
        """Relevance summed per patch (``heatmap``: H × W)."""
        return np.bincount(self.labels.ravel(), weights=np.asarray(heatmap, np.float64).ravel(),
                           minlength=self.count)


def order(scores: np.ndarray, how: str) -> np.ndarray:
    """Patch indices in removal order: ``morf`` highest score first, ``lerf`` lowest first;
    equal scores by patch index."""
    if how == "morf":
        return np.lexsort((np.arange(len(scores)), -scores))
    if how == "lerf":
        return np.lexsort((np.arange(len(scores)), scores))
    raise ValueError(how)


def step_counts(count: int, steps: int) -> np.ndarray:
    """Patches removed after each step 0…S (S = min(steps, count))."""
    s = max(1, min(steps, count))
    return np.rint(np.arange(s + 1) * count / s).astype(np.int64)


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Each channel of ``x`` (C, H, W) blurred by a separable Gaussian (edges reflected)."""
    radius = max(1, int(round(3 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    out = np.asarray(x, np.float64)
    for axis in (1, 2):
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect" if out.shape[axis] > radius else "edge")
        out = sum(k[i] * np.take(padded, np.arange(i, i + out.shape[axis]), axis=axis) for i in range(len(k)))
    return out.astype(x.dtype)


def baseline(x: np.ndarray, kind: str, patch: int, rng: np.random.Generator) -> np.ndarray:
    """What removed patches are replaced by, for an image ``x`` (C, H, W) in the model's input space.

    ``blur``: the image blurred (σ = half a patch), so removal takes the detail away but not
    the colour; ``mean``: each channel's mean; ``zeros``: 0 (the normalised mean colour for
    normalised inputs); ``noise``: uniform noise over the image's own value range.
    """
    if kind == "blur":
        return gaussian_blur(x, max(1.0, patch / 2))
    if kind == "mean":
        return np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape).astype(x.dtype)
    if kind == "zeros":
        return np.zeros_like(x)
    if kind == "noise":
        return rng.uniform(float(x.min()), float(x.max()), x.shape).astype(x.dtype)
    raise InputError(f"unknown --baseline '{kind}'; choose {', '.join(BASELINES)}")


def perturbed(x: np.ndarray, base: np.ndarray, regions: Regions, removal: np.ndarray,
              counts: np.ndarray) -> Iterator[np.ndarray]:
    """The inputs of steps 1…S (step 0 is ``x``): cumulatively more patches from ``base``."""
    cur = x.copy()
    rank = np.empty(regions.count, np.int64)
    rank[removal] = np.arange(regions.count)
    pixel_rank = rank[regions.labels]  # when each pixel's patch goes
    for k in range(1, len(counts)):
        changed = (pixel_rank >= counts[k - 1]) & (pixel_rank < counts[k])
        cur[:, changed] = base[:, changed]
        yield cur.copy()


def aopc(curve: np.ndarray) -> float:
    """Samek's AOPC of a normalised curve: the mean drop 1 − f(x_k)/f(x_0) over steps 0…S."""
    return float(np.mean(1.0 - np.asarray(curve, np.float64)))


def bootstrap(values: np.ndarray, rng: np.random.Generator, rounds: int = 1000,
              level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of ``values`` over images resampled with replacement."""
    v = np.asarray(values, np.float64)
    if len(v) < 2:
        return float(v.mean()), float(v.mean())
    means = v[rng.integers(0, len(v), (rounds, len(v)))].mean(axis=1)
    lo, hi = np.percentile(means, [50 * (1 - level), 100 - 50 * (1 - level)])
    return float(lo), float(hi)
