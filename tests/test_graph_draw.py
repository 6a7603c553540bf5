"""Pictures of the neuron graph (PNG and SVG) and of score curves."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import networkx as nx
import numpy as np
import pytest
from PIL import Image

from lrpath_onnx.errors import InputError, OutputError
from lrpath_onnx.viz import graph_draw
from lrpath_onnx.viz.curve import SERIES_COLOURS, draw_curve_png
from lrpath_onnx.viz.graph_draw import draw_png, draw_svg, layout, node_positions, png_text

SVG = "{http://www.w3.org/2000/svg}"


def _graph(seed: int, layers: int = 5, per_layer: int = 6, names=None) -> nx.DiGraph:
    """Input → ``layers`` × ``per_layer`` neurons → target, random positive/negative flows."""
    rng = np.random.default_rng(seed)
    g = nx.DiGraph()
    g.add_node("in", layer="input", column=0, neuron=-1, relevance=1.0)
    prev = ["in"]
    for li in range(1, layers + 1):
        name = names[li - 1] if names else f"features.{3 * li}"
        cur = []
        for c in rng.choice(64, per_layer, replace=False):
            node = (li, int(c))
            g.add_node(node, layer=name, column=li, neuron=int(c), relevance=float(rng.gamma(1.0)))
            cur.append(node)
        for u in prev:
            for v in cur:
                sign = -1.0 if rng.random() < 0.15 else 1.0
                g.add_edge(u, v, weight=sign * float(rng.gamma(0.8)))
        prev = cur
    g.add_node("out", layer="logits", column=layers + 1, neuron=-1, relevance=1.0, label="class 7")
    for u in prev:
        g.add_edge(u, "out", weight=float(rng.gamma(1.0)))
    return g


def _best_paths(g: nx.DiGraph, k: int = 3) -> list[list]:
    """Brute force: every input-to-target path scored by its total flow, best first."""
    scored = [(sum(g.edges[a, b]["weight"] for a, b in zip(p[:-1], p[1:])), p)
              for p in nx.all_simple_paths(g, "in", "out")]
    scored.sort(key=lambda t: -t[0])
    return [p for _, p in scored[:k]]


def _rgb(path) -> np.ndarray:
    with Image.open(path) as img:
        img.load()
        return np.asarray(img.convert("RGB")).astype(int)


def _colours(a: np.ndarray) -> int:
    """How many distinct colours a picture holds."""
    return len(np.unique((a[..., 0] << 16) | (a[..., 1] << 8) | a[..., 2]))


def _red(a: np.ndarray) -> np.ndarray:
    return (a[..., 0] > 150) & (a[..., 1] < 70) & (a[..., 2] < 70)


def _grey(a: np.ndarray) -> np.ndarray:
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    return (np.abs(r - g) < 6) & (np.abs(g - b) < 6) & (r > 80) & (r < 236)


# ------------------------------------------------------------------------ layout
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_layout_columns_and_relevance_order(seed):
    g = _graph(seed)
    pos = layout(g)
    assert set(pos) == set(g.nodes)
    assert all(0.0 <= x <= 1.0 and 0.0 <= y <= 1.0 for x, y in pos.values())
    by_col: dict[int, list] = {}
    for n, a in g.nodes(data=True):
        by_col.setdefault(a["column"], []).append(n)
    xs = [pos[nodes[0]][0] for _, nodes in sorted(by_col.items())]
    assert xs[0] == 0.0 and xs[-1] == 1.0
    np.testing.assert_allclose(np.diff(xs), 1.0 / (len(xs) - 1))  # evenly spaced
    for nodes in by_col.values():
        assert len({pos[n][0] for n in nodes}) == 1
        ordered = sorted(nodes, key=lambda n: pos[n][1])  # top (small y) to bottom
        rel = [g.nodes[n]["relevance"] for n in ordered]
        assert rel == sorted(rel, reverse=True)  # most relevant highest
        assert np.mean([pos[n][1] for n in nodes]) == pytest.approx(0.5)  # centred
    assert pos["in"][1] == pytest.approx(0.5) and pos["out"][1] == pytest.approx(0.5)


def test_layout_of_empty_graph_is_empty():
    assert layout(nx.DiGraph()) == {}


# ---------------------------------------------------------------------- PNG
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_png_shows_graph_and_red_paths(tmp_path, seed):
    g = _graph(seed)
    paths = _best_paths(g)
    out = tmp_path / "graph.png"
    draw_png(g, paths, out, title=f"seed {seed}: 3 best paths")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph.png"]  # no temporary left
    a = _rgb(out)
    assert a.shape == (900, 1600, 3)
    assert _colours(a) > 200  # not blank: lines, text, antialiasing
    assert (a == 255).all(axis=2).mean() > 0.5  # white background
    assert _red(a).sum() > 1000
    assert _grey(a).sum() > 1000
    pos = node_positions(g, (1600, 900))
    for node in paths[0]:
        x, y = (round(v) for v in pos[node])
        assert a[y, x].sum() < 3 * 245, f"white at path node {node}"
        ring = a[y - 21:y + 22, x - 21:x + 22]  # the red outline lies within the largest radius
        assert _red(ring).any(), f"no red at path node {node}"
    off_path = [n for n in g if not any(n in p for p in paths)]
    x, y = (round(v) for v in pos[off_path[0]])
    assert a[y, x].sum() < 3 * 245  # every node is drawn, not only path nodes


def test_png_other_size_and_no_paths(tmp_path):
    g = _graph(5, layers=3, per_layer=4)
    draw_png(g, [], tmp_path / "small.png", size=(800, 450))
    a = _rgb(tmp_path / "small.png")
    assert a.shape == (450, 800, 3)
    assert not _red(a).any()  # no paths, no red
    assert _grey(a).sum() > 200


def test_png_with_vgg_sized_graph_and_long_names(tmp_path):
    names = [f"/features/features.{i}/Conv" for i in range(13)] + [
        f"/classifier/classifier.{i}/Gemm" for i in (0, 3, 6)]
    g = _graph(3, layers=16, per_layer=10, names=names)
    per_layer = {li: sorted(n for n in g if isinstance(n, tuple) and n[0] == li) for li in range(1, 17)}
    paths = [["in"] + [per_layer[li][(li * j) % 10] for li in range(1, 17)] + ["out"] for j in range(3)]
    draw_png(g, paths, tmp_path / "vgg.png", title="x" * 400)  # a long title is shortened
    draw_svg(g, paths, tmp_path / "vgg.svg", title="x" * 400)
    assert _rgb(tmp_path / "vgg.png").shape == (900, 1600, 3)
    root = ET.fromstring((tmp_path / "vgg.svg").read_bytes())
    # the layer names under the columns: inside the picture and not overlapping on their row
    bottom = max(float(c.get("cy")) for c in root.iter(SVG + "circle"))
    rows: dict[float, list] = {}
    for t in root.iter(SVG + "text"):
        if float(t.get("y")) > bottom + 15:
            rows.setdefault(float(t.get("y")), []).append(
                (float(t.get("x")), graph_draw._text_w(t.text, float(t.get("font-size")))))
    assert sum(len(r) for r in rows.values()) == 17  # 16 layers + the target column
    for row in rows.values():
        row.sort()
        for (xa, wa), (xb, wb) in zip(row[:-1], row[1:]):
            assert xa + wa / 2 < xb - wb / 2, "layer names overlap"
        assert row[0][0] - row[0][1] / 2 >= 0 and row[-1][0] + row[-1][1] / 2 <= 1600


# ---------------------------------------------------------------------- SVG
@pytest.mark.parametrize("seed", [0, 1])
def test_svg_is_xml_with_one_circle_per_node(tmp_path, seed):
    g = _graph(seed)
    paths = _best_paths(g)
    out = tmp_path / "graph.svg"
    draw_svg(g, paths, out, title="paths <&> \"quoted\"")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph.svg"]
    root = ET.fromstring(out.read_bytes())
    assert root.tag == SVG + "svg" and root.get("width") == "1600" and root.get("height") == "900"
    circles = list(root.iter(SVG + "circle"))
    assert len(circles) == g.number_of_nodes()
    strokes = {e.get("stroke") for e in root.iter() if e.get("stroke")}
    reds = [c for c in strokes if re.fullmatch(r"#[0-9a-f]{6}", c)
            and int(c[1:3], 16) > 150 and int(c[3:5], 16) < 70 and int(c[5:7], 16) < 70]
    assert reds, f"no red stroke among {strokes}"
    red_circles = [c for c in circles if c.get("stroke") in reds]
    assert len(red_circles) == len({n for p in paths for n in p})  # path nodes outlined red
    texts = [t.text for t in root.iter(SVG + "text")]
    assert "input" in texts and "class 7" in texts and "paths <&> \"quoted\"" in texts
    for node in paths[0][1:-1]:
        assert str(g.nodes[node]["neuron"]) in texts  # channel numbers of path nodes
    assert not any(e.get("href") or e.get("{http://www.w3.org/1999/xlink}href") for e in root.iter())


def test_svg_bows_every_edge_that_skips_columns(tmp_path):
    """A skip connection (a flow jumping a column) is a curve, on the paths and off them;
    neighbouring columns keep straight lines. The curve bends away from the columns between."""
    g = _graph(3, layers=4, per_layer=4)
    firsts = [n for n in g if isinstance(n, tuple) and n[0] == 1]
    thirds = [n for n in g if isinstance(n, tuple) and n[0] == 3]
    for u, v in zip(firsts, thirds):
        g.add_edge(u, v, weight=0.5)
    paths = _best_paths(g, 6)
    out = tmp_path / "graph.svg"
    draw_svg(g, paths, out)
    root = ET.fromstring(out.read_bytes())
    path_skips = sum(1 for p in paths for a, b in zip(p[:-1], p[1:]) if g.nodes[b]["column"] - g.nodes[a]["column"] > 1)
    curves = list(root.iter(SVG + "polyline"))
    assert len(curves) == len(firsts) + path_skips
    pos = node_positions(g, (1600, 900))
    ends = {(round(pos[u][0], 1), round(pos[v][0], 1)) for u, v in zip(firsts, thirds)}
    for c in curves:
        pts = [tuple(map(float, xy.split(","))) for xy in c.get("points").split()]
        assert (pts[0][0], pts[-1][0]) in ends
        ys = [y for _, y in pts]
        straight = np.linspace(ys[0], ys[-1], len(ys))
        assert np.abs(np.asarray(ys) - straight).max() > 20  # bowed, not a straight line
    lines = len(list(root.iter(SVG + "line")))
    neighbours = sum(1 for u, v in g.edges if g.nodes[v]["column"] - g.nodes[u]["column"] == 1)
    assert lines >= neighbours


# ------------------------------------------------------------------- bad input
def test_bad_inputs_raise_and_write_nothing(tmp_path):
    g = _graph(0, layers=2, per_layer=3)
    with pytest.raises(InputError, match="not in the graph"):
        draw_png(g, [["in", "nowhere", "out"]], tmp_path / "a.png")
    h = g.copy()
    del h.nodes["in"]["column"]
    with pytest.raises(InputError, match="column"):
        draw_svg(h, [], tmp_path / "a.svg")
    with pytest.raises(InputError, match="size"):
        draw_png(g, [], tmp_path / "a.png", size=(10, 10))
    with pytest.raises(OutputError):
        draw_png(g, [], tmp_path / "missing" / "a.png")
    assert list(tmp_path.iterdir()) == []


def test_png_text_replaces_missing_glyphs():
    assert png_text("VGG16 \u2014 K \u221d 3") == "VGG16 - K ~ 3"
    assert png_text("features.28 \u2026 ok") == "features.28 \u2026 ok"  # the ellipsis exists


# ----------------------------------------------------------------------- curve
def _near(a: np.ndarray, colour, tol: int = 12) -> np.ndarray:
    return (np.abs(a - np.array(colour)) <= tol).all(axis=2)


def test_curve_png_has_each_series(tmp_path):
    ks = list(range(1, 21))
    series = {"MSE": [0.02 * math.exp(-k / 4) for k in ks],
              "SMAPE": [80 * math.exp(-k / 6) + 5 for k in ks],
              "other": [0.01] * 20}
    out = tmp_path / "curve.png"
    draw_curve_png(out, ks, series, "errors", "K", "MSE", mark_x=7, secondary={"SMAPE"},
                   ylabel2="SMAPE (%)", mark_label="K = 7")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.png"]
    a = _rgb(out)
    assert a.shape == (600, 1000, 3)
    assert _colours(a) > 100
    for colour in SERIES_COLOURS[:3]:
        assert _near(a, colour).sum() > 50, f"no pixels of series colour {colour}"
    assert not _near(a, SERIES_COLOURS[3]).sum() > 50  # only three series


def test_curve_mark_line_is_drawn(tmp_path):
    ks, ys = [1, 2, 3, 4], {"a": [4.0, 3.0, 2.0, 1.0]}
    draw_curve_png(tmp_path / "with.png", ks, ys, "t", "K", "y", mark_x=2)
    draw_curve_png(tmp_path / "without.png", ks, ys, "t", "K", "y")
    dark = [_near(_rgb(tmp_path / n), (70, 70, 70), 20).sum() for n in ("with.png", "without.png")]
    assert dark[0] > dark[1] + 100


@pytest.mark.parametrize("log_y", [False, True])
def test_curve_skips_non_finite_values(tmp_path, log_y):
    ks = [1, 2, 3, 4, 5, 6]
    series = {"gaps": [1.0, math.nan, 0.5, math.inf, 0.2, -math.inf],
              "none": [math.nan] * 6, "negative": [-1.0, 0.0, 1.0, 2.0, 3.0, 4.0]}
    out = tmp_path / "c.png"
    draw_curve_png(out, ks, series, "t", "K", "y", mark_x=math.nan, log_y=log_y, size=(500, 300))
    a = _rgb(out)
    assert a.shape == (300, 500, 3)
    assert _near(a, SERIES_COLOURS[0]).sum() > 10
    draw_curve_png(out, [], {}, "empty", "K", "y")  # nothing to draw is still a picture
    assert _rgb(out).shape == (600, 1000, 3)


def test_curve_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="values"):
        draw_curve_png(tmp_path / "c.png", [1, 2], {"a": [1.0]}, "t", "x", "y")
    with pytest.raises(InputError, match="secondary"):
        draw_curve_png(tmp_path / "c.png", [1, 2], {"a": [1.0, 2.0]}, "t", "x", "y", secondary={"b"})
    assert list(tmp_path.iterdir()) == []
