"""The neuron graph: the most relevant neurons of each layer and the relevance flowing between them.

A neuron is a channel of a Conv layer or a unit of a dense layer. The edge from neuron i of
one layer to neuron j of the next carries the relevance j sends to i
(``Analyzer.channel_flows``: summed over positions and kernel taps), so the graph conserves
like the explanation does. Where branches meet (a residual sum, a concat along the
channels) the join is a graph layer too: its channel c gets an edge from channel c of each
branch, carrying the relevance the join's rule passes down that branch
(``Analyzer.branch_relevance``), so a skip connection is an edge that jumps columns. Between
graph layers only layers that keep channels apart may stand (activations, pools, constant
affine maps, gates, reshapes and transposes); another one is refused with its name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from ..api import Analyzer, Explanation, NeuronTarget
from ..errors import InputError
from ..graph.layers import BILINEAR, NORM, SOFTMAX, ConvLayer, Layer
from ..kernels import elementwise as _ew
from .optimizer import get_optimizer
from .ranking import uneven_join

SOURCE, SINK = "input", "target"


def relevant_layers(an: Analyzer) -> set[str]:
    """Names of the layers relevance reaches from the explained output (a gate's side
    branch, which receives none, is left out)."""
    seen: set[str] = set()
    stack = [an.graph.output]
    while stack:
        layer = an.graph.producer.get(stack.pop())
        if layer is None or layer.name in seen:
            continue
        seen.add(layer.name)
        stack.extend(layer.handler.relevance_inputs(layer))
    return seen


def joins(an: Analyzer, layer: Layer) -> list[int] | None:
    """Per input, the offset of its channels among a join's (a residual sum, a channel
    concat); None for a layer that is not one."""
    return layer.handler.joins(layer, an.graph.shapes)


def is_graph_layer(an: Analyzer, layer: Layer) -> bool:
    """Conv/dense layers have neurons; joins are graph layers too, so branches meet in the graph."""
    return layer.handler.neurons(layer) is not None or joins(an, layer) is not None


def graph_layers(an: Analyzer) -> list[Layer]:
    """The Conv/dense layers and the joins between them in the model's order (a
    topological one), each checked to reach the graph layers before it through layers that
    keep channels apart; raises with the culprit."""
    an.graph.fill_open_shapes()
    reached = relevant_layers(an)
    attention = [l for l in an.graph.layers if l.kind in (BILINEAR, SOFTMAX, NORM) and l.name in reached]
    if attention and all(l.kind == NORM for l in attention):
        raise InputError(f"neuron paths are defined for conv and dense layers: '{attention[0].name}' "
                         f"({attention[0].op}) normalises each neuron by its layer's or plane's statistics, so "
                         "no per-neuron flow conserves; use `lrpath explain` and `lrpath evaluate` for this model")
    if attention:
        raise InputError(f"neuron paths are defined for conv and dense layers, not transformers "
                         f"('{attention[0].name}' is {attention[0].op}): a token mixes every position and "
                         "attention multiplies activations, so no per-neuron flow conserves; use `lrpath "
                         "explain` (attnlrp) and `lrpath evaluate` for this model")
    layers = [l for l in an.graph.layers if l.name in reached and is_graph_layer(an, l)]
    if not any(l.handler.neurons(l) is not None for l in layers):
        raise InputError("the model has no Conv or dense layer to build a neuron graph from")
    names = {l.name for l in layers}
    for layer in layers:
        linked = links(an, layer, names)
        if joins(an, layer) is not None:
            _check_channels_first(an, layer, linked)
    return layers


def _check_channels_first(an: Analyzer, layer: Layer, linked: list[tuple[str, Layer | None]]) -> None:
    """A join's channels must be its axis 1, as the graph layers' are: a sum of channels-last
    tensors (a Transpose before it) joins rows, not channels, and is refused."""
    for tensor, prev in linked:
        if prev is None:
            continue
        ids = feature_ids(an, tensor, layer, prev)
        flat = ids.reshape(ids.shape[0], -1)
        if not (flat == flat[:, :1]).all():
            raise InputError(f"neuron paths join branches channel by channel along axis 1, but the channels of "
                             f"'{prev.name}' reach '{layer.name}' ({layer.op}) on another axis (channels last?)")


def links(an: Analyzer, layer: Layer, graph_names: set[str]) -> list[tuple[str, Layer | None]]:
    """Where a graph layer's input comes from: per input it reads as neurons (a join: every
    input; a Conv/dense layer: its first), that tensor and the graph layer it is reached
    from (None: the model input)."""
    tensors = layer.inputs if joins(an, layer) is not None else layer.inputs[:1]
    return [(t, _walk_back(an, t, layer, graph_names)[0]) for t in tensors]


def _walk_back(an: Analyzer, tensor: str, layer: Layer, graph_names: set[str]) -> tuple[Layer | None, list[Layer]]:
    """From ``tensor`` (an input of ``layer``) back to the previous graph layer (None: the
    model input), and the layers passed on the way, last first."""
    chain, t = [], tensor
    while t != an.graph.input:
        prev = an.graph.producer.get(t)
        if prev is None:
            break
        if prev.name in graph_names:
            return prev, chain
        nxt = prev.handler.chain_input(prev)
        if nxt is None:
            raise InputError(f"neuron paths need layers that keep channels apart between the conv and dense "
                             f"layers, or join branches channel by channel (residual sums, channel concats); "
                             f"'{prev.name}' ({prev.op}) before '{layer.name}' joins or mixes channels otherwise")
        chain.append(prev)
        t = nxt
    return None, chain


def feature_ids(an: Analyzer, tensor: str, layer: Layer, prev: Layer) -> np.ndarray:
    """For each element of ``tensor`` (an input of ``layer``, without the batch axis), the
    output channel of ``prev`` it comes from (pools keep channels; Flatten/Reshape/Transpose
    move them)."""
    chain = _walk_back(an, tensor, layer, {prev.name})[1][::-1]
    shape = an.graph.shapes.get(prev.output)
    if shape is None or any(d is None for d in shape[1:]):
        raise InputError(f"neuron graph needs the static shape of '{prev.output}'")
    ids = np.broadcast_to(np.arange(shape[1]).reshape((-1,) + (1,) * (len(shape) - 2)),
                          tuple(shape[1:])).astype(np.float64)
    for step in chain:
        out = an.graph.shapes.get(step.output)
        if out is None or any(d is None for d in out[1:]):
            raise InputError(f"neuron graph needs the static shape of '{step.output}'")
        ids = step.handler.channel_map(step, ids, out)
    return ids.astype(np.int64)


def channel_of_inputs(an: Analyzer, layer: Layer, prev: Layer) -> np.ndarray:
    """For each input feature of a Conv/dense ``layer`` (its channel, or its unit for a dense
    layer), the output channel of ``prev`` it comes from. The graph's structure fixes it: worked
    out once per analyzer (from a map the size of the activation: 30 ms per VGG16 graph)."""
    cache = an.__dict__.setdefault("_channel_of_inputs", {})
    key = (layer.name, prev.name)
    if key not in cache:
        ids = feature_ids(an, layer.inputs[0], layer, prev)
        cache[key] = ids.reshape(ids.shape[0], -1)[:, 0] if isinstance(layer, ConvLayer) else ids.reshape(-1)
    return cache[key]


def channel_count(an: Analyzer, layer: Layer) -> int:
    """How many neurons a graph layer has: its output channels (or units)."""
    counts = layer.handler.neurons(layer)
    return counts[1] if counts is not None else int(an.graph.shapes[layer.output][1])


def activation_tensor(an: Analyzer, layer: Layer) -> str:
    """The tensor a layer's neurons are seen by: its output after a following ReLU-like unit."""
    users = an.graph.consumers(layer.output)
    if len(users) == 1 and users[0].handler.rectifies(users[0]):
        return users[0].output
    return layer.output


