"""Where a backward pass spends its time, layer by layer (``lrpath bench --layers N``).

Each layer's step is timed inside the pass (``Explanation.layer_seconds``); the bench takes
the median over its timed runs, per image. On a GPU backend the figures are host time: the
kernels run asynchronously, so a step's time can land on a later step.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def layer_rows(an, runs: list[dict[str, float]], batch: int) -> list[dict]:
    """One row per layer that took a step, in the order the pass visits them: its op, rule,
    median ms per image, and share of the steps' summed time."""
    names = [name for name in runs[0] if all(name in r for r in runs)] if runs else []
    med = {name: float(np.median([r[name] for r in runs])) * 1e3 / batch for name in names}
    total = sum(med.values()) or 1.0
    rows = []
    for name in names:
        layer = an.graph.find(name)
        rows.append({"layer": name, "op": layer.op, "rule": str(an.plan().rule_for(layer)),
                     "ms_per_image": med[name], "share": med[name] / total})
    return rows


def echo_slowest(rows: list[dict], n: int, echo) -> None:
    """The ``n`` slowest steps, then the time per (op, rule) kind, slowest first."""
    if not rows:
        return
    echo(f"{'slowest layers':40s} {'op':18s} {'rule':32s} {'ms/image':>9s} {'share':>6s}")
    for row in sorted(rows, key=lambda r: -r["ms_per_image"])[:n]:
        echo(f"{row['layer'][:40]:40s} {row['op'][:18]:18s} {row['rule'][:32]:32s} "
             f"{row['ms_per_image']:9.2f} {row['share']:6.1%}")
    kinds: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    for row in rows:
        kind = kinds[(row["op"], row["rule"].split("(")[0])]
        kind[0] += row["ms_per_image"]
        kind[1] += 1
    total = sum(k[0] for k in kinds.values()) or 1.0
    echo(f"{'by op and rule':40s} {'layers':>6s} {'ms/image':>9s} {'share':>6s}")
    for (op, rule), (ms, count) in sorted(kinds.items(), key=lambda kv: -kv[1][0]):
        echo(f"{(op + ' ' + rule)[:40]:40s} {count:6d} {ms:9.2f} {ms / total:6.1%}")
