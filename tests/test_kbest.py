"""K best and longest paths of the neuron graph, checked against brute-force enumeration
and networkx, on seeded random layered DAGs, hypothesis-drawn graphs and edge cases."""

from __future__ import annotations

import math
import time

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrpath_onnx.paths.kbest import k_best_paths, longest_path

SRC, SNK = "input", "target"


def path_weight(g: nx.DiGraph, p: list) -> float:
    return sum(g[u][v]["weight"] for u, v in zip(p, p[1:]))


def brute_force(g: nx.DiGraph, k: int) -> list[tuple[float, list]]:
    """Every source-to-sink path, heaviest first, ties by the nodes' repr (the documented rule)."""
    paths = [(path_weight(g, p), p) for p in nx.all_simple_paths(g, SRC, SNK)]
    paths.sort(key=lambda wp: (-wp[0], tuple(map(repr, wp[1]))))
    return paths[:k]


def layered_dag(rng: np.random.Generator, *, connected: bool = False,
                integer_only: bool = False, nonnegative: bool = False) -> nx.DiGraph:
    """Source, 3-6 layers of 1-5 neurons, sink; random edges to the next layer, a few that
    skip one. Small integer weights (often) make exact ties. ``connected`` gives every
    neuron a predecessor and a successor, so every maximal path runs source to sink."""
    def weight() -> float:
        if integer_only or rng.random() < 0.4:
            return float(rng.integers(0 if nonnegative else -2, 3))
        w = float(rng.standard_normal())
        return abs(w) if nonnegative else w

    hidden = [[(f"features.{2 * l}", i) for i in range(rng.integers(1, 6))]
              for l in range(rng.integers(3, 7))]
    layers = [[SRC], *hidden, [SNK]]
    g = nx.DiGraph()
    g.add_nodes_from(n for layer in layers for n in layer)
    for a, b in zip(layers, layers[1:]):
        for u in a:
            for v in b:
                if rng.random() < 0.6:
                    g.add_edge(u, v, weight=weight())
        if connected:
            for v in b:
                if g.in_degree(v) == 0:
                    g.add_edge(a[rng.integers(len(a))], v, weight=weight())
            for u in a:
                if g.out_degree(u) == 0:
                    g.add_edge(u, b[rng.integers(len(b))], weight=weight())
    for a, c in zip(layers, layers[2:]):
        for u in a:
            if rng.random() < 0.15:
                g.add_edge(u, c[rng.integers(len(c))], weight=weight())
    return g


@pytest.mark.parametrize("seed", range(60))
def test_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    g = layered_dag(rng, integer_only=seed % 3 == 0, connected=seed % 2 == 0)
    for k in range(1, 11):
        assert k_best_paths(g, SRC, SNK, k) == brute_force(g, k), k


@pytest.mark.parametrize("seed", range(60))
def test_longest_agrees_with_networkx(seed):
    # networkx considers every path of the DAG and restarts at zero when a prefix turns
    # negative; with non-negative weights and every maximal path running source to sink
    # its longest path is a source-to-sink path, so the weights must agree.
    g = layered_dag(np.random.default_rng(1000 + seed), connected=True,
                    nonnegative=True, integer_only=seed % 3 == 0)
    w, p = longest_path(g, SRC, SNK)
    assert w == nx.dag_longest_path_length(g)
    assert w == path_weight(g, nx.dag_longest_path(g))
    assert w == path_weight(g, p) and p[0] == SRC and p[-1] == SNK
    assert [(w, p)] == k_best_paths(g, SRC, SNK, 1) == brute_force(g, 1)


@st.composite
def drawn_graphs(draw):
    sizes = draw(st.lists(st.integers(1, 4), min_size=1, max_size=5))
    layers = [[SRC], *[[(f"l{l}", i) for i in range(n)] for l, n in enumerate(sizes)], [SNK]]
    weights = st.one_of(st.floats(-1e3, 1e3, allow_nan=False), st.integers(-2, 2).map(float))
    g = nx.DiGraph()
    g.add_nodes_from(n for layer in layers for n in layer)
    for step in (1, 2):
        for a, b in zip(layers, layers[step:]):
            for u in a:
                for v in b:
                    if draw(st.booleans() if step == 1 else st.sampled_from([False] * 4 + [True])):
                        g.add_edge(u, v, weight=draw(weights))
    return g


@settings(max_examples=200, deadline=None)
@given(drawn_graphs(), st.integers(1, 12))
def test_properties(g, k):
    result = k_best_paths(g, SRC, SNK, k)
    weights = [w for w, _ in result]
    assert weights == sorted(weights, reverse=True)
    assert len({tuple(p) for _, p in result}) == len(result)
    for w, p in result:
        assert p[0] == SRC and p[-1] == SNK and all(g.has_edge(u, v) for u, v in zip(p, p[1:]))
        assert w == path_weight(g, p)
    # The weights are exactly the k best even where rounding makes ties.
    assert weights == [w for w, _ in brute_force(g, k)]


def diamond(w_top: float, w_bottom: float) -> nx.DiGraph:
    g = nx.DiGraph()
    g.add_edge(SRC, "a", weight=w_top)
    g.add_edge(SRC, "b", weight=w_bottom)
    g.add_edge("a", SNK, weight=0.5)
    g.add_edge("b", SNK, weight=0.5)
    return g


def test_k_larger_than_number_of_paths():
    assert k_best_paths(diamond(2.0, 1.0), SRC, SNK, 10) == [(2.5, [SRC, "a", SNK]),
                                                             (1.5, [SRC, "b", SNK])]


