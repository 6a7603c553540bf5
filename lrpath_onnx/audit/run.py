"""An audit run: the images in batches through the checks (``evaluate``), and audit.json +
junit.xml rewritten atomically after every batch, so an interrupted run leaves valid files and
``--resume`` carries on from them, with either engine."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from ..errors import InputError
from ..io.inputs import unique_names
from ..io.outputs import write_json, write_text
from ..io.schema import model_json, stamp
from .config import AuditConfig
from .evaluate import Evaluator
from .junit import junit_xml
from .regions import RegionSource


def thresholds_of(cfg: AuditConfig) -> dict:
    return {"prediction": "expected label", "conservation": [cfg.conservation_min, cfg.conservation_max],
            "region": cfg.region_min_share, "path_fidelity": cfg.path_smape_max,
            "faithfulness": cfg.faithfulness_min_gain}


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
    if not str(old.get("schema", "")).startswith("lrpath.audit/"):
        raise InputError(f"--resume: {path} was written by an older lrpath (no \"schema\"); "
                         "rerun without --resume")
    if settings != asdict(cfg) or old.get("checks") != checks:
        raise InputError(f"--resume: {path} was made with other thresholds or checks; "
                         "rerun without --resume (or with the same settings)")
    return records


def summary(records: list[dict], checks: list[str], seconds: float, fresh: int) -> dict:
    per = {c: {"passed": sum(r["checks"][c]["passed"] for r in records if c in r["checks"]),
               "failed": sum(not r["checks"][c]["passed"] for r in records if c in r["checks"])} for c in checks}
    bad = [r["image"] for r in records if not all(c["passed"] for c in r["checks"].values())]
    return {"images": len(records), "images_failed": len(bad), "failed_images": bad, "checks": per,
            "passed": not bad, "images_this_run": fresh,
            "images_per_second": fresh / seconds if seconds > 0 and fresh else None}


class AuditRun:
    """What stays fixed over a run (session, settings, output folder); ``run`` audits the images
    with the local engine, ``ray_engine.run_ray`` with Ray workers; both write through ``write``."""

    def __init__(self, ses, cfg: AuditConfig, checks: list[str], expected: dict, regions: RegionSource | None,
                 out: Path) -> None:
        self.ses, self.cfg, self.checks, self.expected, self.regions = ses, cfg, checks, expected, regions
        self.out = out
        self.engine: dict = {"engine": "local"}
        self._written = 0.0
        self._doc: dict = {}
        self._paths: list[Path] = []

    #: audit.json is rewritten at most this often (and at the end): rewriting a 50 000-image file
    #: after every batch of 8 would write it thousands of times
    WRITE_EVERY_S = 2.0

    def checkpoint(self, records: list[dict], seconds: float, fresh: int, final: bool = False) -> dict:
        """``write`` when the last one is WRITE_EVERY_S old, or ``final``; the latest document either way."""
        now = time.monotonic()
        if final or now - self._written >= self.WRITE_EVERY_S:
            self._doc = self.write(self.ordered(self._paths, records), seconds, fresh)
            self._written = now
        return self._doc

    def batches(self, paths: list[Path], records: list[dict]) -> list[list[tuple[Path, str]]]:
        """The images still to audit as (path, name) batches; names are unique over all of ``paths``
        so a resumed or distributed run names every image as a single local run would."""
        self._paths = paths  # checkpoints write the records in this order
        done = {r["source"] for r in records}
        todo = [(p, n) for p, n in zip(paths, unique_names(paths)) if str(p) not in done]
        bs = self.cfg.batch_size
        return [todo[i:i + bs] for i in range(0, len(todo), bs)]

    def ordered(self, paths: list[Path], records: list[dict]) -> list[dict]:
        """Records in the order of ``paths`` (deterministic whatever order batches finished in)."""
        rank = {str(p): i for i, p in enumerate(paths)}
        return sorted(records, key=lambda r: rank.get(r["source"], len(rank)))

    def run(self, paths: list[Path], records: list[dict], bar) -> dict:
        evaluator = Evaluator(self.ses, self.cfg, self.checks, self.expected, self.regions)
        batches = self.batches(paths, records)
        bar.update(len(paths) - sum(len(b) for b in batches))
        t0, fresh = time.perf_counter(), 0
        records = list(records)
        self.checkpoint(records, 0.0, 0, final=True)
        for batch in batches:
            samples = evaluator.read([p for p, _ in batch], [n for _, n in batch])
            records.extend(evaluator.records(samples))
            fresh += len(batch)
            self.checkpoint(records, time.perf_counter() - t0, fresh)
            bar.update(len(batch))
        return self.checkpoint(records, time.perf_counter() - t0, fresh, final=True)

    def write(self, records: list[dict], seconds: float, fresh: int) -> dict:
        an = self.ses.an
        engine = dict(self.engine)  # a Ray run says where its workers ran; the driver needs no session
        where = {"device": engine.pop("device", None) or an.device, "provider": engine.pop("provider", None) or an.provider}
        doc = stamp("audit", {**model_json(an.model_path, self.ses.model_name), **where, **engine,
               "preset": an.plan().preset,
               "rule_overrides": list(an.plan().overrides), "checks": self.checks, "config": asdict(self.cfg),
               "thresholds": thresholds_of(self.cfg), "summary": summary(records, self.checks, seconds, fresh),
               "timings_s": {"this_run": seconds}, "images": records})
        write_json(self.out / "audit.json", doc)
        label = self.ses.model_name or str(an.model_path)
        write_text(self.out / "junit.xml", junit_xml(records, label, thresholds_of(self.cfg)))
        return doc
