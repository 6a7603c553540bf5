"""The K heaviest source-to-sink paths of a layered neuron graph, by a top-K dynamic programme.

The neuron graph carries the relevance flowing between neurons as edge weights, and the
paths that carry most of a decision are the heaviest ones. Enumerating paths is
exponential in the depth (16 neurons over 16 layers is 16**16 paths), so each node keeps
only its K best partial paths from the source: the prefix of one of the K best paths is
among the K best partial paths into every node it passes (otherwise K better prefixes
with the same suffix would give K better paths), so nothing needed is ever dropped. The
cost is O(E·K·log K) comparisons; only the partial paths that survive at a node (and
those tied with the K-th) have their node tuples copied.

Tie-breaking, so that results are reproducible whatever the graph's insertion order:
paths of equal weight are ordered lexicographically by the ``repr`` of their nodes (the
smaller first); two distinct nodes with the same ``repr`` are told apart by their
position in networkx's topological order. Nodes therefore need not be mutually
comparable (``"input"`` beside ``("features.2", 17)`` is fine). Note that ``repr`` orders
numbers as text: ``("f", 17)`` comes before ``("f", 5)``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable

import networkx as nx

__all__ = ["k_best_paths", "longest_path"]

_Partial = tuple[float, tuple[int, ...]]  # (weight so far, node ranks along the path)


def _order_by_key(topo: list[Hashable]) -> dict[Hashable, int]:
    """Rank every node by (repr, topological position): the tie-break order, as small ints."""
    keyed = sorted(range(len(topo)), key=lambda i: (repr(topo[i]), i))
    return {topo[i]: rank for rank, i in enumerate(keyed)}


def _edge_weight(data: dict, u: Hashable, v: Hashable, weight: str) -> float:
    """The edge's weight as a Python float; missing or non-finite weights would make the
    order of paths meaningless (NaN compares false with everything), so they are refused."""
    try:
        w = float(data[weight])
    except KeyError:
        raise ValueError(f"edge {u!r} -> {v!r} has no attribute {weight!r}") from None
    if not math.isfinite(w):
        raise ValueError(f"edge {u!r} -> {v!r} has a non-finite {weight!r}: {w}")
    return w


def k_best_paths(g: nx.DiGraph, source: Hashable, sink: Hashable, k: int,
                 weight: str = "weight") -> list[tuple[float, list]]:
    """The ``k`` heaviest distinct source-to-sink paths, heaviest first.

    Parameters
    ----------
    g : networkx.DiGraph
        A DAG whose edges carry a finite float ``weight`` (any sign; zero is fine).
    source, sink : hashable
        End nodes of the paths.
    k : int
        How many paths to return, at least 1.
    weight : str
        Name of the edge attribute holding the weight.

    Returns
    -------
    list of (float, list)
        ``(weight, nodes)`` pairs sorted by weight descending, ties broken by the module's
        ``repr`` order. The weight is accumulated as Python floats in path order, so it
        equals ``sum(g[u][v][weight] for u, v in zip(p, p[1:]))`` exactly. Fewer than ``k``
        entries when fewer paths exist; ``[]`` when ``source`` or ``sink`` is not in the
        graph or no path joins them (an empty answer rather than an error, because a
        pruned neuron graph may legitimately disconnect). ``source == sink`` gives the
        single empty-edged path ``[(0.0, [source])]``, as ``networkx.all_simple_paths`` does.

    Raises
    ------
    ValueError
        If ``k < 1``, the graph has a cycle, or an edge on the way lacks a finite weight.

    Notes
    -----
    Ties are exact equalities of the float weights. If two partial paths into a node
    differ in weight but later edges round their totals to the same float, the lighter
    one may already have been dropped, so among such rounding-made ties the returned
    path may not be the ``repr``-smallest; the returned weights are still exactly the
    ``k`` best.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if source not in g or sink not in g:
        return []
    try:
        topo = list(nx.topological_sort(g))
    except nx.NetworkXUnfeasible:
        raise ValueError("the graph has a cycle; k-best paths need a DAG") from None
    rank = _order_by_key(topo)
    node_of = {r: n for n, r in rank.items()}

    best: dict[Hashable, list[_Partial]] = {source: [(0.0, (rank[source],))]}
    for v in topo[topo.index(source) + 1:]:
        candidates = []  # (-weight, ranks before v): negated, so that tuples sort best first
        for u, data in g.pred[v].items():
            if u in best:
                ew = _edge_weight(data, u, v, weight)
                candidates.extend((-(w + ew), ranks) for w, ranks in best[u])
        if len(candidates) > k:  # only those as heavy as the k-th get their ranks copied
            cut = heapq.nsmallest(k, [c[0] for c in candidates])[-1]
            candidates = [c for c in candidates if c[0] <= cut]
        if candidates:
            rv = (rank[v],)
            best[v] = [(-nw, ranks) for nw, ranks in heapq.nsmallest(k, [(nw, r + rv) for nw, r in candidates])]
        if v == sink:
            break
    return [(w, [node_of[r] for r in ranks]) for w, ranks in best.get(sink, [])]


def longest_path(g: nx.DiGraph, source: Hashable, sink: Hashable,
                 weight: str = "weight") -> tuple[float, list]:
    """The heaviest source-to-sink path: ``k_best_paths(..., k=1)``, so ties agree with it.

    Returns
    -------
    (float, list)
        The weight and the nodes of the path; ``(-inf, [])`` when no path exists (the
        maximum over an empty set), so callers can test ``if not path``.
    """
    paths = k_best_paths(g, source, sink, 1, weight)
    return paths[0] if paths else (-math.inf, [])