@dataclass
class NeuronGraph:
    """The graph of one input, and what it was built from."""

    graph: nx.DiGraph
    layers: list[str]
    kept: dict[str, np.ndarray]
    relevance: dict[str, np.ndarray] = field(default_factory=dict)
    activation: dict[str, np.ndarray] = field(default_factory=dict)
    target: object = None

    def path_masks(self, paths: list[list]) -> dict[str, np.ndarray]:
        """Per graph layer, a 0/1 vector marking the neurons on any of ``paths``."""
        masks = {name: np.zeros(len(self.relevance[name]), np.float32) for name in self.layers}
        for path in paths:
            for node in path:
                if isinstance(node, tuple):
                    masks[node[0]][node[1]] = 1.0
        return masks


def _per_neuron(t: np.ndarray) -> np.ndarray:
    """(N, C) float64 totals per channel (numba's vectorised row sums: numpy's float64 reduce of
    float32 maps casts in small buffers, 21 ms for VGG16's graph layers against 7)."""
    if t.ndim <= 2:
        return t.astype(np.float64)
    return _ew.sample_sums(t.reshape(t.shape[0] * t.shape[1], -1)).reshape(t.shape[:2])


def select(relevance: np.ndarray, activation: np.ndarray | None, how: str, per_layer: int,
           threshold: float = 1.0) -> np.ndarray:
    """Neuron indices to keep: the ``per_layer`` most relevant, or GetOptimizer's choice."""
    if how == "top":
        order = np.argsort(-relevance, kind="stable")
        return np.sort(order[:per_layer])
    if how == "getoptimizer":
        mask, _ = get_optimizer(activation[None], relevance[None], 0, threshold)
        return np.nonzero(mask)[0]
    raise InputError(f"unknown neuron selection '{how}'; choose top or getoptimizer")


