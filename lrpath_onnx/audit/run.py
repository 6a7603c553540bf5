"""An audit run: every image through explain (and the neuron graph when path fidelity is
checked), the checks, and audit.json + junit.xml rewritten atomically after every batch, so
an interrupted run leaves valid files and ``--resume`` carries on from them."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.inputs import IMAGE_SUFFIXES
from ..io.outputs import write_json, write_text
from ..paths.neurons import explain_for_graph
from . import checks as C
from .config import CHECKS, AuditConfig
from .junit import junit_xml


def list_images(folder: Path) -> list[Path]:
    """Image files and ``.npy`` tensors directly in ``folder``, sorted by name."""
    if not folder.is_dir():
        raise InputError(f"--images {folder}: not a folder")
    found = sorted(p for p in folder.iterdir()
                   if p.is_file() and (p.suffix.lower() in IMAGE_SUFFIXES or p.suffix.lower() == ".npy"))
    if not found:
        raise InputError(f"--images {folder}: no images (.png, .jpg, …) or .npy files in it")
    return found


def thresholds_of(cfg: AuditConfig) -> dict:
    return {"prediction": "expected label", "conservation": [cfg.conservation_min, cfg.conservation_max],
            "region": cfg.region_min_share, "path_fidelity": cfg.path_smape_max}


def previous_records(out: Path, cfg: AuditConfig, checks: list[str]) -> list[dict]:
    """The per-image records of an earlier run in ``out`` (for --resume), if it used the same settings."""
    path = out / "audit.json"
    if not path.exists():
        return []
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        records, settings = old["images"], old["config"]
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"--resume: {path} is not an audit.json of lrpath (remove it or leave out --resume)") from None
    if settings != asdict(cfg) or old.get("checks") != checks:
        raise InputError(f"--resume: {path} was made with other thresholds or checks; "
                         "rerun without --resume (or with the same settings)")
    return records


def summary(records: list[dict], checks: list[str], seconds: float, fresh: int) -> dict:
    per = {c: {"passed": sum(r["checks"][c]["passed"] for r in records if c in r["checks"]),
               "failed": sum(not r["checks"][c]["passed"] for r in records if c in r["checks"])} for c in checks}
    bad = [r["image"] for r in records if not all(c["passed"] for c in r["checks"].values())]
    return {"images": len(records), "images_failed": len(bad), "failed_images": bad, "checks": per,
            "passed": not bad, "seconds_this_run": seconds, "images_this_run": fresh,
            "images_per_second": fresh / seconds if seconds > 0 and fresh else None}


class AuditRun:
    """Holds what stays fixed over a run; ``run`` walks the batches."""

    def __init__(self, ses, cfg: AuditConfig, checks: list[str], expected: dict, regions: dict,
                 out: Path, model_label: str) -> None:
        self.ses, self.cfg, self.checks, self.expected, self.regions = ses, cfg, checks, expected, regions
        self.out, self.model_label = out, model_label
        self.masked = None
        if "path_fidelity" in checks:
            from ..paths.masking import MaskedModel

            self.masked = MaskedModel(ses.an)

    def _batch(self, samples) -> list[dict]:
        an, cfg, ses = self.ses.an, self.cfg, self.ses
        x = np.stack([s.tensor for s in samples])
        t0 = time.perf_counter()
        exp = explain_for_graph(an, x) if self.masked is not None else an.explain(x)
        recs = []
        for i, s in enumerate(samples):
            pred = int(np.asarray(exp.logits[i]).reshape(-1).argmax())
            rec = {"image": s.name, "source": str(s.source), "predicted": pred,
                   "predicted_label": ses.labels[pred] if ses.labels and pred < len(ses.labels) else None,
                   "checks": {}}
            if "prediction" in self.checks:
                rec["checks"]["prediction"] = C.prediction(pred, self.expected[s.source], ses.labels)
            if "conservation" in self.checks:
                rec["checks"]["conservation"] = C.conservation(exp.conservation(i)["ratio"], cfg)
            if "region" in self.checks:
                rec["checks"]["region"] = C.region(exp.relevance[i], self.regions[s.source], ses.layout, cfg)
            if "path_fidelity" in self.checks:
                rec["checks"]["path_fidelity"] = C.path_fidelity(an, exp, i, x[i], self.masked, cfg)
            recs.append(rec)
        per = (time.perf_counter() - t0) / len(samples)
        for r in recs:
            r["seconds"] = per
        return recs

    def write(self, records: list[dict], seconds: float, fresh: int) -> dict:
        an = self.ses.an
        doc = {"model": self.model_label, "device": an.device, "provider": an.provider, "preset": an.plan().preset,
               "rule_overrides": list(an.plan().overrides), "checks": self.checks, "config": asdict(self.cfg),
               "thresholds": thresholds_of(self.cfg), "summary": summary(records, self.checks, seconds, fresh),
               "images": records}
        write_json(self.out / "audit.json", doc)
        write_text(self.out / "junit.xml", junit_xml(records, self.model_label, thresholds_of(self.cfg)))
        return doc

    def run(self, paths: list[Path], records: list[dict], bar) -> dict:
        done = {r["source"] for r in records}
        todo = [p for p in paths if str(p) not in done]
        bar.update(len(paths) - len(todo))
        t0, fresh = time.perf_counter(), 0
        doc = self.write(records, 0.0, 0)
        for samples in self.ses.reader.batches(todo, self.cfg.batch_size):
            records = records + self._batch(samples)
            fresh += len(samples)
            doc = self.write(records, time.perf_counter() - t0, fresh)
            bar.update(len(samples))
        return doc
