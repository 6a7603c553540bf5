"""Every LRP rule, evaluated from its parts over an abstract linear map.

A linear layer (convolution, dense, average pool, resize) is seen only through
``forward(x, w, b) = x ⋆ w + b`` and ``transpose(s, w, mul) = mul ⊙ (wᵀ ⋆ s)``. A rule is a
``Form`` (``plan.rules``): groups of parts. For each group the relevance of the outputs it
explains is divided by the sum of its parts' forwards (stabilised), and each part sends
that signal back through its own weights, multiplied by its own input factor. Modified
weights are computed once per layer and kept in a ``WeightCache``, so explaining many
images never recomputes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from ..kernels import elementwise as _ew
from ..plan.rules import FALLBACK, STABILISER, Form, Part, Rule


class LinearMap(Protocol):
    """A layer's linear part with exchangeable weights (what each rule needs).

    ``exact=True`` asks for products whose exact zeros stay exact zeros (no Winograd
    convolution): the rules that normalise positive and negative parts separately (z⁺,
    αβ) or rely on a sum being exactly zero (z^B, flat, w²) need it; LRP-0/ε/γ do not.
    ``stackable``: weights may be stacked along the input axis (one transposed product
    for several parts that share a signal).
    """

    weight: np.ndarray
    bias: np.ndarray | None
    stackable: bool

    def forward(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None,
                exact: bool = False) -> np.ndarray: ...

    def transpose(self, s: np.ndarray, w: np.ndarray, mul: np.ndarray | None = None,
                  exact: bool = False, ratio: tuple | None = None) -> np.ndarray:
        """``mul ⊙ (wᵀ ⋆ s)``; with ``ratio=(z, eps)`` the product is taken of the
        stabilised ratio ``s / (z + eps·sign z)`` (the divide may be fused into the kernel)."""


#: ρ(w) for each weight modifier a part may name (the parameter is γ where one is used).
WEIGHT_MODIFIERS: dict[str, Callable[[np.ndarray, Any], np.ndarray]] = {
    "id": lambda w, p: w,
    "pos": lambda w, p: np.maximum(w, 0),
    "neg": lambda w, p: np.minimum(w, 0),
    "gamma+": lambda w, p: w + p * np.maximum(w, 0),
    "gamma-": lambda w, p: w + p * np.minimum(w, 0),
    "ones": lambda w, p: np.ones_like(w),
    "square": lambda w, p: w * w,
}


class WeightCache:
    """ρ(W) and ρ(b) per (layer, modifier), computed on first use, in the compute dtype;
    and weights of several modifiers stacked along the input axis.

    Arrays go through ``backend.asarray`` (a GPU backend keeps device copies).
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
            if lin.bias is not None:
                b = self.backend.asarray(fn(np.asarray(lin.bias, dtype), param), dtype)
            hit = self._store[key] = (w, b)
        return hit

    def stacked(self, layer_name: str, lin: LinearMap, parts: tuple[Part, ...], dtype) -> Any:
        """The parts' weights side by side along the input axis (axis 1 of a conv weight,
        axis 0 of a dense one)."""
        key = (layer_name, "stack", tuple((p.weight, p.param) for p in parts), np.dtype(dtype).str)
        hit = self._store.get(key)
        if hit is None:
            w = np.asarray(lin.weight, dtype)
            ws = [WEIGHT_MODIFIERS[p.weight](w, p.param) for p in parts]
            hit = self._store[key] = self.backend.asarray(np.concatenate(ws, axis=1 if w.ndim == 4 else 0), dtype)
        return hit

    def clear(self) -> None:
        self._store.clear()


#: a part's forward product, precomputed (onnxruntime) or computed once per batch
Term = Part


def forward_terms(rule: Rule, nonneg: bool) -> list[Part]:
    """The input-dependent forward products of ``rule`` onnxruntime may compute during the
    forward pass: the parts of groups that explain every or the positive outputs, with plain,
    a⁺ or a⁻ inputs (LRP-0/ε reuse the layer's own output; γ's negative group is computed by
    the kernels only when its outputs carry relevance)."""
    form = rule.form(nonneg)
    if form.reuse_z:
        return []
    return [p for g in form.groups if g.where in ("all", "pos") for p in g.parts if p.inp in ("id", "pos", "neg")]


def all_parts(rule: Rule, nonneg: bool) -> list[Part]:
    """Every forward product ``rule`` may compute (its groups' parts, and w²'s fallback)."""
    form = rule.form(nonneg)
    parts = [p for g in form.groups for p in g.parts]
    return parts + [FALLBACK] if form.fallback else parts


