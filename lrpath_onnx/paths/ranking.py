"""Which paths of a neuron graph are the best: by the sum of their flows, or by the relevance
that follows them.

``flow`` is the paper's "longest path": a path's weight is the sum of its edges' flows. Where
every path crosses the same layers (a chain such as VGG16) that is a fair comparison. Where
paths differ in length (a skip connection jumps the columns of the branch it goes round) it
is not: a path through a branch adds two or three flows where one along the skip adds one.

``carried`` scores a path by the part of the decision that follows it when every neuron
passes its relevance down in proportion to its edges: the target's relevance times, per
edge u → v, the share ``F[u, v] / W_v`` of v's relevance that goes to u, where ``W_v`` is
R_v or, if larger, what v's edges of R_v's sign carry together. Where no neuron has edges of
both signs ``W_v = R_v``, and the parts add up, over all paths, to the relevance that
reaches the input, whatever the paths' lengths. Elsewhere a neuron splits in proportion to
its edges of its own sign; a path along an edge against its neuron's sign has none. No
share exceeds 1, so no path carries more than the target, and a path is never ranked first
for passing a neuron whose incoming flows cancel (one that holds almost nothing).
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass

import networkx as nx

from ..errors import InputError
from .kbest import k_best_paths

SCORES = ("auto", "flow", "carried")
__all__ = ["SCORES", "RankedPath", "ScoreChoice", "best_paths", "carried", "choose_score", "uneven_join"]


@dataclass(frozen=True)
class ScoreChoice:
    """The score paths are ranked by, and why (``auto`` says which it chose)."""

    score: str
    reason: str


@dataclass(frozen=True)
class RankedPath:
    """One of the best paths: its nodes, the sum of its flows, and the relevance following it."""

    nodes: list
    weight: float
    carried: float


def uneven_join(g: nx.DiGraph, source: Hashable) -> tuple | None:
    """The first edge (u, v) where paths of different lengths from ``source`` meet, u on the
    shortest (a skip connection), or None when every path to a node has the same length.
    ``build`` asks it of the model's graph layers, so every input is ranked alike."""
    lo: dict = {source: 0}
    hi: dict = {source: 0}
    for v in nx.topological_sort(g):
        preds = [u for u in g.pred[v] if u in lo]
        if not preds or v == source:
            continue
        lo[v], hi[v] = min(lo[u] for u in preds) + 1, max(hi[u] for u in preds) + 1
        if lo[v] != hi[v]:
            return min(preds, key=lambda u: lo[u]), v
    return None


def choose_score(g: nx.DiGraph, source: Hashable, sink: Hashable, score: str = "auto") -> ScoreChoice:
    """``flow`` where every path crosses the same number of layers, ``carried`` where they differ.

    The model's layer structure decides when ``build`` put it in the graph (``g.graph["skip"]``:
    the ``uneven_join`` of its graph layers, or ""), so every input of a model is ranked alike;
    a graph without it (hand-made) is read node by node. A target holding no relevance has no
    shares, and its paths are ranked by their flows."""
    if score not in SCORES:
        raise InputError(f"unknown --path-score '{score}'; choose one of {', '.join(SCORES)}")
    if score == "auto":
        if "skip" in g.graph:
            where = g.graph["skip"]
        else:
            skip = uneven_join(g, source)
            where = f"{_name(skip[0])} -> {_name(skip[1])}" if skip else ""
        if not where:
            return ScoreChoice("flow", "every path crosses the same layers: the sum of its flows (the paper's)")
        choice = ScoreChoice("carried", f"paths cross different numbers of layers (skip connections, e.g. "
                                        f"{where}): a sum of flows would favour the longer ones")
    else:
        choice = ScoreChoice(score, "chosen by name")
    if choice.score == "carried" and sink in g and not g.nodes[sink].get("relevance"):
        return ScoreChoice("flow", "the target holds no relevance, so no share of it follows a path: the sum of "
                                   "the flows")
    return choice


def _name(node) -> str:
    return f"{node[0]}:{node[1]}" if isinstance(node, tuple) else str(node)


def _whole(g: nx.DiGraph, v: Hashable) -> float:
    """What v's shares divide, signed as v's relevance: R_v, or the sum of v's edges of R_v's
    sign where that is larger (its incoming flows partly cancel); 0 when v holds none."""
    rv = float(g.nodes[v]["relevance"])
    if not rv:
        return 0.0
    same = sum(max(d["weight"] * rv, 0.0) for _, _, d in g.in_edges(v, data=True)) / abs(rv)
    return math.copysign(max(abs(rv), same), rv)


def _share(g: nx.DiGraph, u: Hashable, v: Hashable, whole: float | None = None) -> float:
    """The share of v's relevance that v passes down to u (0 when v holds none), at most 1."""
    whole = _whole(g, v) if whole is None else whole
    return g[u][v]["weight"] / whole if whole else 0.0


def carried(g: nx.DiGraph, path: list, sink: Hashable) -> float:
    """The relevance that follows ``path`` when every neuron splits its relevance in
    proportion to its edges: the sink's relevance times each edge's share."""
    value = float(g.nodes[sink]["relevance"])
    for u, v in zip(path, path[1:]):
        value *= _share(g, u, v)
    return value


def _log_shares(g: nx.DiGraph) -> nx.DiGraph:
    """The graph with each edge weighted by the log of its share; an edge with no positive
    share (it carries relevance against its neuron's sign, or none) cannot be on a path."""
    h = nx.DiGraph()
    h.add_nodes_from(g.nodes)
    wholes = {v: _whole(g, v) for v in g.nodes if g.in_degree(v)}
    for u, v in g.edges:
        s = _share(g, u, v, wholes[v])
        if s > 0:
            h.add_edge(u, v, weight=math.log(s))
    return h


def best_paths(g: nx.DiGraph, source: Hashable, sink: Hashable, k: int,
               score: str = "auto") -> tuple[list[RankedPath], ScoreChoice]:
    """The ``k`` best source-to-sink paths by ``score`` (``auto``: ``choose_score``), best first."""
    choice = choose_score(g, source, sink, score)
    ranked = k_best_paths(g if choice.score == "flow" else _log_shares(g), source, sink, k)
    paths = [RankedPath(p, float(sum(g[u][v]["weight"] for u, v in zip(p, p[1:]))), carried(g, p, sink))
             for _, p in ranked]
    return paths, choice
