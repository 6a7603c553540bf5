"""Every LRP rule, written once over an abstract linear map.

A linear layer (convolution, dense, average pool) is seen only through
``forward(x, w, b) = x ⋆ w + b`` and ``transpose(s, w, mul) = mul ⊙ (wᵀ ⋆ s)``; the rules
below are the four LRP steps (forward with ρ(w), stabilised divide, transposed product,
multiply by the input) for their own ρ. Modified weights are computed once per layer and
kept in a ``WeightCache``, so explaining many images never recomputes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from ..plan.rules import TINY, Rule


class LinearMap(Protocol):
    """A layer's linear part with exchangeable weights (what each rule needs).

    ``exact=True`` asks for products whose exact zeros stay exact zeros (no Winograd
    convolution): the rules that normalise positive and negative parts separately (z⁺,
    αβ) or rely on a sum being exactly zero (z^B, flat, w²) need it; LRP-0/ε/γ do not.
    """

    weight: np.ndarray
    bias: np.ndarray | None

    def forward(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None,
                exact: bool = False) -> np.ndarray: ...

    def transpose(self, s: np.ndarray, w: np.ndarray, mul: np.ndarray | None = None,
                  exact: bool = False, ratio: tuple | None = None) -> np.ndarray:
        """``mul ⊙ (wᵀ ⋆ s)``; with ``ratio=(z, eps)`` the product is taken of the
        stabilised ratio ``s / (z + eps·sign z)`` (the divide may be fused into the kernel)."""


#: ρ(w) for each weight variant a rule may ask for.
WEIGHT_MODIFIERS: dict[str, Callable[[np.ndarray, Any], np.ndarray]] = {
    "id": lambda w, p: w,
    "pos": lambda w, p: np.maximum(w, 0),
    "neg": lambda w, p: np.minimum(w, 0),
    "gamma": lambda w, p: w + p * np.maximum(w, 0),
    "ones": lambda w, p: np.ones_like(w),
    "square": lambda w, p: w * w,
    # W⁺ and W⁻ side by side along the input axis: z^B's two transposed products in one
    "zbox_stack": lambda w, p: np.concatenate([np.maximum(w, 0), np.minimum(w, 0)],
                                              axis=1 if w.ndim == 4 else 0),
}
#: variants that are not element-wise maps of the weights (no bias counterpart)
STACKED = {"zbox_stack"}


class WeightCache:
    """ρ(W) and ρ(b) per (layer, variant), computed on first use, in the compute dtype.

    ``put`` lets a backend store device copies; on the CPU the arrays stay numpy.
    """

    def __init__(self, backend) -> None:
        self.backend = backend
        self._store: dict[tuple, Any] = {}

    def get(self, layer_name: str, lin: LinearMap, variant: str, param: float = 0.0,
            dtype=np.float32) -> tuple[Any, Any]:
        key = (layer_name, variant, param, np.dtype(dtype).str)
        hit = self._store.get(key)
        if hit is None:
            fn = WEIGHT_MODIFIERS[variant]
            w = self.backend.asarray(fn(np.asarray(lin.weight, dtype), param), dtype)
            b = None
            if lin.bias is not None and variant not in STACKED:
                b = self.backend.asarray(fn(np.asarray(lin.bias, dtype), param), dtype)
            hit = self._store[key] = (w, b)
        return hit

    def clear(self) -> None:
        self._store.clear()


@dataclass(frozen=True)
class Term:
    """One modified forward product ``ρ_in(a) ⋆ ρ(W) (+ ρ(b))`` that a rule needs.

    ``inp`` is ``id``, ``pos`` (a⁺) or ``neg`` (a⁻); ``weight`` a ``WEIGHT_MODIFIERS`` key.
    Terms are what onnxruntime can compute during the forward pass (``ops.conv`` adds
    them as extra nodes), so the backward pass only runs transposed products.
    """

    inp: str
    weight: str
    param: float = 0.0
    bias: bool = True

    def tag(self) -> str:
        return f"{self.inp}:{self.weight}:{self.param:g}:{'b' if self.bias else 'nb'}"


def forward_terms(rule: Rule, nonneg: bool) -> list[Term]:
    """The input-dependent forward products ``rule`` needs (none where z is reused or constant).

    ``nonneg``: the layer's input is known to be ≥ 0 (it comes from a ReLU), so a⁺ = a and
    the a⁻ terms vanish.
    """
    pos_in = "id" if nonneg else "pos"
    if rule.name == "gamma":
        return [Term("id", "gamma", rule["gamma"])]
    if rule.name in ("zplus", "alphabeta"):
        beta = 0.0 if rule.name == "zplus" else rule["beta"]
        terms = [Term(pos_in, "pos")] + ([] if nonneg else [Term("neg", "neg", bias=False)])
        if beta != 0.0:
            terms += [Term(pos_in, "neg")] + ([] if nonneg else [Term("neg", "pos", bias=False)])
        return terms
    return []


def _split_input(a: np.ndarray, mode: str) -> np.ndarray:
    if mode == "pos":
        return np.maximum(a, 0)
    if mode == "neg":
        return np.minimum(a, 0)
    return a


class _Forward:
    """Gives a rule its forward terms: precomputed (by onnxruntime, or by an earlier pass
    over the same batch), else by the kernels — and records those it computes in ``terms``."""

    def __init__(self, lin: LinearMap, a: np.ndarray, cache: WeightCache, name: str,
                 terms: dict[Term, np.ndarray] | None, exact: bool = False) -> None:
        self.lin, self.a, self.cache, self.name = lin, a, cache, name
        self.terms = terms if terms is not None else {}
        self.exact = exact

    def weights(self, variant: str, param: float = 0.0):
        return self.cache.get(self.name, self.lin, variant, param, self.a.dtype)

    def __call__(self, term: Term) -> np.ndarray:
        hit = self.terms.get(term)
        if hit is not None:
            return hit
        w, b = self.weights(term.weight, term.param)
        value = self.lin.forward(_split_input(self.a, term.inp), w, b if term.bias else None, exact=self.exact)
        self.terms[term] = value
        return value


@dataclass
class Product:
    """One term ``coef · mul ⊙ (wᵀ ⋆ signal)`` of a rule's input relevance.

    ``signal`` is ``s``, or ``s / (z + eps·sign z)`` when ``ratio=(z, eps)``; ``mul`` is the
    input-side factor (the activation a, its positive or negative part, or a z^B bound),
    None meaning 1. The input relevance is the sum of a rule's products; the neuron graph's
    channel-pair flows are the same sum taken per (input channel, output channel) pair.
    """

    coef: float
    s: np.ndarray
    w: np.ndarray
    mul: np.ndarray | None
    ratio: tuple | None = None
    exact: bool = False

    def signal(self, backend) -> np.ndarray:
        return self.s if self.ratio is None else backend.stabilised_divide(self.s, *self.ratio)


def products(rule: Rule, lin: LinearMap, a: np.ndarray, r: np.ndarray, backend,
             cache: WeightCache, layer_name: str, z: np.ndarray | None = None,
             bounds: tuple[np.ndarray, np.ndarray] | None = None, nonneg: bool = False,
             terms: Mapping[Term, np.ndarray] | None = None) -> list[Product]:
    """The products whose sum is the input relevance of one linear layer under ``rule``.

    Parameters
    ----------
    a : the layer's input activation.
    r : relevance of the layer's output (same shape as the output).
    z : the layer's own output from onnxruntime; reused where ρ is the identity.
    bounds : (low, high) arrays shaped like ``a``, for ``zbox``.
    nonneg : ``a`` is known to be ≥ 0.
    terms : forward terms already computed (by onnxruntime), keyed by ``Term``.
    """
    name = rule.name
    exact = name not in ("zero", "epsilon", "gamma")
    fwd = _Forward(lin, a, cache, layer_name, terms, exact)
    if name in ("zero", "epsilon"):
        w, b = fwd.weights("id")
        if z is None:
            z = lin.forward(a, w, b)
        return [Product(1.0, r, w, a, (z, rule.get("epsilon", 0.0)))]
    if name == "gamma":
        term = Term("id", "gamma", rule["gamma"])
        return [Product(1.0, r, fwd.weights("gamma", rule["gamma"])[0], a, (fwd(term), TINY))]
    if name in ("zplus", "alphabeta"):
        alpha, beta = (1.0, 0.0) if name == "zplus" else (rule["alpha"], rule["beta"])
        return _alpha_beta(alpha, beta, fwd, a, r, backend, nonneg)
    if name in ("flat", "wsquare"):
        w, _ = fwd.weights("ones" if name == "flat" else "square")
        s = backend.stabilised_divide(r, lin.forward(np.ones_like(a), w, exact=True), TINY)
        return [Product(1.0, s, w, None, exact=True)]
    if name == "zbox":
        if bounds is None:
            raise ValueError("zbox needs bounds")
        low, high = bounds
        wp, _ = fwd.weights("pos")
        wn, _ = fwd.weights("neg")
        # z^B = Σ a·w − l·w⁺ − h·w⁻ = Σ (a − l)·w⁺ + (a − h)·w⁻: two sums of terms ≥ 0 (for
        # inputs within the bounds), so no cancellation. A neuron whose box is tight (binary
        # images: a = h under every w < 0 and a = l under every w > 0, e.g. blank background
        # next to the padding) has z^B and all its products exactly 0: it gets s = 0 (plain
        # division made safe) and passes nothing on. With a·w minus the bounds' part, or a
        # stabiliser, its s was rounding noise / 1e-9, and the transposed products (Winograd's
        # rounding mixes neighbours) spread that into relevance that changed with the batch size
        # and thread count; the transposes are exact here too.
        above, below = a - low, a - high
        zb = lin.forward(above, wp, exact=True) + lin.forward(below, wn, exact=True)
        s = backend.stabilised_divide(r, zb, 0.0)
        return [Product(1.0, s, wp, above, exact=True), Product(1.0, s, wn, below, exact=True)]
    raise ValueError(f"rule {name} does not apply to a linear layer")


def relevance(rule: Rule, lin: LinearMap, a: np.ndarray, r: np.ndarray, backend,
              cache: WeightCache, layer_name: str, z: np.ndarray | None = None,
              bounds: tuple[np.ndarray, np.ndarray] | None = None, nonneg: bool = False,
              terms: Mapping[Term, np.ndarray] | None = None) -> np.ndarray:
    """Input relevance of one linear layer under ``rule``: the sum of its ``products``."""
    prods = products(rule, lin, a, r, backend, cache, layer_name, z, bounds, nonneg, terms)
    return combine(rule, lin, prods, a.dtype, cache, layer_name)


def combine(rule: Rule, lin: LinearMap, prods: list[Product], dtype, cache: WeightCache,
            layer_name: str) -> np.ndarray:
    """Sum the transposed products into the input relevance."""
    dtype = np.dtype(dtype)
    if rule.name == "zbox" and getattr(lin, "stackable", False):
        # the two products share their signal: one transposed product with W⁺, W⁻ side by side
        stacked, _ = cache.get(layer_name, lin, "zbox_stack", 0.0, dtype)
        parts = np.split(lin.transpose(prods[0].s, stacked, exact=True), 2, axis=1)
        return sum(dtype.type(p.coef) * (p.mul * part) for p, part in zip(prods, parts))
    result = None
    for p in prods:
        t = lin.transpose(p.s, p.w, mul=p.mul, exact=p.exact, ratio=p.ratio)
        if p.coef != 1.0:
            t = t * dtype.type(p.coef)
        result = t if result is None else result + t
    return result


def channel_flows(lin: LinearMap, prods: list[Product], backend, rows: np.ndarray,
                  cols: np.ndarray) -> np.ndarray:
    """F[n, i, j]: relevance flowing from output channel ``cols[j]`` to input channel ``rows[i]``.

    The same products as ``relevance``, summed per channel pair over positions and taps:
    summing F over every output channel gives each input channel's relevance.
    """
    total = None
    for p in prods:
        f = lin.flow(p.signal(backend), p.w, p.mul, rows, cols)
        f = f * p.coef if p.coef != 1.0 else f
        total = f if total is None else total + f
    return total


def _bias_like(b: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Broadcast a per-output bias against ``z`` (channel axis 1)."""
    return b.reshape((1, -1) + (1,) * (z.ndim - 2)) if b.ndim == 1 else b


