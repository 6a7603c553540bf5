"""How the K best paths are ranked: the paper's sum of flows, or the relevance a path carries
(each neuron splitting its relevance in proportion to its edges), checked against brute-force
enumeration of every path on random layered graphs with skip edges."""

from __future__ import annotations

import json
import math

import networkx as nx
import numpy as np
import pytest

from lrpath_onnx.audit.config import AuditConfig, load_config
from lrpath_onnx.errors import InputError
from lrpath_onnx.models.registry import HERE
from lrpath_onnx.paths import SINK, SOURCE, k_best_paths
from lrpath_onnx.paths.ranking import best_paths, carried, choose_score, uneven_join

from tests.test_cli import lrpath

DIGITS = HERE / "digits"


def layered_graph(seed: int, widths=(3, 4, 2, 3), skips: bool = True, signed: bool = False) -> nx.DiGraph:
    """A neuron graph as ``build`` makes it: columns of neurons, each neuron's relevance split
    over its edges to the column below (and, with ``skips``, to a column two below), so the
    edges into a neuron from below add up to what it passes down. The sink holds 1."""
    rng = np.random.default_rng(seed)
    g = nx.DiGraph()
    cols = [[SOURCE]] + [[(f"l{c}", i) for i in range(w)] for c, w in enumerate(widths)] + [[SINK]]
    for c, col in enumerate(cols):
        for n in col:
            g.add_node(n, column=c)
    g.nodes[SINK]["relevance"] = 1.0
    for c in range(len(cols) - 1, 0, -1):
        for v in cols[c]:
            rel = g.nodes[v]["relevance"]
            below = list(cols[c - 1]) + (list(cols[c - 2]) if skips and c >= 2 and c < len(cols) - 1 else [])
            parts = rng.dirichlet(np.ones(len(below)))
            if signed:
                parts = parts - 0.15
            for u, p in zip(below, parts):
                g.add_edge(u, v, weight=float(rel * p))
        for u in cols[c - 1]:
            g.nodes[u]["relevance"] = sum(d["weight"] for _, _, d in g.out_edges(u, data=True))
    return g


def brute_force(g: nx.DiGraph) -> list[tuple[float, list]]:
    """Every source-to-sink path with the product of its edges' shares of the upper neuron."""
    out = []
    for p in nx.all_simple_paths(g, SOURCE, SINK):
        value = g.nodes[SINK]["relevance"]
        for u, v in zip(p, p[1:]):
            value *= g[u][v]["weight"] / g.nodes[v]["relevance"]
        out.append((value, p))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_carried_paths_are_the_brute_force_best_and_add_up_to_the_target(seed):
    g = layered_graph(seed)
    every = brute_force(g)
    assert sum(v for v, _ in every) == pytest.approx(1.0, rel=1e-12)  # the parts of the decision add up
    assert len({len(p) for _, p in every}) > 1  # skip edges: paths of different lengths
    ranked, choice = best_paths(g, SOURCE, SINK, 6)
    assert choice.score == "carried" and "skip connections" in choice.reason
    expected = sorted(v for v, _ in every)[::-1][:6]
    np.testing.assert_allclose([p.carried for p in ranked], expected, rtol=1e-9)
    for p in ranked:
        assert p.carried == pytest.approx(carried(g, p.nodes, SINK), rel=1e-12)
        assert p.weight == pytest.approx(sum(g[u][v]["weight"] for u, v in zip(p.nodes, p.nodes[1:])), rel=1e-12)


@pytest.mark.parametrize("seed", [0, 5])
def test_flow_is_the_papers_sum_and_auto_keeps_it_on_chains(seed):
    g = layered_graph(seed, skips=False)
    ranked, choice = best_paths(g, SOURCE, SINK, 4)
    assert choice.score == "flow" and "same layers" in choice.reason
    assert [(p.weight, p.nodes) for p in ranked] == k_best_paths(g, SOURCE, SINK, 4)
    skipping = layered_graph(seed)
    by_flow, named = best_paths(skipping, SOURCE, SINK, 4, "flow")
    assert named.reason == "chosen by name"
    assert [(p.weight, p.nodes) for p in by_flow] == k_best_paths(skipping, SOURCE, SINK, 4)
    # the sum of flows favours the longer paths, the carried relevance does not
    by_carried, _ = best_paths(skipping, SOURCE, SINK, 4, "carried")
    assert min(len(p.nodes) for p in by_carried) < max(len(p.nodes) for p in by_flow)


def test_edges_against_their_neurons_sign_carry_nothing():
    g = layered_graph(7, signed=True)
    negative = [(u, v) for u, v, d in g.edges(data=True) if d["weight"] / g.nodes[v]["relevance"] <= 0]
    assert negative
    ranked, _ = best_paths(g, SOURCE, SINK, 50)
    positive = [(v, p) for v, p in brute_force(g)
                if all(g[a][b]["weight"] / g.nodes[b]["relevance"] > 0 for a, b in zip(p, p[1:]))]
    assert len(ranked) == min(50, len(positive))
    assert all(p.carried > 0 for p in ranked)
    assert not {e for p in ranked for e in zip(p.nodes, p.nodes[1:])} & set(negative)


