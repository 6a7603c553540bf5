"""Names as people type them: close matches for typos, class names and their synonyms."""

from __future__ import annotations

import difflib
from typing import Iterable, Sequence

from .errors import InputError


def did_you_mean(word: str, options: Iterable[str], n: int = 3) -> str:
    """`` (did you mean 'a' or 'b'?)`` for the options closest to ``word``, or ``""``."""
    opts = sorted({o for o in options if o})
    close = difflib.get_close_matches(word, opts, n=n, cutoff=0.6)
    if not close:
        low = word.lower()
        close = [o for o in opts if low and (low in o.lower() or o.lower() in low)][:n]
    if not close:
        return ""
    return " (did you mean " + " or ".join(f"'{c}'" for c in close) + "?)"


def class_names(labels: Sequence[str]) -> dict[str, int]:
    """Every way to name a class: its label, each comma-separated synonym of it (ImageNet's
    "bobsled, bobsleigh, bob"), lower-cased too; a synonym two classes share names neither."""
    table: dict[str, int] = {}
    shared: set[str] = set()
    for i, label in enumerate(labels):
        for name in {label, *(part.strip() for part in label.split(","))}:
            for key in {name, name.lower()}:
                if not key:
                    continue
                if key in table and table[key] != i:
                    shared.add(key)
                table.setdefault(key, i)
    return {k: v for k, v in table.items() if k not in shared}


def resolve_class(text: str, labels: Sequence[str] | None, num_classes: int | None, what: str) -> int:
    """A class given as an index, a label or a synonym of one (case-insensitive)."""
    t = text.strip()
    if t.lstrip("-").isdigit():
        idx = int(t)
    else:
        if not labels:
            raise InputError(f"{what} '{text}': this model has no class names (give --labels FILE, or an index)")
        table = class_names(labels)
        idx = table.get(t, table.get(t.lower()))
        if idx is None:
            spelled = {part.strip() for label in labels for part in label.split(",")}
            close = {n.lower(): n for n in spelled}
            hint = did_you_mean(t.lower(), close)
            for low, name in close.items():
                hint = hint.replace(f"'{low}'", f"'{name}'")
            raise InputError(f"{what} '{text}' is not a class name{hint}")
    if num_classes is not None and not 0 <= idx < num_classes:
        raise InputError(f"{what} {idx} is out of range: the model has {num_classes} classes (0..{num_classes - 1})")
    return idx