def _alpha_beta(alpha: float, beta: float, fwd: _Forward, a: np.ndarray, r: np.ndarray,
                backend, nonneg: bool) -> list[Product]:
    """αβ: positive and negative contributions normalised separately, weighted α and β.

    Contributions are ``a_j w_jk``; for a mixed-sign input their positive part is
    ``a⁺w⁺ + a⁻w⁻`` (and the negative part ``a⁺w⁻ + a⁻w⁺``). When the input is
    non-negative (after a ReLU) the ``a⁻`` terms vanish and are skipped. ``z⁺`` is α=1, β=0.
    """
    pos_in = "id" if nonneg else "pos"
    ap = a if nonneg else np.maximum(a, 0)
    an = None if nonneg else np.minimum(a, 0)
    wp, _ = fwd.weights("pos")
    wn, _ = fwd.weights("neg")

    def part(coef: float, same: str, other: str, w_same, w_other) -> list[Product]:
        z = fwd(Term(pos_in, same))
        if an is not None:
            z = z + fwd(Term("neg", other, bias=False))
        s = backend.stabilised_divide(r, z, 0.0)
        out = [Product(coef, s, w_same, ap, exact=True)]
        if an is not None and an.any():
            out.append(Product(coef, s, w_other, an, exact=True))
        return out

    prods = part(alpha, "pos", "neg", wp, wn)
    if beta != 0.0:
        prods += part(-beta, "neg", "pos", wn, wp)
    return prods


def is_identity(rule: Rule) -> bool:
    """Whether the rule's forward is the layer's own (so onnxruntime's output can be reused)."""
    return rule.name in ("zero", "epsilon")