def _input(a: np.ndarray, part: Part, bounds) -> np.ndarray | None:
    """``ρ_in(a)`` of a part (None: the constant 1)."""
    if part.inp == "id":
        return a
    if part.inp == "pos":
        return np.maximum(a, 0)
    if part.inp == "neg":
        return np.minimum(a, 0)
    if part.inp == "ones":
        return None
    if bounds is None:
        raise ValueError("zbox needs bounds")
    return a - bounds[0] if part.inp == "above" else a - bounds[1]


def _writable_like(out, r) -> bool:
    """Whether ``out`` can take ``r``'s divide in place: same shape and dtype, contiguous
    (a float64 pass below a float32 start, ``relevance_below``, mixes the two)."""
    return out.shape == r.shape and out.dtype == r.dtype and out.flags.c_contiguous


def _denominator(fwd: "_Forward", parts, backend, drop: set):
    """The sum of the parts' forwards. Parts in ``drop`` (used by no other group, and kept by
    no caller) are forgotten by ``fwd`` once added, so no more than one of them is held at a
    time. On host arrays the sum is added up in place: in the first part's forward where
    ``fwd`` computed that one itself and drops it (z^B's bound terms: one buffer, not three),
    else in the sum's own array from the third part on. Convolution parts that no one keeps
    are summed by one product instead, where their products are exact or 1x1 (no Winograd to
    lose): their inputs side by side along the channels against their weights stacked the
    same way (z^B's two bound terms on VGG16's first layer: one GEMM with 54 taps instead of
    two with 27 and an add; γ's a⁺ and a⁻ terms on efficientnet-lite0's expand layers, whose
    inputs are signed: one product writing the sum instead of two and an add)."""
    if (len(parts) > 1 and backend.host_arrays and set(parts) <= drop
            and getattr(fwd.lin, "stackable", False) and hasattr(fwd.lin, "geom")  # a conv: channels on axis 1
            and (fwd.exact or tuple(fwd.lin.weight.shape[2:]) == (1, 1))
            and not any(p.bias or p in fwd.terms for p in parts)):
        inputs = [fwd.input(p) for p in parts]
        if all(x is not None for x in inputs):
            w = fwd.cache.stacked(fwd.name, fwd.lin, tuple(parts), fwd.a.dtype)
            return fwd.lin.forward(np.concatenate(inputs, axis=1), w, exact=True)
    denom = fwd(parts[0])
    owned = backend.host_arrays and parts[0] in drop and fwd.computed(parts[0])
    for i, part in enumerate(parts[1:], 1):
        if owned or (i > 1 and backend.host_arrays):
            denom += fwd(part)
        else:
            denom = denom + fwd(part)
        for done in parts[:i + 1]:
            if done in drop:
                fwd.terms.pop(done, None)
    return denom


class _Forward:
    """Gives a rule its part forwards: precomputed (by onnxruntime, or by an earlier pass
    over the same batch), else by the kernels — and records those it computes in ``terms``
    (from which ``products`` drops them again when no caller keeps them)."""

    def __init__(self, lin: LinearMap, a: np.ndarray, cache: WeightCache, name: str,
                 terms: dict[Part, np.ndarray] | None, bounds, exact: bool) -> None:
        self.lin, self.a, self.cache, self.name = lin, a, cache, name
        self.terms = terms if terms is not None else {}
        self.bounds, self.exact = bounds, exact
        self._inputs: dict[str, np.ndarray | None] = {}
        self._computed: set[Part] = set()

    def computed(self, part: Part) -> bool:
        """Whether this part's forward was computed here (no one else holds it unless the
        caller keeps ``terms``)."""
        return part in self._computed

    def weights(self, part: Part):
        return self.cache.get(self.name, self.lin, part.weight, part.param, self.a.dtype)

    def input(self, part: Part):
        if part.inp not in self._inputs:
            self._inputs[part.inp] = _input(self.a, part, self.bounds)
        return self._inputs[part.inp]

    def __call__(self, part: Part) -> np.ndarray:
        hit = self.terms.get(part)
        if hit is not None:
            return hit
        w, b = self.weights(part)
        x = self.input(part)
        value = self.lin.forward(np.ones_like(self.a) if x is None else x, w, b if part.bias else None,
                                 exact=self.exact)
        self.terms[part] = value
        self._computed.add(part)
        return value


