"""Draw a layered neuron graph with the K best paths in red (the paper's Figure 3).

Layers are columns (input left, target right), neurons are circles whose area grows with
|relevance|, edges are the relevance flows between neurons. One list of drawing
primitives is built once and rendered twice, to PNG (Pillow, drawn at 2x and reduced
with LANCZOS for smooth edges) and to SVG text, so both files show the same picture.

Encoding: positive flows are grey, negative flows light blue-grey (both solid), width
proportional to |weight| (0.5 to 6 px) and darker when heavier; the K paths are drawn on
top in red, the best path darkest and thickest; nodes on any path get a red outline and
their channel number beside them. A graph of more than ``max_edges`` flows (GetOptimizer's
on VGG16 has millions) draws its heaviest ones and says so in the legend: the rest would
be sub-pixel lines that take minutes and hundreds of megabytes of SVG to draw. Texts
in the SVG are given the width they have in the PNG's font (``textLength``), so a wider
fallback font cannot make the title run into the legend.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
from collections.abc import Hashable, Sequence

import networkx as nx
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import InputError
from ..io.outputs import write_png, write_text

Colour = tuple[int, int, int]

WHITE: Colour = (255, 255, 255)
TEXT: Colour = (30, 30, 30)
SUBTLE: Colour = (95, 95, 95)
GUIDE: Colour = (243, 243, 243)
EDGE_LIGHT, EDGE_DARK = (222, 222, 222), (150, 150, 150)
NEG_LIGHT, NEG_DARK = (208, 220, 234), (125, 152, 186)
NODE_FILL, NODE_LINE, END_FILL = (230, 230, 230), (110, 110, 110), (205, 205, 205)
PATH_BEST, PATH_WORST, LABEL_RED = (200, 0, 0), (240, 125, 125), (150, 0, 0)
FONT_FAMILY = "Aileron, DejaVu Sans, Helvetica, Arial, sans-serif"
_SS = 2  # supersampling factor of the PNG
MAX_EDGES = 20_000  # flows drawn at most (the K paths are drawn on top whatever their weight)


def layout(g: nx.DiGraph) -> dict[Hashable, tuple[float, float]]:
    """Node positions in [0, 1]² (x right, y *down*, as on screen).

    Columns are evenly spaced from left (smallest ``column``) to right. Within a column
    nodes are sorted by relevance, highest first (smallest y), spaced by the step of the
    fullest column and centred on y = 0.5, so rows line up across columns.
    """
    cols = _columns(g)
    if not cols:
        return {}
    cmin, cmax = min(cols), max(cols)
    nmax = max(len(v) for v in cols.values())
    step = 1.0 / (nmax - 1) if nmax > 1 else 0.0
    pos = {}
    for c, nodes in cols.items():
        x = 0.5 if cmax == cmin else (c - cmin) / (cmax - cmin)
        for i, node in enumerate(nodes):
            pos[node] = (x, 0.5 + (i - (len(nodes) - 1) / 2) * step)
    return pos


def node_positions(g: nx.DiGraph, size: tuple[int, int] = (1600, 900)) -> dict[Hashable, tuple[float, float]]:
    """Pixel centres of the nodes in a picture of ``size`` (for tests and image maps)."""
    _, _, (x0, y0, x1, y1) = _frame(_check_size(size))
    return {n: (x0 + x * (x1 - x0), y0 + y * (y1 - y0)) for n, (x, y) in layout(g).items()}


def draw_graph(g: nx.DiGraph, paths: Sequence[Sequence[Hashable]], png: str | os.PathLike[str],
               svg: str | os.PathLike[str], size: tuple[int, int] = (1600, 900), title: str = "",
               max_edges: int = MAX_EDGES) -> int:
    """Write the graph as PNG and SVG from one scene (built once: on a graph of millions of
    flows, choosing the heaviest is most of the work); returns how many flows were drawn."""
    size = _check_size(size)
    ops, drawn = _scene(g, paths, size, title, max_edges)
    _render_png(ops, size, png)
    _render_svg(ops, size, svg)
    return drawn


def draw_png(g: nx.DiGraph, paths: Sequence[Sequence[Hashable]], path: str | os.PathLike[str],
             size: tuple[int, int] = (1600, 900), title: str = "", max_edges: int = MAX_EDGES) -> None:
    """Write the graph as PNG; ``paths`` are the K best paths, best (the longest) first;
    at most ``max_edges`` flows are drawn, the heaviest (0: all)."""
    size = _check_size(size)
    _render_png(_scene(g, paths, size, title, max_edges)[0], size, path)


def draw_svg(g: nx.DiGraph, paths: Sequence[Sequence[Hashable]], path: str | os.PathLike[str],
             size: tuple[int, int] = (1600, 900), title: str = "", max_edges: int = MAX_EDGES) -> None:
    """Write the same picture as a self-contained SVG (hover a node for its relevance)."""
    size = _check_size(size)
    _render_svg(_scene(g, paths, size, title, max_edges)[0], size, path)


def _render_png(ops: list[tuple], size: tuple[int, int], path: str | os.PathLike[str]) -> None:
    w, h = size
    img = Image.new("RGB", (w * _SS, h * _SS), WHITE)
    d = ImageDraw.Draw(img)
    for op in ops:
        if op[0] == "line":
            _, x1, y1, x2, y2, col, wd = op
            d.line([(x1 * _SS, y1 * _SS), (x2 * _SS, y2 * _SS)], fill=col, width=max(1, round(wd * _SS)))
        elif op[0] == "curve":
            _, points, col, wd = op
            d.line([(x * _SS, y * _SS) for x, y in points], fill=col, width=max(1, round(wd * _SS)), joint="curve")
        elif op[0] == "circle":
            _, cx, cy, r, fill, line, wd, _tip = op
            b = [(cx - r) * _SS, (cy - r) * _SS, (cx + r) * _SS, (cy + r) * _SS]
            d.ellipse(b, fill=fill, outline=line, width=max(1, round(wd * _SS)))
        else:
            _, x, y, s, fs, col, anchor, halo = op
            d.text((x * _SS, y * _SS), png_text(s), fill=col, font=_font(fs * _SS), anchor=anchor + "m",
                   stroke_width=round(2 * _SS) if halo else 0, stroke_fill=WHITE)
    img = img.resize(size, Image.LANCZOS)
    write_png(path, img)


def _render_svg(ops: list[tuple], size: tuple[int, int], path: str | os.PathLike[str]) -> None:
    w, h = size
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           f'viewBox="0 0 {w} {h}" font-family="{FONT_FAMILY}">',
           '<rect x="0" y="0" width="100%" height="100%" fill="#ffffff"/>']
    anchors = {"l": "start", "m": "middle", "r": "end"}
    for op in ops:
        if op[0] == "line":
            _, x1, y1, x2, y2, col, wd = op
            out.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
                       f'stroke="{_hex(col)}" stroke-width="{wd:.2f}" stroke-linecap="round"/>')
        elif op[0] == "curve":
            _, points, col, wd = op
            xy = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            out.append(f'<polyline points="{xy}" fill="none" stroke="{_hex(col)}" stroke-width="{wd:.2f}" '
                       'stroke-linecap="round" stroke-linejoin="round"/>')
        elif op[0] == "circle":
            _, cx, cy, r, fill, line, wd, tip = op
            out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{r:.2f}" fill="{_hex(fill)}" '
                       f'stroke="{_hex(line)}" stroke-width="{wd:.2f}"><title>{_esc(tip)}</title></circle>')
        else:
            _, x, y, s, fs, col, anchor, halo = op
            extra = (' stroke="#ffffff" stroke-width="3" stroke-linejoin="round" paint-order="stroke"'
                     if halo else "")
            out.append(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{fs:.1f}" fill="{_hex(col)}" '
                       f'text-anchor="{anchors[anchor]}" dominant-baseline="central" '
                       f'textLength="{_text_w(s, fs):.1f}" lengthAdjust="spacingAndGlyphs"{extra}>{_esc(s)}</text>')
    out.append("</svg>\n")
    write_text(path, "\n".join(out))


# ------------------------------------------------------------------ scene building
def _scene(g: nx.DiGraph, paths: Sequence[Sequence[Hashable]], size: tuple[int, int], title: str,
           max_edges: int = MAX_EDGES) -> tuple[list[tuple], int]:
    """The picture as primitives in pixel units (lines, circles, texts, back to front), and
    how many flows it draws."""
    w = size[0]
    s, ts, (x0, y0, x1, y1) = _frame(size)
    pos = node_positions(g, size)
    for k, p in enumerate(paths):
        missing = [n for n in p if n not in pos]
        if missing:
            raise InputError(f"path {k} holds node {missing[0]!r}, which is not in the graph")
    cols = _columns(g)
    ncols = max(1, len(cols))
    col_dx = (x1 - x0) / max(1, max(cols) - min(cols)) if cols else x1 - x0
    nmax = max((len(v) for v in cols.values()), default=1)
    row_dy = (y1 - y0) / (nmax - 1) if nmax > 1 else (y1 - y0)
    rmax = max(3.0, min(18 * s, 0.42 * col_dx, 0.45 * row_dy))
    rmin = max(2.0, 0.22 * rmax)
    ops: list[tuple] = []

    # column guides and layer names (staggered on two rows when they would touch)
    col_x = {c: pos[nodes[0]][0] for c, nodes in cols.items()}
    names = {c: str(g.nodes[nodes[0]]["layer"]) for c, nodes in cols.items()}
    fs_lab = 13.5 * ts
    widest = max((_text_w(t, fs_lab) for t in names.values()), default=0.0)
    stagger = ncols > 1 and widest > 0.92 * col_dx
    room = (1.9 if stagger else 0.92) * col_dx if ncols > 1 else w - 20
    for i, (c, x) in enumerate(sorted(col_x.items())):
        ops.append(("line", x, y0 - 8 * s, x, y1 + 8 * s, GUIDE, 1.0 * s))
        if len(cols[c]) == 1 and names[c] == _end_label(g.nodes[cols[c][0]], min(cols)):
            continue  # an "input" column under the node already labelled "input"
        ly = y1 + (24 + (17 if stagger and i % 2 else 0)) * ts
        ops.append(("text", x, ly, _fit(names[c], fs_lab, room), fs_lab, SUBTLE, "m", False))

    def segment(a, b, col, wd) -> tuple:
        """A straight line between neighbouring columns; a skip connection is bowed, so it
        does not seem to run through the columns between."""
        span = abs(g.nodes[b]["column"] - g.nodes[a]["column"])
        if span <= 1:
            return ("line", *pos[a], *pos[b], col, wd)
        lift = min(0.45 * (y1 - y0), 0.35 * col_dx * (span - 1))
        return ("curve", _bow(pos[a], pos[b], lift, (y0 + y1) / 2), col, wd)

    # relevance flows: light to heavy, so heavy edges stay visible
    ends = list(g.edges(data="weight", default=0.0))
    weights = finite_weights([w for *_, w in ends])
    n_flows = len(ends)
    keep = heaviest(weights, max_edges)
    order = keep[np.argsort(np.abs(weights[keep]), kind="stable")]  # light to heavy, ties in the graph's order
    edges = [(ends[i][0], ends[i][1], float(weights[i])) for i in order.tolist()]
    wmax = abs(edges[-1][2]) if edges else 0.0
    wmax = wmax or 1.0
    for u, v, wt in edges:
        t = abs(wt) / wmax
        col = _mix(NEG_LIGHT, NEG_DARK, math.sqrt(t)) if wt < 0 else _mix(EDGE_LIGHT, EDGE_DARK, math.sqrt(t))
        ops.append(segment(u, v, col, max(0.5, 6.0 * t) * s))

    # the K paths, worst first so the best one lies on top
    k = len(paths)
    for i in reversed(range(k)):
        t = i / (k - 1) if k > 1 else 0.0
        col, wd = _mix(PATH_BEST, PATH_WORST, t), (5.0 - 2.5 * t) * s
        for a, b in zip(paths[i][:-1], paths[i][1:]):
            ops.append(segment(a, b, col, wd))

    # nodes, then labels of the path nodes
    on_path = {n for p in paths for n in p}
    rel = {n: abs(_finite(g.nodes[n]["relevance"])) for n in pos}
    neurons = [n for n in pos if int(g.nodes[n]["neuron"]) >= 0]
    relmax = max((rel[n] for n in neurons), default=0.0) or 1.0
    cmin = min(cols) if cols else 0
    labels = []
    for n, (x, y) in pos.items():
        a = g.nodes[n]
        special = int(a["neuron"]) < 0
        r = rmax if special else min(rmax, max(rmin, rmax * math.sqrt(rel[n] / relmax)))
        line, lw = (PATH_BEST, 2.5 * s) if n in on_path else (NODE_LINE, 1.2 * s)
        who = _end_label(a, cmin) if special else f"{a['layer']} #{int(a['neuron'])}"
        tip = f"{who}: relevance {_finite(a['relevance']):.4g}"
        ops.append(("circle", x, y, r, END_FILL if special else NODE_FILL, line, lw, tip))
        if special:
            text = _end_label(a, cmin)
            fs = 14 * ts
            lx = min(max(x, 6 + _text_w(text, fs) / 2), w - 6 - _text_w(text, fs) / 2)
            labels.append(("text", lx, y - r - 12 * ts, text, fs, TEXT, "m", True))
        elif n in on_path:
            labels.append(("text", x + r + 3 * ts, y - 0.7 * r - 4 * ts, str(int(a["neuron"])), 11.5 * ts,
                           LABEL_RED, "l", True))
    ops.extend(labels)

    # title (left) and legend (right) on the top line
    fs_leg, ty = 13 * ts, 26 * ts
    items = [(EDGE_DARK, "relevance flow")]
    if any(e[2] < 0 for e in edges):
        items.append((NEG_DARK, "negative flow"))
    if k:
        items.append((PATH_BEST, f"{k} best path{'s' if k > 1 else ''} (darkest = best)"))
    sample, gap = 26 * ts, 18 * ts
    note = "node area \u221d |relevance|"
    if len(edges) < n_flows:  # on a second line, right-aligned under the legend
        ops.append(("text", w - 18 * ts, ty + 19 * ts, f"the {len(edges):,} heaviest of {n_flows:,} flows drawn",
                    fs_leg, SUBTLE, "r", False))
    total = sum(sample + 6 * ts + _text_w(t, fs_leg) + gap for _, t in items) + _text_w(note, fs_leg)
    lx = w - 18 * ts - total
    for col, text in items:
        ops.append(("line", lx, ty, lx + sample, ty, col, 3.5 * s))
        ops.append(("text", lx + sample + 6 * ts, ty, text, fs_leg, TEXT, "l", False))
        lx += sample + 6 * ts + _text_w(text, fs_leg) + gap
    ops.append(("text", lx, ty, note, fs_leg, SUBTLE, "l", False))
    if title:
        fs_t = 19 * ts
        room = w - 18 * ts - total - 40 * ts - 16 * ts
        ops.append(("text", 16 * ts, ty, _fit(title, fs_t, room, tail=False), fs_t, TEXT, "l", False))
    return ops, len(edges)


def _bow(p: tuple[float, float], q: tuple[float, float], lift: float, mid_y: float,
         steps: int = 24) -> list[tuple[float, float]]:
    """Points of a quadratic curve from p to q bowed by ``lift`` pixels towards the picture's
    middle row ``mid_y`` (paths run along the top rows: the bow stays inside the frame)."""
    sign = 1.0 if (p[1] + q[1]) / 2 <= mid_y else -1.0
    cx, cy = (p[0] + q[0]) / 2, (p[1] + q[1]) / 2 + sign * 2 * lift
    out = []
    for i in range(steps + 1):
        t = i / steps
        out.append(((1 - t) ** 2 * p[0] + 2 * t * (1 - t) * cx + t * t * q[0],
                    (1 - t) ** 2 * p[1] + 2 * t * (1 - t) * cy + t * t * q[1]))
    return out


def _end_label(attrs: dict, cmin: int) -> str:
    """The text beside the input node ("input") or the target node (its ``label`` or "target")."""
    if int(attrs["neuron"]) >= 0:
        return ""
    return "input" if attrs["column"] == cmin else str(attrs.get("label", "target"))


def _columns(g: nx.DiGraph) -> dict[int, list[Hashable]]:
    """Nodes per column, most relevant first (ties by channel, then by name)."""
    cols: dict[int, list[Hashable]] = {}
    for n, a in g.nodes(data=True):
        for key in ("layer", "column", "neuron", "relevance"):
            if key not in a:
                raise InputError(f"graph node {n!r} has no '{key}' attribute")
        c, neuron = a["column"], a["neuron"]
        if isinstance(c, bool) or not isinstance(c, numbers.Integral):
            raise InputError(f"graph node {n!r}: column must be an int, got {c!r}")
        if isinstance(neuron, bool) or not isinstance(neuron, numbers.Real) \
                or not math.isfinite(neuron) or neuron != int(neuron):
            raise InputError(f"graph node {n!r}: neuron must be an int, got {neuron!r}")
        cols.setdefault(int(c), []).append(n)
    for nodes in cols.values():
        nodes.sort(key=lambda n: (-_finite(g.nodes[n]["relevance"]), int(g.nodes[n]["neuron"]), str(n)))
    return dict(sorted(cols.items()))


def _frame(size: tuple[int, int]) -> tuple[float, float, tuple[float, float, float, float]]:
    """Scale of strokes, scale of text (kept legible in small pictures), and the box
    (x0, y0, x1, y1) of the node centres."""
    w, h = size
    s = max(0.7, min(w / 1600, h / 900, 2.0))
    ts = max(0.8, s)
    return s, ts, (70 * ts, 74 * ts, w - 70 * ts, h - 70 * ts)


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in size)
    except (TypeError, ValueError):
        raise InputError(f"size must be (width, height), got {size!r}") from None
    if w < 200 or h < 150:
        raise InputError(f"size must be at least 200 x 150 pixels, got {w} x {h}")
    return w, h


@functools.lru_cache(maxsize=32)
def _font(size: float) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(1, round(size)))


def _text_w(text: str, size: float) -> float:
    """Width in pixels of ``text`` in Pillow's default font (the SVG uses a similar sans)."""
    return _font(size * _SS).getlength(png_text(text)) / _SS


