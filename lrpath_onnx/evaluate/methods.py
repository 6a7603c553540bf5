"""The explanation methods ``lrpath evaluate`` compares, each giving one input-shaped map per image.

- any LRP preset (``auto``, ``epsilon-gamma-box``, ``conserving`` …), ``--rule`` overrides applied;
- ``gradient``: d logit / d input, through the same op handlers' true derivatives;
- ``gradient-x-input``: that times the input;
- ``smoothgrad``: the gradient averaged over ``n`` copies with Gaussian noise of σ × the
  input's value range (Smilkov et al. 2017);
- ``occlusion``: the drop of the logit when a patch is replaced by the baseline (the
  black-box reference; its forwards run in onnxruntime batches);
- ``random``: uniform noise, seeded — what a method must beat.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..api import Analyzer
from ..errors import InputError
from ..plan.presets import PRESETS
from .perturb import Regions, baseline

GRADIENT_METHODS = ("gradient", "gradient-x-input", "smoothgrad")
OTHER_METHODS = ("occlusion", "random")


@dataclass
class MethodContext:
    """What the methods share for one run: the model, its preprocessing layout, settings."""

    model_path: str
    rules: tuple[str, ...]
    low: np.ndarray
    high: np.ndarray
    layout: str
    forward: Callable[[np.ndarray], np.ndarray]   # model-layout batch → logits (onnxruntime)
    patch: int
    baseline: str
    seed: int = 0
    smoothgrad_n: int = 16
    smoothgrad_sigma: float = 0.15
    device: str = "cpu"
    output: str | None = None  # the model output explained (``--model-output``)
    forward_engine: str = "auto"  # what runs the analyzers' forward passes (``--forward-engine``)
    _analyzers: dict = field(default_factory=dict)
    _random: np.random.Generator | None = None

    def random(self) -> np.random.Generator:
        """One seeded stream for the ``random`` method: every image gets its own draw."""
        if self._random is None:
            self._random = np.random.default_rng(self.seed)
        return self._random

    def analyzer(self, preset: str) -> Analyzer:
        """One analyzer per preset (the gradient methods share ``auto``'s)."""
        if preset not in self._analyzers:
            an = Analyzer(self.model_path, preset=preset, rules=self.rules if preset in LRP_NAMES else (),
                          device=self.device, output=self.output, forward_engine=self.forward_engine)
            an.set_bounds(self.low, self.high)
            self._analyzers[preset] = an
        return self._analyzers[preset]


LRP_NAMES = ("auto",) + tuple(PRESETS)


def check_methods(names: list[str]) -> list[str]:
    """The method names, checked; unknown names list the valid ones."""
    valid = list(LRP_NAMES) + list(GRADIENT_METHODS) + list(OTHER_METHODS)
    bad = [n for n in names if n not in valid]
    if bad:
        raise InputError(f"unknown method '{bad[0]}'; choose from {', '.join(valid)}")
    if len(set(names)) != len(names):
        raise InputError("--methods names a method twice")
    return names


def to_chw(x: np.ndarray, layout: str) -> np.ndarray:
    """A sample (model layout, no batch axis) as (C, H, W)."""
    return np.moveaxis(x, -1, 0) if layout == "nhwc" else x


def from_chw(x: np.ndarray, layout: str) -> np.ndarray:
    return np.moveaxis(x, 0, -1) if layout == "nhwc" else x


def attribute(name: str, ctx: MethodContext, x: np.ndarray, targets: list[int]) -> np.ndarray:
    """Maps of method ``name`` for the batch ``x`` (model layout), one per sample, same shape."""
    return attribute_conserved(name, ctx, x, targets)[0]


def attribute_conserved(name: str, ctx: MethodContext, x: np.ndarray,
                        targets: list[int]) -> tuple[np.ndarray, list[float | None] | None]:
    """``attribute``'s maps and, for an LRP method, each sample's conservation ratio (input
    relevance over the explained logit; None where the logit is 0); None for the others."""
    if name in LRP_NAMES:
        exp = ctx.analyzer(name).explain(x, target=list(targets))
        return exp.relevance, [exp.conservation(i)["ratio"] for i in range(len(x))]
    return _attribute_other(name, ctx, x, targets), None


def _attribute_other(name: str, ctx: MethodContext, x: np.ndarray, targets: list[int]) -> np.ndarray:
    if name == "random":
        return ctx.random().uniform(0.0, 1.0, x.shape).astype(np.float32)
    if name == "occlusion":
        return np.stack([occlusion(ctx, x[i], t) for i, t in enumerate(targets)])
    an = ctx.analyzer("auto")
    if name == "gradient":
        return an.gradient(x, target=list(targets)).relevance
    if name == "gradient-x-input":
        return an.gradient(x, target=list(targets)).relevance * x
    return smoothgrad(an, x, targets, ctx.smoothgrad_n, ctx.smoothgrad_sigma, ctx.seed)


def smoothgrad(an: Analyzer, x: np.ndarray, targets: list[int], n: int, sigma: float, seed: int) -> np.ndarray:
    """The gradient averaged over ``n`` noisy copies of each sample (σ relative to its range)."""
    if n < 1 or sigma < 0:
        raise InputError(f"smoothgrad needs n ≥ 1 and σ ≥ 0, got n={n}, σ={sigma}")
    rng = np.random.default_rng(seed)
    out = np.zeros(x.shape, np.float64)
    for i in range(x.shape[0]):
        spread = float(x[i].max() - x[i].min()) or 1.0
        noisy = x[i][None] + rng.normal(0.0, sigma * spread, (n, *x.shape[1:])).astype(np.float32)
        out[i] = an.gradient(noisy, target=[targets[i]] * n).relevance.mean(axis=0)
    return out.astype(np.float32)


def occlusion(ctx: MethodContext, x: np.ndarray, target: int, batch: int = 64) -> np.ndarray:
    """Per pixel, the drop of the target logit when its patch is replaced by the baseline."""
    chw = to_chw(x, ctx.layout)
    regions = Regions.patches(chw.shape[1], chw.shape[2], ctx.patch)
    base = baseline(chw, ctx.baseline, ctx.patch, np.random.default_rng(ctx.seed))
    ref = float(ctx.forward(x[None])[0].reshape(-1)[target])
    drops = np.empty(regions.count)
    for start in range(0, regions.count, batch):
        ids = range(start, min(start + batch, regions.count))
        inputs = []
        for r in ids:
            cur = chw.copy()
            m = regions.labels == r
            cur[:, m] = base[:, m]
            inputs.append(from_chw(cur, ctx.layout))
        logits = ctx.forward(np.stack(inputs)).reshape(len(inputs), -1)[:, target]
        drops[start:start + len(inputs)] = ref - logits
    heat = drops[regions.labels] / np.bincount(regions.labels.ravel())[regions.labels]
    return from_chw(np.broadcast_to(heat, chw.shape).astype(np.float32) / chw.shape[0], ctx.layout)