@dataclass
class Product:
    """One term ``coef · mul ⊙ (wᵀ ⋆ signal)`` of a rule's input relevance.

    ``signal`` is ``s``, or ``s / (z + eps·sign z)`` when ``ratio=(z, eps)``; ``mul`` is the
    input-side factor (the activation a, its positive or negative part, or z^B's a − l),
    None meaning 1. The input relevance is the sum of a rule's products; the neuron graph's
    channel-pair flows are the same sum taken per (input channel, output channel) pair.
    ``part`` says which part of the rule it is (so products sharing a signal can be stacked).
    """

    coef: float
    s: np.ndarray
    w: np.ndarray
    mul: np.ndarray | None
    ratio: tuple | None = None
    exact: bool = False
    part: Part | None = None

    def signal(self, backend) -> np.ndarray:
        return self.s if self.ratio is None else backend.stabilised_divide(self.s, *self.ratio)


def bias_like(b, z):
    """A per-output bias shaped to broadcast against ``z`` (channel axis 1)."""
    return b.reshape((1, -1) + (1,) * (z.ndim - 2)) if b.ndim == 1 else b


def products(rule: Rule, lin: LinearMap, a: np.ndarray, r: np.ndarray, backend,
             cache: WeightCache, layer_name: str, z: np.ndarray | None = None,
             bounds: tuple[np.ndarray, np.ndarray] | None = None, nonneg: bool = False,
             terms: dict[Part, np.ndarray] | None = None, sign: tuple | None = None,
             quiet_negatives: bool = False, keep_terms: bool = True) -> list[Product]:
    """The products whose sum is the input relevance of one linear layer under ``rule``.

    Parameters
    ----------
    a : the layer's input activation.
    r : relevance of the layer's output (same shape as the output).
    z : the layer's own output from onnxruntime; reused where the rule's forward is it.
    bounds : (low, high) arrays shaped like ``a``, for z^B.
    nonneg : ``a`` is known to be ≥ 0.
    terms : part forwards already computed (by onnxruntime or an earlier pass), keyed by
        ``Part``; those the kernels compute here are added to it, so a caller that keeps
        them (``LinearHandler.relevance``) spares later passes over the same batch the work.
    sign : ``(tensor, rectified)``: a tensor positive exactly where the layer's output is
        (the output itself, or the ReLU after it: ``rectified``, zero where z ≤ 0). Groups that
        explain only positive or only negative outputs gate the relevance with it. None:
        the layer's own forward is computed.
    quiet_negatives : ``r`` is 0 wherever the ReLU after the layer is off
        (``backward.vanishing``): where the rule keeps the bias (its sign is then that
        ReLU's), the group explaining the non-positive outputs has nothing to explain and is
        left out, and the positive group needs no gate (the same values; a compiled graph has
        one node fewer). ``sign`` is not read then, so the session need not fetch it.
    keep_terms : False when no one keeps ``terms``: a multi-part group's forwards are dropped
        from it (the caller's entries too) once summed into their denominator, which is then
        divided in place (z^B's bound terms at VGG16's first layer: 100 MB each at batch 8),
        so they are not held through the transposed products.
    """
    form: Form = rule.form(nonneg)
    fwd = _Forward(lin, a, cache, layer_name, terms, bounds, form.exact)
    fast = _gamma_products(rule, form, fwd, r, backend, sign, quiet_negatives, keep_terms)
    if fast is not None:
        return fast
    out: list[Product] = []
    lost = None  # relevance of outputs whose denominator is 0 (passed on by w² when the form says so)

    def drop(coef, signal, denom):
        nonlocal lost
        if form.fallback and backend.gated_any(signal, denom, "zero"):
            part = backend.gate_by_sign(signal, denom, "zero")
            part = part if coef == 1.0 else part * np.dtype(a.dtype).type(coef)
            lost = part if lost is None else lost + part

    groups = form.groups
    if form.reuse_z:
        part = groups[0].parts[0]
        w, b = fwd.weights(part)
        if z is None:
            z = lin.forward(a, w, b if part.bias else None)
        elif not part.bias and b is not None:
            z = z - bias_like(b, z)
        out.append(Product(1.0, r, w, a, (z, form.stabiliser), part=part))
        drop(1.0, r, z)
        groups = groups[1:]
    for group in groups:
        signal = r
        if group.where == "neg" and quiet_negatives and rule.bias:
            continue
        if group.where == "pos" and quiet_negatives and rule.bias:
            pass  # r is already 0 wherever the ReLU (the sign) is off: the gate would copy it unchanged
        elif group.where != "all":
            if sign is None:  # the layer's own output (z, or z − b when the rule leaves the bias out)
                plain, b = fwd.weights(Part("id", "id"))
                sign = (lin.forward(a, plain, b if rule.bias else None), False)
            mode = "nonpos" if group.where == "neg" and (sign[1] or form.fallback) else group.where
            signal = backend.gate_by_sign(r, sign[0], mode)
            if group.where != "pos" and not signal.any():
                continue  # no output of this group carries relevance: skip its forwards
        elsewhere = {p for g in form.groups if g is not group for p in g.parts}
        denom = _denominator(fwd, group.parts, backend, set() if keep_terms else set(group.parts) - elsewhere)
        drop(group.coef, signal, denom)
        if len(group.parts) == 1:  # the divide may be fused into the transposed product
            part = group.parts[0]
            out.append(Product(group.coef, signal, fwd.weights(part)[0], fwd.input(part),
                               (denom, form.stabiliser), form.exact, part))
            continue
        if backend.host_arrays and _writable_like(denom, signal):  # the sum (its own array) is used only here
            s = backend.stabilised_divide(signal, denom, form.stabiliser, out=denom)
        else:
            s = backend.stabilised_divide(signal, denom, form.stabiliser)
        for part in group.parts:
            out.append(Product(group.coef, s, fwd.weights(part)[0], fwd.input(part), exact=form.exact, part=part))
    if lost is not None and lost.any():
        w, _ = fwd.weights(FALLBACK)
        stab = rule.get("stabilizer", min(form.stabiliser, STABILISER))  # a large ε is LRP-ε's own, not w²'s
        out.append(Product(1.0, lost, w, None, (fwd(FALLBACK), stab), False, FALLBACK))
    return out