_SUBSTITUTES = {"\u2014": "-", "\u2013": "-", "\u2212": "-", "\u00d7": "x", "\u2192": "->",
                "\u2248": "~", "\u221d": "~", "\u2264": "<=", "\u2265": ">="}


def png_text(text: str) -> str:
    """``text`` with characters that Pillow's default font lacks replaced (it has no dashes,
    arrows or maths signs), so the PNG never shows empty boxes; the SVG keeps the original."""
    return "".join(c if _has_glyph(c) else _SUBSTITUTES.get(c, "?") for c in text)


@functools.lru_cache(maxsize=1024)
def _has_glyph(ch: str) -> bool:
    if ch.isspace() or ch.isascii():
        return True
    return _glyph_bytes(ch) != _glyph_bytes("\uffff")  # missing glyphs all draw the same box


def _glyph_bytes(ch: str) -> bytes:
    img = Image.new("L", (40, 40))
    ImageDraw.Draw(img).text((4, 4), ch, font=_font(24), fill=255)
    return img.tobytes()


def _fit(text: str, size: float, room: float, tail: bool = True) -> str:
    """Shorten ``text`` with an ellipsis until it fits ``room`` pixels.

    Layer names keep more of their end (``features.28`` → ``fea…s.28``), since the number
    says which layer it is; titles keep their beginning.
    """
    if _text_w(text, size) <= room:
        return text
    for keep in range(len(text) - 1, 0, -1):
        head = keep // 3 if tail else keep
        short = text[:head] + "\u2026" + (text[len(text) - (keep - head):] if keep > head else "")
        if _text_w(short, size) <= room:
            return short
    return "\u2026"


