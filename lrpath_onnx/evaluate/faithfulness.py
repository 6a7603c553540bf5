"""One image's MoRF AOPC against a random heatmap's: the audit's faithfulness check and the
report's "how faithful is this heatmap" section, with ``lrpath evaluate``'s definitions."""

from __future__ import annotations

import numpy as np

from ..viz.heatmap import relevance_map
from . import perturb
from .methods import to_chw
from .run import BatchedForward, curves_for, default_patch


class MorfScorer:
    """Region perturbation of single images through a plain onnxruntime session."""

    def __init__(self, ses, steps: int = 20, baseline: str = "blur", batch: int = 32) -> None:
        from ..cli.evaluate_cmd import inner_output, plain_forward

        an = ses.an
        self.layout = ses.layout
        h, w = ses.reader.pre.size if ses.reader.pre else an.input_shape[-2:]
        self.patch, self.steps, self.baseline = default_patch(h, w), steps, baseline
        fixed = an.input_shape[0] if an.input_shape and an.input_shape[0] else None
        self.run = plain_forward(an.model_path, "cpu", fixed, inner_output(an))
        self.forward = BatchedForward(self.run, batch)

    def curves(self, x: np.ndarray, relevance: np.ndarray, target: int, seed: int = 0) -> dict:
        """MoRF and LeRF curves of one sample (model layout) under one map."""
        chw = to_chw(x, self.layout)
        regions = perturb.Regions.patches(chw.shape[1], chw.shape[2], self.patch)
        counts = perturb.step_counts(regions.count, self.steps)
        base = perturb.baseline(chw, self.baseline, self.patch, np.random.default_rng(seed))
        f0 = float(np.asarray(self.run(x[None])).reshape(-1)[target])
        return curves_for(chw, relevance_map(relevance, self.layout), regions, base, counts, self.forward,
                          target, f0, self.layout)

    def versus_random(self, x: np.ndarray, relevance: np.ndarray, target: int, seed: int = 0) -> tuple[float, float]:
        """(MoRF AOPC of ``relevance``, MoRF AOPC of a seeded uniform random map)."""
        rand = np.random.default_rng(seed).uniform(0, 1, relevance.shape)
        return (perturb.aopc(self.curves(x, relevance, target, seed)["morf"]),
                perturb.aopc(self.curves(x, rand, target, seed)["morf"]))
