"""The neuron graph as files (graph.json, graph.graphml), kept to a size a user can open.

A graph of every neuron GetOptimizer keeps on VGG16 has millions of flows: written whole,
its files take gigabytes and minutes, and no graph viewer opens them. ``heaviest_flows``
keeps every neuron, the heaviest flows by |weight| and every flow on the K best paths;
the files say how many flows the full graph has, so nothing is dropped silently. Both
files are streamed a line per node and per edge (networkx's GraphML writer builds the
whole XML tree first and took 17 s for a million edges; indented JSON, 7.4 s).
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Hashable, Iterator, Sequence
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import networkx as nx
import numpy as np

from ..errors import OutputError
from ..io.outputs import atomic_path, to_plain
from ..io.schema import stamp
from ..viz.graph_draw import finite_weights, heaviest

__all__ = ["MAX_FLOWS", "heaviest_flows", "node_id", "write_graph_json", "write_graphml"]

MAX_FLOWS = 500_000  # flows written by default: files of tens of megabytes, which Gephi and networkx open


def node_id(node) -> str:
    """A string id for GraphML/JSON: ``layer:neuron`` or input/target."""
    return f"{node[0]}:{node[1]}" if isinstance(node, tuple) else str(node)


def heaviest_flows(g: nx.DiGraph, limit: int, paths: Sequence[Sequence[Hashable]] = ()) -> nx.DiGraph:
    """``g`` with every node, its ``limit`` heaviest edges by |weight| (ties: the earlier
    edge) and every edge on ``paths``; ``g`` itself where it has no more than ``limit``
    edges or ``limit`` is 0 (no limit)."""
    if limit <= 0 or g.number_of_edges() <= limit:
        return g
    edges = list(g.edges(data="weight", default=0.0))
    keep = np.zeros(len(edges), bool)
    keep[heaviest(finite_weights([w for *_, w in edges]), limit)] = True  # the flows the drawing keeps
    on_path = {(a, b) for p in paths for a, b in zip(p[:-1], p[1:])}
    out = nx.DiGraph(**g.graph)
    out.add_nodes_from(g.nodes(data=True))
    out.add_edges_from((u, v, g.edges[u, v]) for i, (u, v, _) in enumerate(edges) if keep[i] or (u, v) in on_path)
    return out


def write_graph_json(g: nx.DiGraph, path: Path, edges_total: int | None = None) -> None:
    """graph.json: the nodes with their attributes, the edges with their flow, and
    ``edges_total``, how many edges the full graph has (more than listed where
    ``heaviest_flows`` pruned it). A line per node and per edge: readable, and fast
    (indented JSON is encoded in Python: 7.4 s for a million edges)."""
    enc = json.JSONEncoder(allow_nan=False).encode
    head = {"edges_total": g.number_of_edges() if edges_total is None else int(edges_total)}
    plain_ids = _unique_ids(g)
    ids = {n: enc(i) for n, i in plain_ids.items()}

    def lines() -> Iterator[str]:
        yield "{"
        for k, v in stamp("graph", head).items():
            yield f"  {enc(k)}: {enc(v)},"
        yield '  "nodes": ['
        last = g.number_of_nodes() - 1
        for i, (n, d) in enumerate(g.nodes(data=True)):
            yield f"    {enc(to_plain({'id': plain_ids[n], **d}))}" + ("," if i < last else "")
        yield "  ],"
        yield '  "edges": ['
        last = g.number_of_edges() - 1
        for i, (u, v, w) in enumerate(g.edges(data="weight")):
            yield (f'    {{"source": {ids[u]}, "target": {ids[v]}, "weight": {_number(w)}}}'
                   + ("," if i < last else ""))
        yield "  ]"
        yield "}"

    _write(path, lines())


def write_graphml(g: nx.DiGraph, path: Path, edges_total: int | None = None) -> None:
    """GraphML for Gephi, Cytoscape or networkx (``nx.read_graphml`` gives back the ids,
    attributes and their types); the graph attribute ``edges_total`` says how many edges
    the full graph has."""
    meta = {**g.graph, "edges_total": g.number_of_edges() if edges_total is None else int(edges_total)}
    keys = {"graph": _keys(meta.items()), "node": _keys(a for _, d in g.nodes(data=True) for a in d.items()),
            "edge": _keys(a for *_, d in g.edges(data=True) for a in d.items())}
    ids = {(kind, name): f"{kind[0]}{i}" for kind, names in keys.items() for i, name in enumerate(names)}

    quoted = {n: quoteattr(i) for n, i in _unique_ids(g).items()}

    def data(kind: str, attrs: dict) -> str:
        return "".join(f'<data key="{ids[kind, k]}">{_text(v)}</data>' for k, v in attrs.items())

    def lines() -> Iterator[str]:
        yield "<?xml version='1.0' encoding='utf-8'?>"
        yield ('<graphml xmlns="http://graphml.graphdrawing.org/xmlns" '
               'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
               'xsi:schemaLocation="http://graphml.graphdrawing.org/xmlns '
               'http://graphml.graphdrawing.org/xmlns/1.0/graphml.xsd">')
        for kind, names in keys.items():
            for name, kind_of in names.items():
                yield (f'  <key id="{ids[kind, name]}" for="{kind}" attr.name={quoteattr(name)} '
                       f'attr.type="{kind_of}"/>')
        yield '  <graph edgedefault="directed">'
        yield f"    {data('graph', meta)}"
        for n, d in g.nodes(data=True):
            yield f"    <node id={quoted[n]}>{data('node', d)}</node>"
        for u, v, d in g.edges(data=True):
            yield f"    <edge source={quoted[u]} target={quoted[v]}>{data('edge', d)}</edge>"
        yield "  </graph>"
        yield "</graphml>"

    _write(path, lines())


def _unique_ids(g: nx.DiGraph) -> dict[Hashable, str]:
    """Each node's ``node_id``; two nodes with one id (``1`` and ``"1"``) would be merged by
    any reader, so they are refused."""
    ids = {n: node_id(n) for n in g.nodes}
    if len(set(ids.values())) < len(ids):
        seen: dict[str, Hashable] = {}
        for n, i in ids.items():
            if i in seen:
                raise OutputError(f"graph nodes {seen[i]!r} and {n!r} would both be written as '{i}'")
            seen[i] = n
    return ids


def _keys(items) -> dict[str, str]:
    """GraphML's type of each attribute name (``long``, ``double``, ``boolean`` or
    ``string``); an attribute that is an int on some nodes and a float on others is a double."""
    out: dict[str, str] = {}
    for name, value in items:
        kind = _KINDS.get(type(value)) or _kind(value)
        seen = out.setdefault(name, kind)
        if seen != kind:
            out[name] = "double" if {seen, kind} == {"long", "double"} else "string"
    return out


_KINDS = {bool: "boolean", int: "long", float: "double", str: "string"}


def _kind(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "boolean"
    if isinstance(value, numbers.Integral):
        return "long"
    return "double" if isinstance(value, numbers.Real) else "string"


def _number(value) -> str:
    """A flow as JSON: its shortest exact text, ``null`` where it is not finite."""
    f = float(value)
    return repr(f) if math.isfinite(f) else "null"


def _text(value) -> str:
    """An attribute's value as GraphML text (floats exact, booleans as true/false)."""
    kind = _KINDS.get(type(value)) or _kind(value)
    if kind == "double":
        return repr(float(value))
    if kind == "long":
        return str(int(value))
    if kind == "boolean":
        return "true" if value else "false"
    return escape(str(value))


def _write(path: Path, lines) -> None:
    """Write ``lines`` atomically, a newline after each."""
    try:
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            for line in lines:
                fh.write(line)
                fh.write("\n")
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