def test_unknown_score_is_refused():
    with pytest.raises(InputError, match="unknown --path-score 'longest'; choose one of auto, flow, carried"):
        choose_score(layered_graph(0), SOURCE, SINK, "longest")


def test_audit_config_takes_a_path_score(tmp_path):
    cfg = tmp_path / "a.toml"
    cfg.write_text('[audit]\npath_score = "flow"\n')
    assert load_config(cfg).path_score == "flow" and AuditConfig().path_score == "auto"
    cfg.write_text('[audit]\npath_score = "longest"\n')
    with pytest.raises(InputError, match="path_score must be one of auto, flow, carried, got 'longest'"):
        load_config(cfg)


def test_paths_command_ranks_a_resnets_paths_by_carried_relevance(tmp_path):
    """mnist-resnet: auto chooses carried, says why, and the paths carry more of the decision
    than the sum-of-flows paths do; on mnist-vgg (a chain) it keeps the paper's flow."""
    runs = {}
    for score in ("auto", "flow"):
        res = lrpath("paths", "mnist-resnet", DIGITS / "digit_3.png", "--out", tmp_path / score, "--k", "5",
                     "--path-score", score)
        assert res.returncode == 0, res.stderr
        assert f"best path by {'carried' if score == 'auto' else 'flow'} (flow " in res.stdout
        runs[score] = json.loads((tmp_path / score / "digit_3" / "paths.json").read_text())
    auto, flow = runs["auto"], runs["flow"]
    assert auto["path_score"] == "carried" and "skip connections" in auto["path_score_reason"]
    assert flow["path_score"] == "flow" and flow["path_score_reason"] == "chosen by name"
    carried_auto = [p["carried_share"] for p in auto["paths"]]
    assert carried_auto == sorted(carried_auto, reverse=True) and all(0 < c < 1 for c in carried_auto)
    assert sum(carried_auto) > 10 * sum(p["carried_share"] for p in flow["paths"])
    weights = [p["weight"] for p in flow["paths"]]
    assert weights == sorted(weights, reverse=True)
    res = lrpath("paths", "mnist-vgg", DIGITS / "digit_3.png", "--out", tmp_path / "vgg", "--k", "3")
    assert res.returncode == 0, res.stderr
    vgg = json.loads((tmp_path / "vgg" / "digit_3" / "paths.json").read_text())
    assert vgg["path_score"] == "flow" and math.isclose(vgg["longest"]["weight"], vgg["paths"][0]["weight"])


def test_a_target_without_relevance_is_ranked_by_flows():
    g = layered_graph(3)
    g.nodes[SINK]["relevance"] = 0.0
    ranked, choice = best_paths(g, SOURCE, SINK, 3, "carried")
    assert choice.score == "flow" and "the target holds no relevance" in choice.reason
    assert [(p.weight, p.nodes) for p in ranked] == k_best_paths(g, SOURCE, SINK, 3)


@pytest.mark.parametrize("model,skip", [("mnist-resnet", ("stem.0", "layer1")), ("mnist-vgg", None)])
def test_the_layer_structure_decides_for_every_input(model, skip):
    """Whether paths differ in length is the model's, not the kept neurons' (a skip edge exists
    in a pruned graph only when one channel is kept at both ends)."""
    from lrpath_onnx import Analyzer
    from lrpath_onnx.paths.neurons import graph_layers, layer_dag, links

    an = Analyzer(model)
    layers = graph_layers(an)
    names = {layer.name for layer in layers}
    dag = layer_dag(layers, {layer.name: links(an, layer, names) for layer in layers})
    assert uneven_join(dag, SOURCE) == skip


def test_a_neuron_whose_incoming_flows_cancel_gives_no_edge_a_share_above_one():
    """m holds 0.001 of the target: +1.0 from a1 and −0.999 from a2 cancel there. Split by R_m
    the edge a1 → m would pass on 1000 times m's relevance, and the path through m (carrying
    0.001 of the decision) would rank first."""
    g = nx.DiGraph()
    flows = [(SOURCE, "a1", 1.5), (SOURCE, "a2", -0.5), ("a1", "m", 1.0), ("a2", "m", -0.999),
             ("a1", "n", 0.5), ("a2", "n", 0.499), ("m", SINK, 0.001), ("n", SINK, 0.999)]
    for u, v, w in flows:
        g.add_edge(u, v, weight=w)
    for v, r in (("a1", 1.5), ("a2", -0.5), ("m", 0.001), ("n", 0.999), (SINK, 1.0), (SOURCE, 1.0)):
        g.nodes[v]["relevance"] = r
    ranked, _ = best_paths(g, SOURCE, SINK, 4, "carried")
    assert ranked[0].nodes == [SOURCE, "a1", "n", SINK]
    assert ranked[0].carried == pytest.approx(0.5)
    via_m = next(p for p in ranked if "m" in p.nodes)
    assert via_m.carried == pytest.approx(0.001 * 1.0)  # m's 0.001, all of it along a1 (a2 goes against it)
    assert all(0 < p.carried <= 1.0 for p in ranked)