def build(an: Analyzer, exp: Explanation, sample: int = 0, per_layer: int = 16, how: str = "top",
          threshold: float = 1.0) -> NeuronGraph:
    """The neuron graph of ``sample`` from an explanation made with the graph layers kept
    (``keep=[...]``) and ``keep_forward=True`` (see ``explain_for_graph``). Each graph layer
    is a column, in the model's order: a skip connection's edge jumps the columns of the
    branch it goes round."""
    if per_layer < 1:
        raise InputError(f"--per-layer must be at least 1, got {per_layer}")
    layers = graph_layers(an)
    names = {l.name for l in layers}
    linked = {l.name: links(an, l, names) for l in layers}
    g = nx.DiGraph()
    g.add_node(SOURCE, layer="input", column=0, neuron=-1, relevance=float(exp.start_relevance[sample]))
    target = exp.targets[sample]
    if not isinstance(target, (int, np.integer)):
        sink_label = f"{target}"
    else:  # a feature-map output (a backbone): the flat index is a neuron, named layer:channel@(y, x)
        sink_label = str(an.output_neuron(int(target)) or f"class {target}")
    g.add_node(SINK, layer="target", column=len(layers) + 1, neuron=-1,
               relevance=float(exp.start_relevance[sample]), label=sink_label)
    skip = uneven_join(layer_dag(layers, linked), SOURCE)  # how ``ranking`` ranks: alike for every input
    g.graph["skip"] = f"'{skip[0]}' -> '{skip[1]}'" if skip else ""
    ng = NeuronGraph(g, [l.name for l in layers], {}, target=target)
    for li, layer in enumerate(layers):
        rel = _per_neuron(exp.kept[layer.name][sample:sample + 1])[0]
        act = _per_neuron(exp.forward[activation_tensor(an, layer)][sample:sample + 1])[0]
        size = exp.forward[activation_tensor(an, layer)][sample].size / max(len(act), 1)
        ng.relevance[layer.name], ng.activation[layer.name] = rel, act / size
        if li == len(layers) - 1 and layer.output == an.graph.output and isinstance(target, (int, np.integer)):
            kept = np.array([int(target)])
        else:
            kept = select(rel, ng.activation[layer.name], how, per_layer, threshold)
        ng.kept[layer.name] = kept
        for j in kept:
            g.add_node((layer.name, int(j)), layer=layer.name, column=li + 1, neuron=int(j),
                       relevance=float(rel[j]), activation=float(ng.activation[layer.name][j]))
    for layer in layers:
        if joins(an, layer) is not None:
            _join_edges(an, exp, ng, layer, linked[layer.name], sample)
        else:
            _layer_edges(an, exp, ng, layer, linked[layer.name][0][1], sample)
    last = layers[-1]
    for j in ng.kept[last.name]:
        g.add_edge((last.name, int(j)), SINK, weight=float(ng.relevance[last.name][j]))
    return ng


def layer_dag(layers: list[Layer], linked: dict[str, list[tuple[str, Layer | None]]]) -> nx.DiGraph:
    """The graph layers as a DAG from the input (``SOURCE``), an edge per link."""
    dag = nx.DiGraph()
    dag.add_node(SOURCE)
    for layer in layers:
        for _, prev in linked[layer.name]:
            dag.add_edge(SOURCE if prev is None else prev.name, layer.name)
    return dag


def _add_flow(g: nx.DiGraph, u, v, weight: float) -> None:
    """An edge u → v carrying ``weight`` more (two inputs of a join may come from one layer)."""
    if g.has_edge(u, v):
        g[u][v]["weight"] += float(weight)
    else:
        g.add_edge(u, v, weight=float(weight))


