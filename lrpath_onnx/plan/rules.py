"""LRP rules as data: a name and its parameters, parsed and validated in one place.

A rule says how relevance crosses a linear layer ``z_k = Σ_j a_j w_jk + b_k``; the
arithmetic lives in ``backward.linear_rules``. Layers that are not linear get a fixed
treatment (``wta`` for MaxPool, ``pass`` for element-wise ops, ``route`` for reshapes),
and merges (Add/Sum) split by contribution with ``zero`` or ``epsilon``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import RuleError

#: smallest stabiliser, used where a rule's own denominator needs no ε of its own.
TINY = 1e-9


@dataclass(frozen=True)
class RuleSpec:
    """What a rule is called, which parameters it takes (with defaults) and for which layers."""

    name: str
    params: tuple[str, ...] = ()
    defaults: tuple[float, ...] = ()
    aliases: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ("linear",)
    doc: str = ""


SPECS: dict[str, RuleSpec] = {}


def _spec(spec: RuleSpec) -> None:
    SPECS[spec.name] = spec


_spec(RuleSpec("zero", aliases=("0", "lrp0", "lrp-0"), kinds=("linear", "merge"),
               doc="LRP-0: plain ratio z_jk / z_k"))
_spec(RuleSpec("epsilon", ("epsilon",), (1e-6,), ("eps", "lrp-epsilon"), ("linear", "merge"),
               doc="LRP-ε: denominator z_k + ε·sign(z_k)"))
_spec(RuleSpec("gamma", ("gamma",), (0.25,), ("lrp-gamma",),
               doc="LRP-γ: weights w + γw⁺, bias b + γb⁺"))
_spec(RuleSpec("zplus", (), (), ("z+", "alpha1beta0"), doc="z⁺: positive contributions only"))
_spec(RuleSpec("alphabeta", ("alpha", "beta"), (2.0, 1.0), ("ab",),
               doc="αβ: positive part ×α, negative part ×β, α − β = 1"))
_spec(RuleSpec("alpha2beta1", (), (), (), doc="αβ with α = 2, β = 1"))
_spec(RuleSpec("flat", (), (), (), doc="flat: uniform over the receptive field"))
_spec(RuleSpec("wsquare", (), (), ("w2", "w^2", "wsq"), doc="w²: proportional to squared weights"))
_spec(RuleSpec("zbox", ("low", "high"), (math.nan, math.nan), ("zb", "box", "zB"),
               doc="z^B: box-constrained first-layer rule (bounds from --mean/--std or --low/--high)"))
_spec(RuleSpec("wta", kinds=("wta",), doc="winner-take-all through MaxPool switches"))
_spec(RuleSpec("pass", kinds=("pass",), doc="element-wise layer: relevance passes unchanged"))
_spec(RuleSpec("route", kinds=("route",), doc="relevance moves with the data (reshape, transpose, concat)"))

_ALIASES = {a.lower(): s.name for s in SPECS.values() for a in (s.name, *s.aliases)}


@dataclass(frozen=True)
class Rule:
    """A rule name plus its parameter values (complete: defaults filled in)."""

    name: str
    params: tuple[tuple[str, float], ...] = field(default=())

    def __getitem__(self, key: str) -> float:
        return dict(self.params)[key]

    def get(self, key: str, default: float | None = None) -> float | None:
        return dict(self.params).get(key, default)

    @property
    def spec(self) -> RuleSpec:
        return SPECS[self.name]

    def __str__(self) -> str:
        shown = [(k, v) for k, v in self.params if not (isinstance(v, float) and math.isnan(v))]
        if not shown:
            return self.name
        return f"{self.name}(" + ", ".join(f"{k}={v:g}" for k, v in shown) + ")"

    def to_json(self) -> dict:
        return {"rule": self.name,
                "params": {k: v for k, v in self.params if not (isinstance(v, float) and math.isnan(v))}}


def make_rule(name: str, *values: float) -> Rule:
    """Build and validate a rule (``make_rule("gamma", 0.25)``); unknown names list the valid ones."""
    key = _ALIASES.get(name.strip().lower())
    if key is None:
        valid = ", ".join(sorted(s for s in SPECS if SPECS[s].kinds != ("wta",) and s not in ("pass", "route")))
        raise RuleError(f"unknown rule '{name}'; valid rules: {valid}")
    spec = SPECS[key]
    if key == "alpha2beta1":
        spec, key, values = SPECS["alphabeta"], "alphabeta", (2.0, 1.0)
    if len(values) > len(spec.params):
        raise RuleError(f"rule {key} takes {len(spec.params)} parameter(s) "
                        f"({', '.join(spec.params) or 'none'}), got {len(values)}")
    vals = list(values) + list(spec.defaults[len(values):])
    params = tuple(zip(spec.params, (float(v) for v in vals)))
    _validate(key, dict(params))
    return Rule(key, params)


def _validate(name: str, p: dict[str, float]) -> None:
    for k, v in p.items():
        if math.isinf(v) or (math.isnan(v) and name != "zbox"):
            raise RuleError(f"rule {name}: parameter {k} must be finite, got {v}")
    if name == "epsilon" and p["epsilon"] < 0:
        raise RuleError(f"rule epsilon: ε must be ≥ 0, got {p['epsilon']:g}")
    if name == "gamma" and p["gamma"] < 0:
        raise RuleError(f"rule gamma: γ must be ≥ 0, got {p['gamma']:g}")
    if name == "alphabeta":
        a, b = p["alpha"], p["beta"]
        if a < 0 or b < 0 or abs(a - b - 1.0) > 1e-9:
            raise RuleError(f"rule alphabeta: need α ≥ 0, β ≥ 0 and α − β = 1, got α={a:g}, β={b:g}")
    if name == "zbox":
        lo, hi = p["low"], p["high"]
        if math.isnan(lo) != math.isnan(hi):
            raise RuleError("rule zbox: give both bounds (zbox:LOW,HIGH) or neither")
        if not math.isnan(lo) and lo > hi:
            raise RuleError(f"rule zbox: low bound {lo:g} is above high bound {hi:g}")


def parse_rule(text: str) -> Rule:
    """Parse ``RULE[:P1[,P2]]`` as the CLI takes it (``gamma:0.25``, ``alphabeta:2,1``, ``zplus``)."""
    name, _, rest = text.partition(":")
    values: list[float] = []
    if rest.strip():
        for part in rest.split(","):
            try:
                values.append(float(part))
            except ValueError:
                raise RuleError(f"rule '{text}': parameter '{part}' is not a number") from None
    return make_rule(name, *values)
