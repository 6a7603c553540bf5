"""The four per-image checks. Each returns ``{"passed", "value", "threshold", "message"}``
so audit.json, the console and junit.xml all say the same thing."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..diagnose import conservation_warnings
from ..errors import InputError
from ..names import class_names
from ..paths.neurons import SINK, SOURCE, build
from ..paths.ranking import best_paths
from ..paths.scores import smape, softmax
from ..viz.heatmap import relevance_map
from .config import AuditConfig


def _result(passed: bool, value, threshold, message: str) -> dict:
    return {"passed": bool(passed), "value": value, "threshold": threshold, "message": message}


def read_expected(path: Path, inputs: list[Path], labels: list[str] | None, num_classes: int | None) -> dict:
    """``file,label`` rows (a header row is allowed); a label is a class index or a class name."""
    try:
        rows = list(csv.reader(Path(path).read_text(encoding="utf-8").splitlines()))
    except FileNotFoundError:
        raise InputError(f"--expect {path}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"--expect {path}: not a readable CSV ({e})") from None
    names = class_names(labels or [])
    table: dict[str, int] = {}
    for line, row in enumerate(rows, 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            raise InputError(f"--expect {path}:{line}: need 'file,label', got {','.join(row)!r}")
        key, label = row[0].strip(), row[1].strip()
        if label.lstrip("-").isdigit():
            idx = int(label)
        elif label in names or label.lower() in names:
            idx = names.get(label, names.get(label.lower()))
        elif line == 1:  # a header row
            continue
        else:
            raise InputError(f"--expect {path}:{line}: label {label!r} is neither a class index nor a class name")
        if num_classes is not None and not 0 <= idx < num_classes:
            raise InputError(f"--expect {path}:{line}: label {idx} is out of range (0..{num_classes - 1})")
        table[key] = idx
    out = {}
    for p in inputs:
        idx = table.get(p.name, table.get(str(p), table.get(p.stem)))
        if idx is None:
            raise InputError(f"--expect {path}: no label for {p.name}")
        out[p] = idx
    return out


def prediction(predicted: int, expected: int, labels: list[str] | None) -> dict:
    name = (lambda i: f"{i} ({labels[i]})" if labels and i < len(labels) and labels[i] != str(i) else str(i))
    ok = predicted == expected
    return _result(ok, predicted, expected, f"predicted {name(predicted)}" + ("" if ok else f", expected {name(expected)}"))


def conservation(record: dict, cfg: AuditConfig, preset_applied: str | None = None) -> dict:
    """The ratio against the audit's bounds; a failure quotes explain's diagnosis (``diagnose``)."""
    ratio = record.get("ratio")
    bounds = [cfg.conservation_min, cfg.conservation_max]
    if ratio is None or not np.isfinite(ratio):
        return _result(False, None, bounds, "the explained score is zero: nothing to conserve")
    ok = cfg.conservation_min <= ratio <= cfg.conservation_max
    why = "; ".join(conservation_warnings(record, preset_applied)) if not ok else ""
    return _result(ok, float(ratio), bounds, f"input relevance / output relevance = {ratio:.4g}"
                   + ("" if ok else f", outside {bounds}") + (f" ({why})" if why else ""))


def region_share(relevance: np.ndarray, mask: np.ndarray, layout: str) -> float | None:
    """Share of the positive input relevance that falls inside ``mask`` (None if there is none)."""
    pos = np.maximum(relevance_map(relevance, layout), 0.0)
    total = pos.sum()
    return float(pos[mask].sum() / total) if total > 0 else None


def region(relevance: np.ndarray, mask: np.ndarray, layout: str, cfg: AuditConfig) -> dict:
    thr = cfg.region_min_share
    if not mask.any():
        return _result(False, None, thr, "the object region is empty at the model's input size")
    share = region_share(relevance, mask, layout)
    if share is None:
        return _result(False, None, thr, "no positive relevance anywhere")
    ok = share >= thr
    return _result(ok, share, thr, f"{share:.1%} of positive relevance inside the object region "
                   f"({mask.mean():.1%} of the image)" + ("" if ok else f", below {thr:.0%}"))


def path_fidelity(an, exp, i: int, x: np.ndarray, masked_model, cfg: AuditConfig) -> dict:
    """Keep only the neurons on the K best paths; the prediction must stay, its softmax within SMAPE."""
    ng = build(an, exp, i, cfg.per_layer)
    best, choice = best_paths(ng.graph, SOURCE, SINK, cfg.k, cfg.path_score)
    out = np.asarray(masked_model.run(x[None], ng.path_masks([p.nodes for p in best]))[0], np.float64).reshape(-1)
    orig = np.asarray(exp.logits[i], np.float64).reshape(-1)
    err = smape(softmax(out), softmax(orig))
    same = int(out.argmax()) == int(orig.argmax())
    ok = same and err <= cfg.path_smape_max
    msg = (f"{cfg.k} best paths ({choice.score}, {cfg.per_layer} neurons per layer): softmax SMAPE {err:.2f} %, "
           + ("same class" if same else f"class changes to {int(out.argmax())}"))
    return _result(ok, float(err), cfg.path_smape_max, msg)


def faithfulness(gain: float, explained: float, random: float, cfg: AuditConfig) -> dict:
    """The heatmap's MoRF AOPC must beat a random heatmap's on the same image by the threshold."""
    ok = gain >= cfg.faithfulness_min_gain
    return _result(ok, float(gain), cfg.faithfulness_min_gain,
                   f"MoRF AOPC {explained:.3f} vs {random:.3f} for a random heatmap: gain {gain:+.3f}"
                   + ("" if ok else f", below {cfg.faithfulness_min_gain}"))