def _layer_edges(an: Analyzer, exp: Explanation, ng: NeuronGraph, layer: Layer, prev: Layer | None,
                 sample: int) -> None:
    """Edges into a Conv/dense layer's kept neurons: the relevance each sends to the kept
    neurons of the graph layer before (or to the input)."""
    kept = ng.kept[layer.name]
    if prev is None:
        f0 = an.channel_flows(exp, layer.name, np.arange(_in_features(an, layer)), kept)[sample]
        for col, j in enumerate(kept):
            _add_flow(ng.graph, SOURCE, (layer.name, int(j)), f0[:, col].sum())
        return
    ids = channel_of_inputs(an, layer, prev)
    keep_prev = ng.kept[prev.name]
    rows = np.nonzero(np.isin(ids, keep_prev))[0]
    f = an.channel_flows(exp, layer.name, rows, kept)[sample]
    n_in, n_out = layer.handler.neurons(layer)
    g = _groups(layer)
    heads = [(layer.name, int(j)) for j in kept]
    group_of_kept = np.asarray(kept) // (n_out // g)
    for ch in keep_prev:
        feeds = ids[rows] == ch
        if not feeds.any():  # a channel split or pick leaves it out
            continue
        share = f[feeds].sum(axis=0).tolist()
        linked = np.isin(group_of_kept, rows[feeds] // (n_in // g))  # a grouped conv links a channel to its group only
        tail = (prev.name, int(ch))  # each edge is new: a conv/dense layer reads one graph layer
        ng.graph.add_edges_from((tail, heads[c], {"weight": float(share[c])}) for c in np.flatnonzero(linked).tolist())


def _groups(layer: Layer) -> int:
    """How many groups a grouped (e.g. depthwise) conv splits its channels into; 1 otherwise."""
    return layer.geometry.groups if isinstance(layer, ConvLayer) else 1


def _join_edges(an: Analyzer, exp: Explanation, ng: NeuronGraph, layer: Layer,
                inputs: list[tuple[str, Layer | None]], sample: int) -> None:
    """Edges into a join's kept channels: per branch, the relevance the join passes down it,
    summed over positions, to the channel of the graph layer that branch comes from."""
    n_out = channel_count(an, layer)
    kept = ng.kept[layer.name]
    parts = an.branch_relevance(exp, layer.name)
    for (tensor, prev), offset, part in zip(inputs, joins(an, layer), parts):
        r = part[sample].astype(np.float64)
        out_ch = offset + np.broadcast_to(np.arange(r.shape[0]).reshape((-1,) + (1,) * (r.ndim - 1)), r.shape)
        if prev is None:
            ids, n_prev, sources = np.zeros(r.shape, np.int64), 1, {0: SOURCE}
        else:
            ids = np.broadcast_to(feature_ids(an, tensor, layer, prev), r.shape)
            n_prev = channel_count(an, prev)
            sources = {int(c): (prev.name, int(c)) for c in ng.kept[prev.name]}
        keys = (ids * n_out + out_ch).ravel()
        flow = np.bincount(keys, weights=r.ravel(), minlength=n_prev * n_out).reshape(n_prev, n_out)
        linked = np.bincount(keys, minlength=n_prev * n_out).reshape(n_prev, n_out) > 0
        for row, u in sources.items():
            for j in kept:
                if linked[row, j]:  # a sum links channel c to channel c only
                    _add_flow(ng.graph, u, (layer.name, int(j)), flow[row, j])


def _in_features(an: Analyzer, layer: Layer) -> int:
    return layer.handler.neurons(layer)[0]


def explain_for_graph(an: Analyzer, x: np.ndarray, target=None) -> Explanation:
    """An explanation keeping what the neuron graph needs: every graph layer's relevance
    and the forward tensors."""
    if isinstance(target, NeuronTarget):
        raise InputError(f"neuron paths run from the input to a class; --target {target.layer}:… (an inner "
                         "neuron) is for explain")
    layers = graph_layers(an)
    # the restricted passes start at these layers, where relevance comes from outside: each
    # reads all it needs then (an ε layer its own output, not the ReLU's after it)
    an.request(*[activation_tensor(an, l) for l in layers],
               *[t for l in layers for t in l.handler.needs(l, an.plan().rule_for(l), an.graph.shapes)])
    return an.explain(x, target=target, keep=[l.name for l in layers], keep_forward=True)