def _complementary_gamma(form: Form) -> float | None:
    """γ when ``form`` is LRP-γ's pair of groups (positive outputs: ``ρ_in(a) ⋆ (W + γW^±)``,
    negative ones: the same inputs with W⁺ and W⁻ swapped), else None."""
    swap = {"gamma+": "gamma-", "gamma-": "gamma+"}
    if form.reuse_z or form.exact or len(form.groups) != 2:
        return None
    gp, gn = form.groups
    if (gp.where, gn.where, gp.coef, gn.coef) != ("pos", "neg", 1.0, 1.0) or len(gp.parts) != len(gn.parts):
        return None
    for a, b in zip(gp.parts, gn.parts):
        if (a.inp, a.param, a.bias) != (b.inp, b.param, b.bias) or swap.get(a.weight) != b.weight:
            return None
    if {(p.inp, p.weight) for p in gp.parts} not in ({("id", "gamma+")}, {("pos", "gamma+"), ("neg", "gamma-")}):
        return None
    return gp.parts[0].param


def _gamma_products(rule: Rule, form: Form, fwd: _Forward, r, backend, sign, quiet_negatives: bool,
                    keep_terms: bool) -> list[Product] | None:
    """LRP-γ's products from one forward product instead of one per group, where the layer's
    own output ``z`` is at hand (the sign tensor, not a ReLU's).

    Both groups' denominators follow from ``z`` and the input's positive contributions
    ``P = a⁺⋆W⁺ + a⁻⋆W⁻`` (its negative ones are ``z − b − P``): ``z + γ(P + b⁺)`` where
    ``z > 0`` and ``z + γ(z − b − P + b⁻)`` where it is not, each a sum of terms of one sign.
    The gates, both divides and the checks for zero denominators are one pass
    (``kernels.elementwise.gamma_signals``). On efficientnet-lite0's 1x1 layers (signed
    outputs, and signed inputs after a linear bottleneck) that is one product in four fewer
    and a third of the memory traffic: ``_blocks.1._expand_conv`` at batch 8 74 → 44 ms. None:
    the general evaluation applies (another backend, no ``z``, forwards already computed or
    kept for later passes, or γ's negative group left out anyway).
    """
    gamma = _complementary_gamma(form)
    if (gamma is None or not backend.host_arrays or sign is None or sign[1] or keep_terms
            or (quiet_negatives and rule.bias) or any(p in fwd.terms for g in form.groups for p in g.parts)):
        return None
    z = sign[0]
    if z.shape != r.shape:
        return None
    plus = form.groups[0].parts
    zeros = np.zeros(r.shape[1], r.dtype)
    b = fwd.lin.bias if plus[0].bias else None  # per output channel (axis 1), as ``bias_like`` reads it
    if b is not None and np.size(b) != r.shape[1]:
        return None
    cb = zeros if b is None else np.asarray(b, r.dtype).reshape(-1)
    bp, bn = np.maximum(cb, 0), np.minimum(cb, 0)
    contrib = tuple(Part(p.inp, "pos" if p.weight == "gamma+" else "neg", 0.0, False) for p in plus)
    P = _denominator(fwd, contrib, backend, set(contrib))
    neg_mode = "nonpos" if form.fallback else "neg"
    s_pos, s_neg, lost_p, lost_n, live_n = _ew.gamma_signals(r, z, P, cb, bp, bn, gamma, form.stabiliser, neg_mode)
    out = []
    for group, s in zip(form.groups, (s_pos, s_neg)):
        if group.where == "neg" and not live_n:
            continue
        out.extend(Product(1.0, s, fwd.weights(p)[0], fwd.input(p), exact=form.exact, part=p) for p in group.parts)
    if form.fallback and (lost_p or lost_n):
        lost = _ew.gamma_lost(r, z, P, cb, bp, bn, gamma, neg_mode)
        w, _ = fwd.weights(FALLBACK)
        stab = rule.get("stabilizer", min(form.stabiliser, STABILISER))
        out.append(Product(1.0, lost, w, None, (fwd(FALLBACK), stab), False, FALLBACK))
    return out


