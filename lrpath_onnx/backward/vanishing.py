"""Layers whose outputs receive no relevance where the ReLU after them is off.

Behind a ReLU, relevance arrives as ``a ⊙ c`` from the layers above whenever their rules
weigh inputs by their activations (LRP-0/ε/γ/z⁺/αβ, residual splits, pools and routes that
keep a zero a zero): where the ReLU outputs 0 the relevance is exactly 0. A rule that explains
negative outputs apart (the generalized γ's second group) then has nothing to explain, and
its modified forward and transposed product can be left out — known from the graph and the
plan, so a compiled pass (which cannot look at the values) leaves them out too. The group
explaining the positive outputs then needs no gate either: the relevance already is 0 where
the ReLU is off.
"""

from __future__ import annotations

from ..graph.layers import (
    ActivationLayer,
    ConcatLayer,
    GateLayer,
    GatherLayer,
    LayerGraph,
    LinearLayer,
    MaxPoolLayer,
    MergeLayer,
    PadLayer,
    ReshapeLayer,
    SliceLayer,
    TransposeLayer,
)
from ..plan.planner import Plan

#: input modifiers that multiply by the activation (a, a⁺, a⁻): zero in, zero relevance out
_ACTIVATION_WEIGHTED = ("id", "pos", "neg")
_ROUTES = (ReshapeLayer, TransposeLayer, ConcatLayer, PadLayer, GatherLayer, SliceLayer, MaxPoolLayer)


def _zero_off(layer: ActivationLayer) -> bool:
    """A rectifier whose output is exactly 0 wherever its input is ≤ 0 (ReLU, Clip at 0)."""
    if layer.fn == "relu":
        return True
    return layer.fn == "clip" and layer.params.get("min") == 0 and not layer.parts


def quiet_negatives(graph: LayerGraph, plan: Plan, start_tensor: str | tuple[str, ...]) -> frozenset[str]:
    """Names of the linear layers whose relevance is 0 wherever the ReLU after them is 0 (worked
    out once per plan and start: every batch of an explain asks again). ``start_tensor``: where
    relevance is given from outside (several tensors where a pass adds some on the way)."""
    starts = (start_tensor,) if isinstance(start_tensor, str) else tuple(start_tensor)
    cache = plan.__dict__.setdefault("_quiet_negatives", {})
    key = (id(graph), starts)
    if key not in cache:
        cache[key] = _quiet_negatives(graph, plan, frozenset(starts))
    return cache[key]


def _quiet_negatives(graph: LayerGraph, plan: Plan, starts: frozenset[str]) -> frozenset[str]:
    memo: dict[str, bool] = {}

    def vanishes(tensor: str) -> bool:
        """Whether the relevance of ``tensor`` is 0 wherever its value is."""
        if tensor in starts:
            return False  # a relevance given from outside may sit anywhere
        if tensor not in memo:
            memo[tensor] = False  # (no cycles in a DAG; a guard all the same)
            memo[tensor] = all(_keeps_zero(c, tensor) for c in graph.consumers(tensor))
        return memo[tensor]

    def _keeps_zero(c, tensor: str) -> bool:
        if isinstance(c, LinearLayer):
            spec_form = plan.rule_for(c).spec.form
            if spec_form is None:
                return False
            form = plan.rule_for(c).form(c.nonneg_input)
            return not form.fallback and all(p.inp in _ACTIVATION_WEIGHTED for g in form.groups for p in g.parts)
        if isinstance(c, MergeLayer):
            return True  # each branch's share is its own value times a ratio
        if isinstance(c, GateLayer):
            return tensor != c.inputs[0] or vanishes(c.output)
        if isinstance(c, ActivationLayer):
            return _zero_off(c) and vanishes(c.output)
        return isinstance(c, _ROUTES) and vanishes(c.output)

    out = set()
    for layer in graph.layers:
        relu = graph.producer.get(layer.sign_tensor) if isinstance(layer, LinearLayer) and layer.sign_tensor else None
        if isinstance(relu, ActivationLayer) and _zero_off(relu) and relu.inputs == [layer.output] \
                and graph.consumers(layer.output) == [relu] and layer.output not in starts \
                and vanishes(relu.output):
            out.add(layer.name)
    return frozenset(out)