def _finite(v: object) -> float:
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return f if math.isfinite(f) else 0.0


def finite_weights(values: Sequence) -> np.ndarray:
    """Flow weights as float64, anything that is not a finite number as 0 (as ``_finite``)."""
    try:
        out = np.asarray(values, np.float64)
    except (TypeError, ValueError):
        out = None
    if out is None or out.shape != (len(values),):  # odd values: one at a time
        return np.array([_finite(v) for v in values], np.float64)
    return np.where(np.isfinite(out), out, 0.0)


def heaviest(weights: np.ndarray, limit: int) -> np.ndarray:
    """Indices, in order, of the ``limit`` largest ``|weights|`` (ties: the earlier); all of
    them where ``limit`` is 0 or no smaller than their number. The drawing and the graph
    files (``paths.graph_files``) keep the same flows by it."""
    n = len(weights)
    if limit <= 0 or limit >= n:
        return np.arange(n)
    return np.sort(np.argsort(-np.abs(weights), kind="stable")[:limit])


def _mix(a: Colour, b: Colour, t: float) -> Colour:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b))  # type: ignore[return-value]


def _hex(c: Colour) -> str:
    return "#{:02x}{:02x}{:02x}".format(*c)


def _esc(text: str) -> str:
    text = "".join(ch for ch in str(text) if ch in "\t\n" or ord(ch) >= 32)  # XML 1.0 forbids the rest
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))