def relevance(rule: Rule, lin: LinearMap, a: np.ndarray, r: np.ndarray, backend,
              cache: WeightCache, layer_name: str, z: np.ndarray | None = None,
              bounds: tuple[np.ndarray, np.ndarray] | None = None, nonneg: bool = False,
              terms: Mapping[Part, np.ndarray] | None = None, sign: tuple | None = None) -> np.ndarray:
    """Input relevance of one linear layer under ``rule``: the sum of its ``products``."""
    prods = products(rule, lin, a, r, backend, cache, layer_name, z, bounds, nonneg, dict(terms or {}), sign)
    return combine(lin, prods, a, cache, layer_name)


def combine(lin: LinearMap, prods: list[Product], a: np.ndarray, cache: WeightCache,
            layer_name: str) -> np.ndarray:
    """Sum the transposed products into the input relevance.

    Products that share a signal (the parts of one group) go through one transposed product
    with their weights stacked, where the map allows it."""
    dtype = np.dtype(a.dtype)
    result, owned = None, False  # owned: ``result`` is this function's own numpy array, added to in place
    i = 0
    while i < len(prods):
        j = i + 1
        while j < len(prods) and prods[j].s is prods[i].s and prods[j].ratio is None and prods[i].ratio is None:
            j += 1
        batch = prods[i:j]
        if len(batch) > 1 and getattr(lin, "stackable", False) and all(p.part is not None for p in batch):
            stacked = cache.stacked(layer_name, lin, tuple(p.part for p in batch), dtype)
            pieces = np.split(lin.transpose(batch[0].s, stacked, exact=batch[0].exact), len(batch), axis=1)
            if all(isinstance(x, np.ndarray) and x.shape == piece.shape
                   for p, piece in zip(batch, pieces) for x in (p.mul, piece)):
                for p, piece in zip(batch, pieces):  # each part's mul ⊙ share added in one pass
                    if not owned:
                        fresh = _ew.add_product(np.empty(piece.shape, dtype), p.mul, piece, p.coef, first=True)
                        result, owned = fresh if result is None else np.add(fresh, result, out=fresh), True
                    else:
                        _ew.add_product(result, p.mul, piece, p.coef)
                i = j
                continue
            terms = [p.mul * piece if p.mul is not None else piece for p, piece in zip(batch, pieces)]
        else:
            terms = [lin.transpose(p.s, p.w, mul=p.mul, exact=p.exact, ratio=p.ratio) for p in batch]
        for p, t in zip(batch, terms):
            if p.coef != 1.0:
                t = t * dtype.type(p.coef)
            if result is None:
                result = t
            elif owned:
                result += t
            else:
                result = result + t
                owned = isinstance(result, np.ndarray)
        i = j
    if result is None:  # every group was gated off: nothing reaches the input
        result = a * dtype.type(0)
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


def is_identity(rule: Rule) -> bool:
    """Whether the rule's forward is the layer's own (so onnxruntime's output can be reused)."""
    return rule.spec.form is not None and rule.form(True).reuse_z


def needs_sign(rule: Rule, nonneg: bool) -> bool:
    """Whether some group of the rule explains only positive or only negative outputs."""
    return any(g.where != "all" for g in rule.form(nonneg).groups)