def test_single_edge():
    g = nx.DiGraph()
    g.add_edge(SRC, SNK, weight=2.5)
    assert k_best_paths(g, SRC, SNK, 3) == [(2.5, [SRC, SNK])]
    assert longest_path(g, SRC, SNK) == (2.5, [SRC, SNK])


def test_negative_weights_keep_whole_paths():
    g = diamond(-3.0, -1.0)
    assert k_best_paths(g, SRC, SNK, 2) == [(-0.5, [SRC, "b", SNK]), (-2.5, [SRC, "a", SNK])]
    # networkx would return a partial (empty-weight) path here; ours runs source to sink.
    assert longest_path(g, SRC, SNK) == (-0.5, [SRC, "b", SNK])


def test_zero_weights_tie_by_repr():
    g = nx.DiGraph()
    for n in [("f", 5), ("f", 17), ("f", 3)]:
        g.add_edge(SRC, n, weight=0.0)
        g.add_edge(n, SNK, weight=0.0)
    # repr order: "('f', 17)" < "('f', 3)" < "('f', 5)".
    assert k_best_paths(g, SRC, SNK, 3) == [(0.0, [SRC, ("f", 17), SNK]),
                                            (0.0, [SRC, ("f", 3), SNK]),
                                            (0.0, [SRC, ("f", 5), SNK])]


def test_ties_do_not_depend_on_insertion_order():
    g = layered_dag(np.random.default_rng(7), integer_only=True, connected=True)
    h = nx.DiGraph()
    h.add_nodes_from(reversed(list(g.nodes)))
    h.add_edges_from(reversed(list(g.edges(data=True))))
    assert k_best_paths(g, SRC, SNK, 10) == k_best_paths(h, SRC, SNK, 10)


def test_disconnected_or_missing_ends():
    g = diamond(1.0, 2.0)
    g.remove_edges_from([("a", SNK), ("b", SNK)])
    assert k_best_paths(g, SRC, SNK, 3) == []
    assert longest_path(g, SRC, SNK) == (-math.inf, [])
    assert k_best_paths(g, SRC, "nowhere", 3) == []
    assert k_best_paths(g, "nowhere", SNK, 3) == []
    assert k_best_paths(g, SRC, SRC, 2) == [(0.0, [SRC])]


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_bad_k_raises(k):
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        k_best_paths(diamond(1.0, 2.0), SRC, SNK, k)


def test_bad_graph_raises():
    g = diamond(1.0, float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        k_best_paths(g, SRC, SNK, 1)
    g = diamond(1.0, 2.0)
    del g[SRC]["a"]["weight"]
    with pytest.raises(ValueError, match="no attribute 'weight'"):
        k_best_paths(g, SRC, SNK, 1)
    g = diamond(1.0, 2.0)
    g.add_edge(SNK, SRC, weight=1.0)
    with pytest.raises(ValueError, match="cycle"):
        k_best_paths(g, SRC, SNK, 1)


def vgg_like(weight_of) -> nx.DiGraph:
    """16 layers of 16 neurons, all edges between consecutive layers (~4000 edges)."""
    layers = [[SRC], *[[(f"features.{l}", i) for i in range(16)] for l in range(16)], [SNK]]
    g = nx.DiGraph()
    for a, b in zip(layers, layers[1:]):
        g.add_edges_from((u, v, {"weight": weight_of(u, v)}) for u in a for v in b)
    return g


def test_vgg_sized_graph_known_answer_and_speed():
    # An edge into neuron j weighs j: the best path takes neuron 15 everywhere; the next
    # 16 tie (14 in one layer), and the repr rule puts the earliest 14 first.
    g = vgg_like(lambda u, v: 0.0 if v == SNK else float(v[1]))
    start = time.perf_counter()
    result = k_best_paths(g, SRC, SNK, 5)
    assert time.perf_counter() - start < 0.5  # sanity only; it takes milliseconds
    top = [SRC, *[(f"features.{l}", 15) for l in range(16)], SNK]
    expected = [(240.0, top)]
    for layer in range(4):
        p = list(top)
        p[1 + layer] = (f"features.{layer}", 14)
        expected.append((239.0, p))
    assert result == expected
    assert longest_path(g, SRC, SNK) == expected[0]


def top_k_by_suffix(g: nx.DiGraph, k: int) -> list[tuple[float, list]]:
    """Reference for big graphs: keep the k best suffixes to the sink, walking backwards."""
    suffixes = {SNK: [(0.0, [SNK])]}
    for u in reversed(list(nx.topological_sort(g))):
        cands = [(g[u][v]["weight"] + w, [u, *p])
                 for v in g.succ[u] for w, p in suffixes.get(v, [])]
        if u != SNK and cands:
            suffixes[u] = sorted(cands, key=lambda wp: -wp[0])[:k]
    paths = [(path_weight(g, p), p) for _, p in suffixes[SRC]]
    return sorted(paths, key=lambda wp: (-wp[0], tuple(map(repr, wp[1]))))


@pytest.mark.parametrize("seed", range(3))
def test_vgg_sized_graph_random_weights(seed):
    rng = np.random.default_rng(seed)
    g = vgg_like(lambda u, v: abs(float(rng.standard_normal())))
    result = k_best_paths(g, SRC, SNK, 5)
    assert result == top_k_by_suffix(g, 5)
    assert result[0][0] == nx.dag_longest_path_length(g)
