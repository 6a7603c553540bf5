"""The neuron graph's files and pictures stay usable on graphs of millions of flows:
the heaviest flows and the K paths' are kept, and the files say how many there were."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import networkx as nx
import numpy as np
import pytest

from lrpath_onnx.paths.graph_files import heaviest_flows, node_id, write_graph_json, write_graphml
from lrpath_onnx.viz.graph_draw import draw_svg, node_positions
from tests.test_cli import lrpath
from tests.test_graph_draw import SVG, _best_paths, _graph
from tests.test_paths import DIGITS


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("limit", [1, 7, 40])
def test_heaviest_flows_keeps_every_node_the_heaviest_and_the_paths(seed, limit):
    g = _graph(seed, layers=4, per_layer=5)
    paths = _best_paths(g, 2)
    kept = heaviest_flows(g, limit, paths)
    assert list(kept.nodes(data=True)) == list(g.nodes(data=True))
    ranked = sorted(g.edges(data="weight"), key=lambda e: -abs(e[2]))
    heavy = {(u, v) for u, v, _ in ranked[:limit]}
    on_path = {(a, b) for p in paths for a, b in zip(p[:-1], p[1:])}
    assert set(kept.edges) == heavy | on_path
    for u, v, w in kept.edges(data="weight"):
        assert w == g.edges[u, v]["weight"]
    assert g.number_of_edges() == len(ranked)  # the graph itself is left whole


def test_heaviest_flows_returns_a_small_graph_whole():
    g = _graph(0)
    assert heaviest_flows(g, 0) is g and heaviest_flows(g, g.number_of_edges()) is g


def test_files_state_the_full_graphs_size(tmp_path):
    g = _graph(1)
    kept = heaviest_flows(g, 10, _best_paths(g, 1))
    write_graph_json(kept, tmp_path / "g.json", g.number_of_edges())
    doc = json.loads((tmp_path / "g.json").read_text())
    assert doc["schema"].startswith("lrpath.graph/")
    assert doc["edges_total"] == g.number_of_edges() > len(doc["edges"]) == kept.number_of_edges()
    assert {(e["source"], e["target"]): e["weight"] for e in doc["edges"]} == \
        {(node_id(u), node_id(v)): w for u, v, w in kept.edges(data="weight")}
    assert doc["nodes"] == [{"id": node_id(n), **d} for n, d in g.nodes(data=True)]
    write_graphml(kept, tmp_path / "g.graphml", g.number_of_edges())
    back = nx.read_graphml(tmp_path / "g.graphml")
    assert back.graph["edges_total"] == g.number_of_edges()
    assert {(u, v): w for u, v, w in back.edges(data="weight")} == \
        {(node_id(u), node_id(v)): w for u, v, w in kept.edges(data="weight")}
    assert dict(back.nodes(data=True)) == {node_id(n): d for n, d in g.nodes(data=True)}


def test_files_of_a_graph_without_edges_and_with_odd_values(tmp_path):
    """Names XML or JSON must escape, a non-finite flow (null in JSON), an attribute that
    is an int on one node and a float on another, a boolean."""
    g = nx.DiGraph(skip="")
    g.add_node("in <&> \"1\"", layer="a&b", column=0, neuron=-1, relevance=1, flag=True)
    g.add_node(("l'1", 3), layer="l'1", column=1, neuron=3, relevance=0.25, flag=False)
    write_graph_json(g, tmp_path / "empty.json")
    assert json.loads((tmp_path / "empty.json").read_text())["edges"] == []
    g.add_edge("in <&> \"1\"", ("l'1", 3), weight=float("nan"))
    write_graph_json(g, tmp_path / "g.json")
    doc = json.loads((tmp_path / "g.json").read_text())
    assert doc["edges"] == [{"source": "in <&> \"1\"", "target": "l'1:3", "weight": None}]
    write_graphml(g, tmp_path / "g.graphml")
    back = nx.read_graphml(tmp_path / "g.graphml")
    assert back.nodes["in <&> \"1\""] == {"layer": "a&b", "column": 0, "neuron": -1, "relevance": 1.0, "flag": True}
    assert back.nodes["l'1:3"]["relevance"] == 0.25 and back.nodes["l'1:3"]["flag"] is False
    assert np.isnan(back.edges["in <&> \"1\"", "l'1:3"]["weight"]) and back.graph["edges_total"] == 1


def test_drawing_keeps_the_heaviest_flows_and_says_so(tmp_path):
    g = _graph(2, layers=4, per_layer=6)
    paths = _best_paths(g, 2)
    segments = sum(len(p) - 1 for p in paths)
    draw_svg(g, paths, tmp_path / "all.svg")
    draw_svg(g, paths, tmp_path / "some.svg", max_edges=25)
    every, some = (ET.fromstring((tmp_path / f).read_bytes()) for f in ("all.svg", "some.svg"))
    centres = {(round(x, 1), round(y, 1)) for x, y in node_positions(g).values()}

    def flows(root) -> list:  # lines from a node's centre: flows and path segments, not guides or legend
        return [e for e in root.iter(SVG + "line") if (float(e.get("x1")), float(e.get("y1"))) in centres]

    assert len(flows(every)) == g.number_of_edges() + segments
    assert len(flows(some)) == 25 + segments
    notes = [t.text for t in some.iter(SVG + "text") if "flows drawn" in (t.text or "")]
    assert notes == [f"the 25 heaviest of {g.number_of_edges()} flows drawn"]
    assert not [t for t in every.iter(SVG + "text") if "flows drawn" in (t.text or "")]
    grey = [float(e.get("stroke-width")) for e in flows(some)][:25]
    heaviest = sorted(abs(w) for _, _, w in g.edges(data="weight"))[-25:]
    np.testing.assert_allclose(grey, [max(0.5, 6.0 * w / heaviest[-1]) for w in heaviest], atol=0.006)


def test_paths_command_limits_the_flows_it_writes(tmp_path):
    res = lrpath("paths", "mnist-vgg", DIGITS / "digit_3.png", "--out", tmp_path, "--k", "3", "--per-layer", "6",
                 "--max-flows", "20")
    assert res.returncode == 0, res.stderr
    info = json.loads((tmp_path / "digit_3" / "paths.json").read_text())
    graph = json.loads((tmp_path / "digit_3" / "graph.json").read_text())
    full = info["graph"]["edges"]
    assert graph["edges_total"] == full > info["graph"]["edges_written"] == len(graph["edges"]) >= 20
    assert info["graph"]["edges_drawn"] == full  # a graph this small is drawn whole
    listed = {(e["source"], e["target"]) for e in graph["edges"]}
    for p in info["paths"]:
        ids = ["input"] + [f"{n['layer']}:{n['neuron']}" for n in p["neurons"]] + ["target"]
        assert set(zip(ids[:-1], ids[1:])) <= listed
    weights = sorted((abs(e["weight"]) for e in graph["edges"]), reverse=True)
    assert len(weights) - 20 <= 3 * 7  # beyond the 20 heaviest only the paths' edges
    assert f"hold {len(graph['edges'])} of {full} flows" in res.stderr.replace(",", "")
    assert set(info["timings_s"]) >= {"explain", "graph_and_paths", "path_heatmaps", "write", "total"}
    assert info["timings_s"]["total"] >= info["timings_s"]["write"] > 0


def test_non_finite_flows_are_light_and_clashing_ids_are_refused(tmp_path):
    from lrpath_onnx.errors import OutputError

    g = nx.DiGraph()
    for n, w in (("a", float("inf")), ("b", float("nan")), ("c", 0.5), ("d", -2.0)):
        g.add_edge("in", n, weight=w)
    assert set(heaviest_flows(g, 2).edges) == {("in", "c"), ("in", "d")}
    g.add_edge(1, "1", weight=1.0)  # the int 1 and the string "1": both written as "1"
    for write in (write_graph_json, write_graphml):
        with pytest.raises(OutputError, match="would both be written as '1'"):
            write(g, tmp_path / "g.out")
        assert list(tmp_path.iterdir()) == []


def test_drawing_and_files_keep_the_same_flows_on_ties(tmp_path):
    g = nx.DiGraph()
    g.add_node("in", layer="input", column=0, neuron=-1, relevance=1.0)
    for j in range(6):
        g.add_node(("l", j), layer="l", column=1, neuron=j, relevance=1.0)
        g.add_edge("in", ("l", j), weight=1.0 if j % 2 else -1.0)  # six flows of equal |weight|
    kept = set(heaviest_flows(g, 3).edges)
    draw_svg(g, [], tmp_path / "g.svg", max_edges=3)
    root = ET.fromstring((tmp_path / "g.svg").read_bytes())
    pos = node_positions(g)
    ends = {(round(x, 1), round(y, 1)): n for n, (x, y) in pos.items()}
    drawn = {(ends[float(e.get("x1")), float(e.get("y1"))], ends[float(e.get("x2")), float(e.get("y2"))])
             for e in root.iter(SVG + "line") if (float(e.get("x1")), float(e.get("y1"))) in ends
             and (float(e.get("x2")), float(e.get("y2"))) in ends}
    assert drawn == kept == {("in", ("l", 0)), ("in", ("l", 1)), ("in", ("l", 2))}
