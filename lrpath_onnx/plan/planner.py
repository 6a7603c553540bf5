"""Rule plans: a rule for every layer, from a named preset plus ordered overrides.

Presets (``plan.presets``) map a LayerGraph to rules for its linear layers; the other
layers keep their handler's fixed treatment (MaxPool: wta, element-wise: pass, reshapes:
route, gates: gate, Add: ε-split). Overrides ``PATTERN=RULE[:ITEMS]`` match layer names
(glob) or indices and are applied in the order given.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Iterable

from ..errors import RuleError
from ..graph.layers import AffineLayer, Layer, LayerGraph
from .presets import inner_affine_layers, preset_rules
from .rules import SPECS, Rule, make_rule, parse_rule


@dataclass
class PlanEntry:
    layer: Layer
    rule: Rule
    source: str  # "preset", "override" or "fixed"


class Plan:
    """The rule of every layer, and where it came from."""

    def __init__(self, graph: LayerGraph, preset: str, entries: list[PlanEntry],
                 overrides: tuple[str, ...] = (), applied: str | None = None, reason: str = "") -> None:
        self.graph, self.preset, self.entries, self.overrides = graph, preset, entries, overrides
        self.applied = applied or preset  # the preset whose rules apply (``auto`` names its choice)
        self.reason = reason
        self._by_name = {e.layer.name: e for e in entries}

    def describe(self) -> str:
        """``auto → conserving (why)`` or the preset's name."""
        return f"{self.preset} → {self.applied} ({self.reason})" if self.preset != self.applied else self.preset

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


def _matches(layer: Layer, pattern: str, aliases: dict[str, str]) -> bool:
    if pattern.lstrip("-").isdigit():
        return layer.index == int(pattern)
    return (fnmatch.fnmatchcase(layer.name, pattern) or fnmatch.fnmatchcase(layer.output, pattern)
            or any(fnmatch.fnmatchcase(a, pattern) for a, n in aliases.items() if n == layer.name))


def parse_override(text: str) -> tuple[str, Rule]:
    """``PATTERN=RULE[:PARAM]`` → (pattern, rule)."""
    pattern, sep, rule = text.partition("=")
    if not sep or not pattern.strip() or not rule.strip():
        raise RuleError(f"--rule '{text}': expected PATTERN=RULE[:PARAM], e.g. 'features.0=zbox'")
    return pattern.strip(), parse_rule(rule)


def make_plan(graph: LayerGraph, preset: str = "auto", overrides: Iterable[str] = ()) -> Plan:
    """The plan for ``graph`` under ``preset`` (``auto``: chosen by graph analysis) with
    ``overrides`` applied in order."""
    applied, rules_of_preset, reason = preset_rules(graph, preset)
    entries = []
    for layer in graph.layers:
        h = layer.handler
        if layer.name in rules_of_preset:
            entries.append(PlanEntry(layer, rules_of_preset[layer.name], "preset"))
        else:
            entries.append(PlanEntry(layer, h.default_rule(layer), "fixed" if h.fixed_rule else "preset"))
    overrides = tuple(overrides)
    inner = {l.name for l in inner_affine_layers(graph)} if overrides else set()
    for text in overrides:
        pattern, rule = parse_override(text)
        hit = [e for e in entries if _matches(e.layer, pattern, graph.aliases)]
        if not hit:
            raise RuleError(f"--rule '{text}': pattern '{pattern}' matches no layer "
                            "(see `lrpath plan` for names and indices)")
        skip = inner if any(c in pattern for c in "*?[") else None  # a pattern, not a layer named
        fit = [e for e in hit if e.layer.handler.accepts(e.layer, rule) and _takes(skip, e.layer, rule)]
        if not fit:
            e = hit[0]
            raise RuleError(f"--rule '{text}': layer '{e.layer.name}' ({e.layer.op}) cannot take rule "
                            f"{rule.name}; it takes {', '.join(_rules_for(e.layer, skip))}")
        for e in fit:
            e.rule, e.source = rule, "override"
    return Plan(graph, preset, entries, overrides, applied, reason)


def _takes(inner_affine: set[str] | None, layer: Layer, rule: Rule) -> bool:
    """Whether a pattern gives ``layer`` ``rule``: an affine map takes ``zero``/``epsilon`` as a
    linear layer only inside the network (``inner_affine``: a BatchNorm after a pool or a
    concat). The input's own normalisation keeps its rule, so relevance stays in the
    normalised input's space, as under every preset; named alone (``inner_affine`` None), it
    takes them."""
    return (inner_affine is None or not isinstance(layer, AffineLayer) or rule.name not in ("zero", "epsilon")
            or layer.name in inner_affine)


def _rules_for(layer: Layer, inner_affine: set[str] | None) -> list[str]:
    return [name for name in SPECS if name != "alpha2beta1" and layer.handler.accepts(layer, make_rule(name))
            and _takes(inner_affine, layer, make_rule(name))]
