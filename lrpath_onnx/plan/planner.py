"""Rule plans: a rule for every layer, from a named preset plus ordered overrides.

Presets are registered by name (zennit's composites, as data): each maps a LayerGraph to
rules for its linear layers; non-linear layers keep their fixed treatment (MaxPool: wta,
element-wise: pass, reshapes: route, Add: ε-split). Overrides ``PATTERN=RULE[:PARAM]``
match layer names (glob) or indices and are applied in the order given.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Callable, Iterable

import networkx as nx

from ..errors import RuleError
from ..graph.layers import ConvLayer, DenseLayer, Layer, LayerGraph
from .rules import SPECS, Rule, make_rule, parse_rule

PresetFn = Callable[[LayerGraph], dict[str, Rule]]
PRESETS: dict[str, tuple[PresetFn, str]] = {}


def register_preset(name: str, doc: str) -> Callable[[PresetFn], PresetFn]:
    """Decorator registering a preset under ``name``."""
    def deco(fn: PresetFn) -> PresetFn:
        PRESETS[name] = (fn, doc)
        return fn
    return deco


def first_layers(graph: LayerGraph) -> list[Layer]:
    """Conv/dense layers with no linear layer upstream: those that see the (normalised) input."""
    dag = graph.dag()
    linear = {l.name for l in graph.linear_layers()}
    return [l for l in graph.linear_layers()
            if isinstance(l, (ConvLayer, DenseLayer)) and not (nx.ancestors(dag, l.name) & linear)]


def _split_convs(graph: LayerGraph, upper: Rule, lower: Rule, dense: Rule, box: bool = True,
                 lower_fraction: float = 0.5) -> dict[str, Rule]:
    firsts = {l.name for l in first_layers(graph)} if box else set()
    convs = [l for l in graph.layers if isinstance(l, ConvLayer) and l.name not in firsts]
    n_lower = math.ceil(len(convs) * lower_fraction)
    rules: dict[str, Rule] = {name: make_rule("zbox") for name in firsts}
    for i, layer in enumerate(convs):
        rules[layer.name] = lower if i < n_lower else upper
    for layer in graph.layers:
        if isinstance(layer, DenseLayer) and layer.name not in rules:
            rules[layer.name] = dense
    return rules


@register_preset("paper", "the paper's split: z^B first layer, γ=0.25 on the lower half of the "
                          "conv layers, ε=0.25 on the upper half, LRP-0 on dense layers")
def _paper(graph: LayerGraph) -> dict[str, Rule]:
    return _split_convs(graph, upper=make_rule("epsilon", 0.25), lower=make_rule("gamma", 0.25),
                        dense=make_rule("zero"))


@register_preset("epsilon-gamma-box", "z^B first layer, γ=0.25 on every other conv, ε=1e-6 on "
                                      "dense layers and average pools")
def _epsilon_gamma_box(graph: LayerGraph) -> dict[str, Rule]:
    return _split_convs(graph, upper=make_rule("gamma", 0.25), lower=make_rule("gamma", 0.25),
                        dense=make_rule("epsilon", 1e-6))


@register_preset("epsilon-plus", "z⁺ on every conv, ε=1e-6 on dense layers")
def _epsilon_plus(graph: LayerGraph) -> dict[str, Rule]:
    return _split_convs(graph, upper=make_rule("zplus"), lower=make_rule("zplus"),
                        dense=make_rule("epsilon", 1e-6), box=False)


@register_preset("epsilon-alpha2-beta1", "α2β1 on every conv, ε=1e-6 on dense layers")
def _epsilon_alpha2_beta1(graph: LayerGraph) -> dict[str, Rule]:
    return _split_convs(graph, upper=make_rule("alphabeta", 2, 1), lower=make_rule("alphabeta", 2, 1),
                        dense=make_rule("epsilon", 1e-6), box=False)


@dataclass
class PlanEntry:
    layer: Layer
    rule: Rule
    source: str  # "preset", "override" or "fixed"


class Plan:
    """The rule of every layer, and where it came from."""

    def __init__(self, graph: LayerGraph, preset: str, entries: list[PlanEntry],
                 overrides: tuple[str, ...] = ()) -> None:
        self.graph, self.preset, self.entries, self.overrides = graph, preset, entries, overrides
        self._by_name = {e.layer.name: e for e in entries}

    def rule_for(self, layer: Layer) -> Rule:
        return self._by_name[layer.name].rule

    def uses(self, rule_name: str) -> list[Layer]:
        return [e.layer for e in self.entries if e.rule.name == rule_name]

    def to_json(self) -> list[dict]:
        return [{"index": e.layer.index, "name": e.layer.name, "op": e.layer.op,
                 "kind": e.layer.kind, **e.rule.to_json(), "source": e.source,
                 "nodes": e.layer.nodes} for e in self.entries]

    def table(self) -> str:
        """Plain-text table: index, node name, op, rule, parameters."""
        rows = [("#", "layer", "op", "rule", "details")]
        for e in self.entries:
            mark = "*" if e.source == "override" else ""
            rows.append((str(e.layer.index), e.layer.name, e.layer.op, str(e.rule) + mark,
                         e.layer.describe()))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
        lines.insert(1, "-" * min(max(len(l) for l in lines), 120))
        return "\n".join(l.rstrip() for l in lines)


def _matches(layer: Layer, pattern: str) -> bool:
    if pattern.lstrip("-").isdigit():
        return layer.index == int(pattern)
    return fnmatch.fnmatchcase(layer.name, pattern) or fnmatch.fnmatchcase(layer.output, pattern)


def parse_override(text: str) -> tuple[str, Rule]:
    """``PATTERN=RULE[:PARAM]`` → (pattern, rule)."""
    pattern, sep, rule = text.partition("=")
    if not sep or not pattern.strip() or not rule.strip():
        raise RuleError(f"--rule '{text}': expected PATTERN=RULE[:PARAM], e.g. 'features.0=zbox'")
    return pattern.strip(), parse_rule(rule)


def make_plan(graph: LayerGraph, preset: str = "epsilon-gamma-box",
              overrides: Iterable[str] = ()) -> Plan:
    """The plan for ``graph`` under ``preset`` with ``overrides`` applied in order."""
    if preset not in PRESETS:
        raise RuleError(f"unknown preset '{preset}'; valid presets: {', '.join(sorted(PRESETS))}")
    preset_rules = PRESETS[preset][0](graph)
    entries = []
    for layer in graph.layers:
        h = layer.handler
        if layer.name in preset_rules:
            entries.append(PlanEntry(layer, preset_rules[layer.name], "preset"))
        else:
            entries.append(PlanEntry(layer, h.default_rule(layer), "fixed" if h.fixed_rule else "preset"))
    overrides = tuple(overrides)
    for text in overrides:
        pattern, rule = parse_override(text)
        hit = [e for e in entries if _matches(e.layer, pattern)]
        if not hit:
            raise RuleError(f"--rule '{text}': pattern '{pattern}' matches no layer "
                            "(see `lrpath plan` for names and indices)")
        fit = [e for e in hit if e.layer.handler.accepts(e.layer, rule)]
        if not fit:
            e = hit[0]
            raise RuleError(f"--rule '{text}': layer '{e.layer.name}' ({e.layer.op}) cannot take rule "
                            f"{rule.name}; it takes {', '.join(_rules_for(e.layer))}")
        for e in fit:
            e.rule, e.source = rule, "override"
    return Plan(graph, preset, entries, overrides)


def _rules_for(layer: Layer) -> list[str]:
    return [name for name in SPECS if name != "alpha2beta1" and layer.handler.accepts(layer, make_rule(name))]
