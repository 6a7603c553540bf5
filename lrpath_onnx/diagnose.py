"""What an explanation's numbers say is wrong with it, in words a user can act on.

LRP is meant to conserve relevance: what reaches the input should be what was explained.
When it is far from that (biases and stabilisers absorbing most of it, or rules amplifying
and flipping it), the heatmap may still look plausible but no longer decomposes the
decision. ``explain`` writes these warnings into explanation.json and prints them, and the
audit's conservation check quotes the same diagnosis.
"""

from __future__ import annotations

import math

#: conservation ratios outside this range get a warning
WARN_RANGE = (0.5, 2.0)


def worst_layers(conservation: dict, k: int = 3) -> list[tuple[str, float]]:
    """The ``k`` layers whose own ratio (relevance in / out) is farthest from 1."""
    rows = [(l["layer"], l["ratio"]) for l in conservation.get("per_layer", [])
            if l.get("ratio") is not None and math.isfinite(l["ratio"]) and l["ratio"] != 1.0]
    rows.sort(key=lambda t: -abs(math.log(abs(t[1]))) if t[1] != 0 else -math.inf)
    return rows[:k]


def _drops_relevance(op: str | None) -> bool:
    """Whether layers of this op drop relevance by their rule's design (the handler says)."""
    from .ops import handler_for

    handler = handler_for(op) if op else None
    return bool(handler is not None and handler.drops_relevance)


def conservation_warnings(conservation: dict, preset_applied: str | None = None) -> list[str]:
    """Warnings for one sample's conservation record (``Explanation.conservation(i)``)."""
    ratio = conservation.get("ratio")
    if ratio is None:
        return ["the explained output is exactly 0: there is no relevance to distribute"]
    if not math.isfinite(ratio):
        return [f"conservation is {ratio}: relevance is not finite"]
    if WARN_RANGE[0] <= ratio <= WARN_RANGE[1]:
        return []
    worst = worst_layers(conservation)
    where = ", ".join(f"{name} ×{r:.2g}" for name, r in worst)
    ops = {l["layer"]: l.get("op") for l in conservation.get("per_layer", [])}
    transformer = preset_applied in ("attnlrp", "cp-lrp")
    if 0 <= ratio < WARN_RANGE[0]:
        if transformer or any(_drops_relevance(ops.get(name)) for name, _ in worst):  # the loss is attention's
            absorbed = "biases, the class token and the softmax rule's dropped terms take the rest"
        elif preset_applied == "conserving":
            absorbed = "layers whose rules do not conserve take the rest (biases take none here)"
        else:
            absorbed = "biases and stabilisers absorb the rest"
        msg = (f"only {ratio:.2%} of the relevance reaches the input (conservation {ratio:.3g}, outside "
               f"[{WARN_RANGE[0]:g}, {WARN_RANGE[1]:g}]): {absorbed}")
    else:
        msg = (f"conservation {ratio:.3g} is outside [{WARN_RANGE[0]:g}, {WARN_RANGE[1]:g}]: relevance is "
               "amplified or changes sign on its way to the input")
    if where:
        msg += f"; most at {where}"
    if preset_applied != "conserving" and not transformer:
        msg += "; --preset conserving keeps relevance (biases take none)"
    return [msg]


#: a sample with more of its input values than this outside z^B's bounds gets a warning
BOUNDS_WARN_SHARE = 0.01


def bounds_warnings(share: float | None, low, high) -> list[str]:
    """A warning when z^B's bounds do not hold the input: its first-layer rule assumes every
    value lies in [low, high], which a normalised tensor passed as .npy under the default
    [0, 1] breaks without any error."""
    if share is None or share <= BOUNDS_WARN_SHARE:
        return []
    return [f"{share:.0%} of the input values lie outside z^B's bounds [{_values(low)}, {_values(high)}]: give "
            "the model's input range with --low/--high (or the normalisation with --mean/--std)"]


def _values(v) -> str:
    """A bound as the user wrote it: one number where every channel has it, else one per channel."""
    vals = [float(t) for t in v]
    return f"{vals[0]:g}" if len(set(vals)) == 1 else "(" + ", ".join(f"{t:g}" for t in vals) + ")"
