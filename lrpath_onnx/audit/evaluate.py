"""The checks of one batch of images: what every audit engine runs, locally or in a Ray worker."""

from __future__ import annotations

import time

import numpy as np

from ..io.schema import target_json
from ..paths.neurons import explain_for_graph
from . import checks as C
from .config import AuditConfig
from .regions import RegionSource


class Evaluator:
    """A session (model, preprocessing, labels) plus the audit settings; ``records`` audits samples."""

    def __init__(self, ses, cfg: AuditConfig, checks: list[str], expected: dict,
                 regions: RegionSource | None) -> None:
        self.ses, self.cfg, self.checks, self.expected, self.regions = ses, cfg, checks, expected, regions
        self.masked = None
        if "path_fidelity" in checks:
            from ..paths.masking import MaskedModel

            self.masked = MaskedModel(ses.an)
        self.faith = None
        if "faithfulness" in checks:
            from ..evaluate.faithfulness import MorfScorer

            self.faith = MorfScorer(ses, steps=cfg.faithfulness_steps)

    def records(self, samples) -> list[dict]:
        """One audit.json record per sample, after one batched explain."""
        an, cfg, ses = self.ses.an, self.cfg, self.ses
        x = np.stack([s.tensor for s in samples])
        t0 = time.perf_counter()
        exp = explain_for_graph(an, x) if self.masked is not None else an.explain(x)
        recs = []
        for i, s in enumerate(samples):
            pred = int(np.asarray(exp.logits[i]).reshape(-1).argmax())
            rec = {"image": s.name, "source": str(s.source), "predicted": target_json(pred, ses.labels, an.output_neuron(pred)),
                   "checks": {}}
            if "prediction" in self.checks:
                rec["checks"]["prediction"] = C.prediction(pred, self.expected[s.source], ses.labels)
            if "conservation" in self.checks:
                rec["checks"]["conservation"] = C.conservation(exp.conservation(i), cfg, an.plan().applied)
            if "region" in self.checks:
                rec["checks"]["region"] = C.region(exp.relevance[i], self.regions.mask(s.source), ses.layout, cfg)
            if "path_fidelity" in self.checks:
                rec["checks"]["path_fidelity"] = C.path_fidelity(an, exp, i, x[i], self.masked, cfg)
            if self.faith is not None:
                mine, rand = self.faith.versus_random(x[i], exp.relevance[i], pred if not isinstance(
                    exp.targets[i], (int, np.integer)) else int(exp.targets[i]), seed=i)
                rec["checks"]["faithfulness"] = C.faithfulness(mine - rand, mine, rand, cfg)
            recs.append(rec)
        per = (time.perf_counter() - t0) / len(samples)
        for r in recs:
            r["timings_s"] = {"total": per}
        return recs

    def read(self, paths, names: list[str]):
        """Samples of ``paths`` named as the run names them (unique stems across the whole run)."""
        out = []
        for p, name in zip(paths, names):
            out.extend(self.ses.reader.read(p, name))
        return out
