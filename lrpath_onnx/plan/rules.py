"""LRP rules as data: a name, its parameters, and the parts it is composed of.

A rule says how relevance crosses a linear layer ``z_k = Σ_j a_j w_jk + b_k``. Every rule of
the literature is the same computation with other parts (as zennit's hooks are input,
parameter and output modifiers):

- a **part** is one modified forward product ``ρ_in(a) ⋆ ρ(W) (+ ρ(b))``: an input modifier
  (``a``, ``a⁺``, ``a⁻``, ones, or z^B's ``a − l`` / ``a − h``), a weight modifier and
  whether the bias takes part;
- a **group** is parts normalised together: its outputs' relevance divided by the sum of
  its parts (stabilised), then sent back through each part; a coefficient (αβ's α, −β)
  and which outputs it explains (all of them, or only those whose own ``z`` is positive or
  negative: the generalized γ);
- a **form** is the groups plus the stabiliser, whether transposed products must keep
  exact zeros, and whether the layer's own output is the denominator (LRP-0/ε).

``backward.linear_rules`` evaluates any form; a new rule is one ``RuleSpec`` here.
Layers that are not linear get a fixed treatment (``wta`` for MaxPool, ``pass`` for
element-wise ops, ``route`` for reshapes, ``gate`` for squeeze-excitation gates,
``softmax`` for a softmax inside the network), merges (Add/Sum) split by contribution with
``zero`` or ``epsilon``, MatMuls of two activations take ``uniform`` or ``cp`` (AttnLRP,
CP-LRP), and a constant addition may take ``shift`` (a position embedding as a bias).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

from ..errors import RuleError

#: zennit's default stabiliser for every rule but ε (added with the sign of the denominator).
STABILISER = 1e-6


@dataclass(frozen=True)
class Part:
    """One modified forward product ``ρ_in(a) ⋆ ρ(W) (+ ρ(b))``.

    ``inp``: ``id``, ``pos`` (a⁺), ``neg`` (a⁻), ``ones``, ``above`` (a − low) or ``below``
    (a − high); ``weight``: a key of ``backward.linear_rules.WEIGHT_MODIFIERS``; ``param``
    its parameter (γ); ``bias``: ρ(b) is added to this part's forward.
    """

    inp: str
    weight: str
    param: float = 0.0
    bias: bool = True

    def tag(self) -> str:
        return f"{self.inp}:{self.weight}:{self.param:g}:{'b' if self.bias else 'nb'}"


@dataclass(frozen=True)
class Group:
    """Parts normalised together, weighted by ``coef``, explaining the outputs ``where``
    (``all``, or ``pos``/``neg``: those whose own ``z`` is positive/negative)."""

    parts: tuple[Part, ...]
    coef: float = 1.0
    where: str = "all"


@dataclass(frozen=True)
class Form:
    """How a rule computes: its groups, stabiliser, exactness and z reuse."""

    groups: tuple[Group, ...]
    stabiliser: float = STABILISER
    exact: bool = False     # transposed products keep exact zeros (no Winograd)
    reuse_z: bool = False   # one group, one plain part: the layer's own output is its forward
    fallback: bool = False  # outputs with a zero denominator pass their relevance on by w²

#: the part that carries a bias-free rule's relevance of outputs no input contributes to
FALLBACK = Part("ones", "square", 0.0, False)


@dataclass(frozen=True)
class RuleSpec:
    """What a rule is called, which parameters it takes (with defaults), for which layer
    kinds, and the parts it is made of (``form(params, nonneg_input, bias)``)."""

    name: str
    params: tuple[str, ...] = ()
    defaults: tuple[float, ...] = ()
    aliases: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ("linear",)
    doc: str = ""
    form: Callable[[dict, bool, bool], Form] | None = None


SPECS: dict[str, RuleSpec] = {}


def _spec(spec: RuleSpec) -> None:
    SPECS[spec.name] = spec


def _signed(nonneg: bool, same: str, other: str, param: float, bias: bool) -> tuple[Part, ...]:
    """``a⁺ ⋆ ρ_same(W) (+ bias)`` and, unless the input is non-negative, ``a⁻ ⋆ ρ_other(W)``."""
    if nonneg:
        return (Part("id", same, param, bias),)
    return (Part("pos", same, param, bias), Part("neg", other, param, False))


def _plain(p: dict, nonneg: bool, bias: bool) -> Form:
    return Form((Group((Part("id", "id", 0.0, bias),)),), stabiliser=p.get("epsilon", 0.0), reuse_z=True)


def _gamma(p: dict, nonneg: bool, bias: bool) -> Form:
    g = p["gamma"]
    return Form((Group(_signed(nonneg, "gamma+", "gamma-", g, bias), where="pos"),
                 Group(_signed(nonneg, "gamma-", "gamma+", g, bias), where="neg")), p["stabilizer"])


def _alpha_beta(alpha: float, beta: float, p: dict, nonneg: bool, bias: bool) -> Form:
    groups = [Group(_signed(nonneg, "pos", "neg", 0.0, bias), coef=alpha)]
    if beta != 0.0:
        groups.append(Group(_signed(nonneg, "neg", "pos", 0.0, bias), coef=-beta))
    return Form(tuple(groups), p["stabilizer"], exact=True)


_spec(RuleSpec("zero", aliases=("0", "lrp0", "lrp-0"), kinds=("linear", "merge"),
               doc="LRP-0: plain ratio z_jk / z_k", form=_plain))
_spec(RuleSpec("epsilon", ("epsilon",), (1e-6,), ("eps", "lrp-epsilon"), ("linear", "merge"),
               doc="LRP-ε: denominator z_k + ε·sign(z_k)", form=_plain))
_spec(RuleSpec("gamma", ("gamma", "stabilizer"), (0.25, STABILISER), ("lrp-gamma",),
               doc="generalized LRP-γ: positive outputs favour positive contributions (w + γw⁺ on a⁺, "
                   "w + γw⁻ on a⁻), negative outputs negative ones",
               form=_gamma))
_spec(RuleSpec("zplus", ("stabilizer",), (STABILISER,), ("z+", "alpha1beta0"),
               doc="z⁺: positive contributions only (a⁺w⁺ + a⁻w⁻)",
               form=lambda p, nn, b: _alpha_beta(1.0, 0.0, p, nn, b)))
_spec(RuleSpec("alphabeta", ("alpha", "beta", "stabilizer"), (2.0, 1.0, STABILISER), ("ab",),
               doc="αβ: positive part ×α, negative part ×β, α − β = 1",
               form=lambda p, nn, b: _alpha_beta(p["alpha"], p["beta"], p, nn, b)))
_spec(RuleSpec("alpha2beta1", (), (), (), doc="αβ with α = 2, β = 1"))
_spec(RuleSpec("flat", ("stabilizer",), (STABILISER,), (), doc="flat: uniform over the receptive field",
               form=lambda p, nn, b: Form((Group((Part("ones", "ones", 0.0, False),)),), p["stabilizer"],
                                          exact=True)))
_spec(RuleSpec("wsquare", ("stabilizer",), (STABILISER,), ("w2", "w^2", "wsq"),
               doc="w²: proportional to squared weights (and squared bias)",
               form=lambda p, nn, b: Form((Group((Part("ones", "square", 0.0, b),)),), p["stabilizer"],
                                          exact=True)))
_spec(RuleSpec("zbox", ("low", "high", "stabilizer"), (math.nan, math.nan, STABILISER), ("zb", "box", "zB"),
               doc="z^B: box-constrained first-layer rule (bounds from --mean/--std or --low/--high)",
               form=lambda p, nn, b: Form((Group((Part("above", "pos", 0.0, False),
                                                  Part("below", "neg", 0.0, False))),), p["stabilizer"],
                                          exact=True)))
_spec(RuleSpec("ratio", kinds=("merge", "affine"),
               doc="residual sums: each branch gets its share of the absolute contributions |x_i| / Σ|x_j| "
                   "(conserving, never amplifying; in the spirit of Otsuki et al.'s ratio-based splitting); "
                   "a constant affine map x·s + t: R_in = |x·s| / (|x·s| + |t|) · R, the shift keeping its share"))
_spec(RuleSpec("uniform", ("epsilon",), (1e-6,), ("attnlrp",), ("bilinear",),
               doc="MatMul of two activations (AttnLRP): each operand half of the relevance, by ε-LRP with "
                   "the other held constant"))
_spec(RuleSpec("cp", ("epsilon",), (1e-6,), ("cp-lrp", "cplrp"), ("bilinear",),
               doc="MatMul of two activations (CP-LRP): the attention weights are constants, all relevance "
                   "goes to the values by ε (a product without attention weights is split uniformly)"))
_spec(RuleSpec("shift", ("epsilon",), (0.0,), (), ("affine",),
               doc="a constant addition (a position embedding) absorbs its share like a bias: "
                   "R_in = x·scale·R / (y + ε·sign(y))"))
_spec(RuleSpec("softmax", kinds=("softmax",),
               doc="softmax inside the network (AttnLRP): R_in = x ⊙ (R_out − s ⊙ Σ R_out)"))
_spec(RuleSpec("wta", kinds=("wta",), doc="winner-take-all through MaxPool switches"))
_spec(RuleSpec("pass", kinds=("pass",), doc="element-wise layer: relevance passes unchanged"))
_spec(RuleSpec("route", kinds=("route",), doc="relevance moves with the data (reshape, transpose, concat)"))
_spec(RuleSpec("gate", kinds=("gate",), doc="signal × gate: the gate is a constant, all relevance to the signal"))

_ALIASES = {a.lower(): s.name for s in SPECS.values() for a in (s.name, *s.aliases)}
#: flags a rule text may carry besides its numbers
FLAGS = {"nobias": "the layer's bias takes no part (zennit's zero_params=['bias'])"}


@dataclass(frozen=True)
class Rule:
    """A rule name plus its parameter values (complete: defaults filled in).

    ``bias=False`` ignores the layer's bias in every modified forward (zennit's
    ``zero_params=['bias']``): the bias then absorbs no relevance.
    """

    name: str
    params: tuple[tuple[str, float], ...] = field(default=())
    bias: bool = True

    def __getitem__(self, key: str) -> float:
        return dict(self.params)[key]

    def get(self, key: str, default: float | None = None) -> float | None:
        return dict(self.params).get(key, default)

    @property
    def spec(self) -> RuleSpec:
        return SPECS[self.name]

    def form(self, nonneg_input: bool) -> Form:
        """The parts this rule is made of, for a layer whose input is (or is not) ≥ 0.

        Without its bias, a rule that weighs inputs by their contributions would lose the
        relevance of outputs none of its inputs contribute to (a group's denominator exactly 0:
        a neuron on by its bias alone, common after depthwise convolutions of ReLU zeros);
        those outputs pass their relevance on by the w² rule instead (``Form.fallback``), so
        the layer conserves.
        """
        if self.spec.form is None:
            raise ValueError(f"rule {self.name} does not apply to a linear layer")
        form = self.spec.form(dict(self.params), nonneg_input, self.bias)
        if not self.bias and any(p.inp in ("id", "pos", "neg") for g in form.groups for p in g.parts):
            form = replace(form, fallback=True)
        return form

    def _shown(self) -> list[tuple[str, float]]:
        spec = self.spec
        defaults = dict(zip(spec.params, spec.defaults))
        return [(k, v) for k, v in self.params
                if not (isinstance(v, float) and math.isnan(v)) and not (k == "stabilizer" and v == defaults[k])]

    def __str__(self) -> str:
        items = [f"{k}={v:g}" for k, v in self._shown()] + ([] if self.bias else ["nobias"])
        return self.name + (f"({', '.join(items)})" if items else "")

    def text(self) -> str:
        """The rule as ``--rule`` takes it back (``gamma:gamma=0.25,nobias``)."""
        items = [f"{k}={v:g}" for k, v in self._shown()] + ([] if self.bias else ["nobias"])
        return self.name + (":" + ",".join(items) if items else "")

    def to_json(self) -> dict:
        out = {"rule": self.name,
               "params": {k: v for k, v in self.params if not (isinstance(v, float) and math.isnan(v))}}
        if not self.bias:
            out["ignore_bias"] = True
        return out


def make_rule(name: str, *values: float, bias: bool = True, **named: float) -> Rule:
    """Build and validate a rule (``make_rule("gamma", 0.25)``, ``make_rule("zplus", stabilizer=0)``);
    unknown names list the valid ones."""
    key = _ALIASES.get(name.strip().lower())
    if key is None:
        from ..names import did_you_mean

        valid = sorted(s for s in SPECS if SPECS[s].form is not None or s in ("alpha2beta1", "ratio"))
        raise RuleError(f"unknown rule '{name}'{did_you_mean(name.strip().lower(), _ALIASES)}; valid rules: "
                        f"{', '.join(valid)}")
    spec = SPECS[key]
    if key == "alpha2beta1":
        spec, key, values = SPECS["alphabeta"], "alphabeta", (2.0, 1.0) + tuple(values)
    if len(values) > len(spec.params):
        raise RuleError(f"rule {key} takes {len(spec.params)} parameter(s) "
                        f"({', '.join(spec.params) or 'none'}), got {len(values)}")
    vals = dict(zip(spec.params, list(values) + list(spec.defaults[len(values):])))
    for k, v in named.items():
        if k not in spec.params:
            raise RuleError(f"rule {key} has no parameter '{k}' (it takes {', '.join(spec.params) or 'none'})")
        vals[k] = v
    params = tuple((k, float(vals[k])) for k in spec.params)
    if not bias and spec.form is None:
        raise RuleError(f"rule {key} has no bias to ignore")
    _validate(key, dict(params))
    return Rule(key, params, bias)


def _validate(name: str, p: dict[str, float]) -> None:
    for k, v in p.items():
        if math.isinf(v) or (math.isnan(v) and name != "zbox"):
            raise RuleError(f"rule {name}: parameter {k} must be finite, got {v}")
    if p.get("stabilizer", 0.0) < 0:
        raise RuleError(f"rule {name}: the stabilizer must be ≥ 0, got {p['stabilizer']:g}")
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
    """Parse ``RULE[:ITEM[,ITEM…]]`` as the CLI takes it: items are numbers in parameter order
    (``gamma:0.25``, ``alphabeta:2,1``), ``name=number`` (``gamma:gamma=0.5,stabilizer=0``) or the
    flag ``nobias`` — so every rule ``lrpath plan`` prints can be typed back, in the table's
    form ``gamma(gamma=0.5)`` as well."""
    text = text.strip()
    if text.endswith(")") and "(" in text:  # the plan table's form: name(items)
        name, _, rest = text[:-1].partition("(")
    else:
        name, _, rest = text.partition(":")
    values: list[float] = []
    named: dict[str, float] = {}
    bias = True
    if rest.strip():
        for part in rest.split(","):
            item = part.strip()
            if item.lower() in FLAGS:
                bias = False
                continue
            key, eq, val = item.partition("=")
            try:
                number = float(val if eq else item)
            except ValueError:
                raise RuleError(f"rule '{text}': parameter '{item}' is not a number, name=number or "
                                f"a flag ({', '.join(FLAGS)})") from None
            if eq:
                named[key.strip()] = number
            elif named:
                raise RuleError(f"rule '{text}': a plain number after name=value parameters")
            else:
                values.append(number)
    return make_rule(name, *values, bias=bias, **named)
