"""Audit thresholds: defaults, then a TOML file, then command-line options (last wins).

A config file looks like::

    [audit]
    checks = ["conservation", "region", "path_fidelity"]   # default: every check whose inputs are given
    k = 5                 # paths kept by the path-fidelity check
    path_score = "auto"   # how paths are ranked: auto, flow (the paper's sum) or carried
    per_layer = 16        # neurons per layer of the neuron graph
    batch_size = 8

    [thresholds]
    conservation = [0.8, 1.2]   # input relevance / output relevance
    region_min_share = 0.5      # positive relevance inside the object mask / box
    path_smape_max = 20.0       # SMAPE (%) of the K-path model's softmax vs the model's
    faithfulness_min_gain = 0.05  # MoRF AOPC of the heatmap minus that of a random one
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path

from ..errors import InputError
from ..paths.ranking import SCORES

CHECKS = ("prediction", "conservation", "region", "path_fidelity", "faithfulness")


@dataclass(frozen=True)
class AuditConfig:
    k: int = 5
    per_layer: int = 16
    batch_size: int = 8
    conservation_min: float = 0.8
    conservation_max: float = 1.2
    region_min_share: float = 0.5
    path_smape_max: float = 20.0
    faithfulness_min_gain: float = 0.05
    faithfulness_steps: int = 20
    path_score: str = "auto"
    checks: tuple[str, ...] | None = None  # None: every check whose inputs are given (``auto``)

    def validate(self) -> "AuditConfig":
        if self.checks is not None:
            bad = [c for c in self.checks if c not in CHECKS]
            if bad or not self.checks:
                raise InputError(f"audit config: unknown check(s) {bad or list(self.checks)}; choose from "
                                 f"{', '.join(CHECKS)}")
        if self.path_score not in SCORES:
            raise InputError(f"audit config: path_score must be one of {', '.join(SCORES)}, got {self.path_score!r}")
        for name in ("k", "per_layer", "batch_size", "faithfulness_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"audit config: {name} must be a positive integer, got {v!r}")
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise InputError(f"audit config: {f.name} must be finite, got {v!r}")
        if not self.conservation_min <= self.conservation_max:
            raise InputError(f"audit config: conservation bounds [{self.conservation_min}, "
                             f"{self.conservation_max}] are reversed")
        if not 0.0 <= self.region_min_share <= 1.0:
            raise InputError(f"audit config: region_min_share must be in [0, 1], got {self.region_min_share}")
        if self.path_smape_max < 0:
            raise InputError(f"audit config: path_smape_max must be ≥ 0, got {self.path_smape_max}")
        return self


def _number(table: dict, key: str, where: str, kind=float):
    v = table[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)):
        raise InputError(f"{where}: '{key}' must be a{'n integer' if kind is int else ' number'}, got {v!r}")
    return kind(v)


def load_config(path: Path | None) -> AuditConfig:
    """Defaults, overridden by the TOML file at ``path`` (unknown keys are refused: a typo must
    not silently keep a default threshold)."""
    cfg = AuditConfig()
    if path is None:
        return cfg
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--config {path}: cannot read it ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"--config {path}: not valid TOML ({e})") from None
    unknown = set(data) - {"audit", "thresholds"}
    if unknown:
        raise InputError(f"--config {path}: unknown section(s) {sorted(unknown)}; use [audit] and [thresholds]")
    updates: dict = {}
    audit, thr = data.get("audit", {}), data.get("thresholds", {})
    for section, allowed in ((audit, {"checks", "k", "per_layer", "batch_size", "faithfulness_steps", "path_score"}),
                             (thr, {"conservation", "region_min_share", "path_smape_max", "faithfulness_min_gain"})):
        if not isinstance(section, dict):
            raise InputError(f"--config {path}: [audit] and [thresholds] must be tables")
        bad = set(section) - allowed
        if bad:
            raise InputError(f"--config {path}: unknown key(s) {sorted(bad)}; known: {sorted(allowed)}")
    for key in ("k", "per_layer", "batch_size", "faithfulness_steps"):
        if key in audit:
            updates[key] = _number(audit, key, f"--config {path}", int)
    if "path_score" in audit:
        updates["path_score"] = audit["path_score"]  # validate() names the choices
    if "checks" in audit:
        c = audit["checks"]
        if not (isinstance(c, list) and all(isinstance(v, str) for v in c)):
            raise InputError(f"--config {path}: 'checks' must be a list of check names, got {c!r}")
        updates["checks"] = tuple(c)
    if "conservation" in thr:
        c = thr["conservation"]
        if not (isinstance(c, list) and len(c) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                            for v in c)):
            raise InputError(f"--config {path}: 'conservation' must be [low, high], got {c!r}")
        updates["conservation_min"], updates["conservation_max"] = float(c[0]), float(c[1])
    for key in ("region_min_share", "path_smape_max", "faithfulness_min_gain"):
        if key in thr:
            updates[key] = _number(thr, key, f"--config {path}")
    return replace(cfg, **updates).validate()


def with_options(cfg: AuditConfig, **options) -> AuditConfig:
    """``cfg`` with the options that were given (None = not given) on top."""
    return replace(cfg, **{k: v for k, v in options.items() if v is not None}).validate()
