"""Neuron graphs of residual and branching networks: joins (residual sums, channel concats)
are graph layers, their edges carry what the join's rule passes down each branch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from PIL import Image

from lrpath_onnx import Analyzer, InputError
from lrpath_onnx.models.registry import HERE
from lrpath_onnx.paths import SINK, build, explain_for_graph, graph_layers
from tests import models
from tests.test_cli import lrpath

DIGITS = HERE / "digits"


def branched_model(path, seed=0, concat_axis=1):
    """conv1-relu, then a residual sum of it with conv2 of it, concatenated with conv3 of it
    along ``concat_axis``; relu, global average pool, a dense layer of 5 classes."""
    rng = np.random.default_rng(seed)
    w = lambda *s: (rng.standard_normal(s) * 0.4).astype(np.float32)  # noqa: E731
    n_cat = 7 if concat_axis == 1 else 4
    nodes = [helper.make_node("Conv", ["X", "W1", "B1"], ["c1"], name="conv1", kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "W2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["r1", "c2"], ["s"], name="add"),
             helper.make_node("Conv", ["r1", "W3"], ["c3"], name="conv3", kernel_shape=[1, 1]),
             helper.make_node("Concat", ["s", "c3" if concat_axis == 1 else "s"], ["cat"], name="concat",
                              axis=concat_axis),
             helper.make_node("Relu", ["cat"], ["rc"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["rc"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "W4"], ["Y"], name="fc", transB=1)]
    inits = {"W1": w(4, 3, 3, 3), "B1": w(4) * 0.1, "W2": w(4, 4, 3, 3), "W3": w(3, 4, 1, 1), "W4": w(5, n_cat)}
    return models.save(models.make_model(nodes, [models.vi("X", ["N", 3, 10, 9])], [models.vi("Y", None)], inits),
                       path)


@pytest.mark.parametrize("preset", ["auto", "epsilon-gamma-box"])
@pytest.mark.parametrize("seed", [0, 1])
def test_join_edges_equal_a_float64_reference(tmp_path, preset, seed):
    """Sum: branch k of channel c gets Σ_positions x_k / z · R (ε rule) or |x_k| / Σ|x| · R
    (ratio rule); concat: each input its own channels' relevance. Computed in float64 from the
    forward tensors and the join's kept relevance."""
    an = Analyzer(branched_model(tmp_path / "b.onnx", seed), preset=preset)
    layers = [l.name for l in graph_layers(an)]
    assert sorted(layers) == ["add", "concat", "conv1", "conv2", "conv3", "fc"]
    assert layers.index("conv1") < layers.index("conv2") < layers.index("add") < layers.index("concat")
    x = np.random.default_rng(10 + seed).standard_normal((2, 3, 10, 9)).astype(np.float32)
    exp = explain_for_graph(an, x)
    rule = an.plan().rule_for(an.graph.find("add"))
    for sample in range(2):
        ng = build(an, exp, sample, per_layer=10_000)
        g, f = ng.graph, exp.forward
        r1, c2 = (f[t][sample].astype(np.float64) for t in ("r1", "c2"))
        r_sum = exp.kept["add"][sample].astype(np.float64)
        if rule.name == "ratio":
            den = np.abs(r1) + np.abs(c2)
            shares = [np.divide(np.abs(b), den, out=np.zeros_like(den), where=den != 0) for b in (r1, c2)]
        else:
            z = r1 + c2
            z = z + rule.get("epsilon", 0.0) * np.where(z >= 0, 1.0, -1.0)
            shares = [b / z for b in (r1, c2)]
        for prev, share in zip(("conv1", "conv2"), shares):
            want = (share * r_sum).sum(axis=(1, 2))
            got = [g[(prev, c)][("add", c)]["weight"] for c in range(4)]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
            assert not g.has_edge((prev, 0), ("add", 1))  # a sum joins channel c to channel c only
        r_cat = exp.kept["concat"][sample].astype(np.float64).sum(axis=(1, 2))
        np.testing.assert_allclose([g[("add", c)][("concat", c)]["weight"] for c in range(4)], r_cat[:4], rtol=1e-6)
        np.testing.assert_allclose([g[("conv3", c)][("concat", 4 + c)]["weight"] for c in range(3)], r_cat[4:],
                                   rtol=1e-6)
        # a column per layer in the model's order: every edge runs rightwards, the skip
        # connection conv1 → add jumps conv2's column
        cols = {name: g.nodes[(name, int(ng.kept[name][0]))]["column"] for name in ng.layers}
        assert [cols[name] for name in layers] == list(range(1, 7)) and g.nodes[SINK]["column"] == 7
        assert all(g.nodes[u]["column"] < g.nodes[v]["column"] for u, v in g.edges)
        assert cols["add"] - cols["conv1"] >= 2 and g.has_edge(("conv1", 0), ("conv3", 0))


@pytest.mark.parametrize("model", ["mnist_resnet.onnx", "mnist_efficientnet.onnx"])
def test_residual_graph_conserves_neuron_by_neuron(model):
    """With every neuron kept, a neuron's outgoing flows add up to its relevance (its
    consumers, a branch and a skip connection, together); a join's incoming flows add up to its
    relevance (the conserving ratio rule splits a residual sum); strided projections, SE gates
    and depthwise layers included."""
    an = Analyzer(HERE / model, low=0.0, high=1.0)
    x = np.stack([np.asarray(Image.open(DIGITS / f"digit_{d}.png"), np.float32) / 255 for d in (3, 8)])[:, None]
    exp = explain_for_graph(an, x)
    joins = [l.name for l in graph_layers(an) if l.op == "Add"]
    assert len(joins) >= 3
    depthwise = [l.name for l in graph_layers(an) if l.op == "Conv" and l.geometry.groups == l.out_channels > 1]
    for sample in range(2):
        ng = build(an, exp, sample, per_layer=10_000)
        g, scale = ng.graph, abs(exp.start_relevance[sample])
        for layer in ng.layers[:-1]:
            for j in ng.kept[layer]:
                node = (layer, int(j))
                rel = g.nodes[node]["relevance"]
                up = sum(d["weight"] for _, _, d in g.out_edges(node, data=True))
                assert up == pytest.approx(rel, rel=1e-3, abs=1e-6 * scale)
                if layer in joins:
                    down = sum(d["weight"] for _, _, d in g.in_edges(node, data=True))
                    assert down == pytest.approx(rel, rel=1e-3, abs=1e-6 * scale)
        assert ng.kept[ng.layers[-1]].tolist() == [int(exp.logits[sample].argmax())]
        for layer in depthwise:  # a depthwise conv links channel c to channel c only
            assert all(u[1] == v[1] for v in g.nodes if v[0] == layer for u in g.predecessors(v))
    assert depthwise or model == "mnist_resnet.onnx"


def test_a_join_along_another_axis_is_refused_by_name(tmp_path):
    """A concat along the height joins no channels (the commands: tests/test_paths.py)."""
    with pytest.raises(InputError, match="'concat' \\(Concat\\) before 'fc' joins or mixes channels"):
        graph_layers(Analyzer(branched_model(tmp_path / "h.onnx", concat_axis=2)))


def test_paths_and_optimize_commands_on_a_resnet(tmp_path):
    """mnist-resnet: paths pass its residual sums, a skip edge is drawn bowed, the layers no
    path passes through are left out of the layer-wise heatmap, optimize chooses a K."""
    res = lrpath("paths", "mnist-resnet", DIGITS / "digit_3.png", "--out", tmp_path / "p", "--k", "5")
    assert res.returncode == 0, res.stderr
    rec = json.loads((tmp_path / "p" / "digit_3" / "paths.json").read_text())
    assert {"layer1", "layer2", "layer3", "layer2.down.0"} <= set(rec["layers"])
    best = [n["layer"] for n in rec["paths"][0]["neurons"]]
    assert best[0] == "stem.0" and best[-1] == "fc" and "layer3" in best
    on_paths = {n["layer"] for p in rec["paths"] for n in p["neurons"]}
    drawn = {s["layer"] for s in rec["share_per_layer"]}
    assert drawn <= on_paths and all(0 < s["relevance_share"] < 1 for s in rec["share_per_layer"])
    assert 0 < rec["relevance_share_k_paths"] < 1
    svg = (tmp_path / "p" / "digit_3" / "graph.svg").read_text()
    skips = [(a["layer"], b["layer"]) for p in rec["paths"] for a, b in zip(p["neurons"], p["neurons"][1:])
             if rec["layers"].index(b["layer"]) - rec["layers"].index(a["layer"]) > 1]
    assert skips and svg.count("<polyline") >= 1
    res = lrpath("optimize", "mnist-resnet", DIGITS / "digit_3.png", DIGITS / "digit_8.png", "--out",
                 tmp_path / "o", "--k-max", "6")
    assert res.returncode == 0, res.stderr
    opt = json.loads((tmp_path / "o" / "optimize.json").read_text())
    assert 1 <= opt["chosen_k"] <= 6 and len(opt["per_k"]["share"]) == 6
    assert all(0 < s < 1 for s in opt["per_k"]["share"]) and np.all(np.diff(opt["per_k"]["share"]) >= -1e-9)


def shuffle_model(path, seed=0):
    """conv1-relu (6 channels) split in halves; the second half's channels picked by a Gather
    ([2, 0, 2] of it) into conv2; concat of the first half with conv2; a channel shuffle
    (Reshape, Transpose, Reshape); relu, global average pool, a dense layer of 4 classes."""
    rng = np.random.default_rng(seed)
    w = lambda *s: (rng.standard_normal(s) * 0.4).astype(np.float32)  # noqa: E731
    nodes = [helper.make_node("Conv", ["X", "W1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Split", ["r1", "halves"], ["a", "b"], name="split", axis=1),
             helper.make_node("Gather", ["b", "pick"], ["bp"], name="pick", axis=1),
             helper.make_node("Conv", ["bp", "W2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Concat", ["a", "c2"], ["cat"], name="concat", axis=1),
             helper.make_node("Reshape", ["cat", "s5"], ["g5"], name="groups"),
             helper.make_node("Transpose", ["g5"], ["t5"], name="swap", perm=[0, 2, 1, 3, 4]),
             helper.make_node("Reshape", ["t5", "s4"], ["sh"], name="shuffle"),
             helper.make_node("Relu", ["sh"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "W3"], ["Y"], name="fc", transB=1)]
    inits = {"W1": w(6, 3, 3, 3), "W2": w(3, 3, 3, 3), "W3": w(4, 6),
             "halves": np.array([3, 3], np.int64), "pick": np.array([2, 0, 2], np.int64),
             "s5": np.array([0, 2, 3, 8, 7], np.int64), "s4": np.array([0, 6, 8, 7], np.int64)}
    return models.save(models.make_model(nodes, [models.vi("X", ["N", 3, 8, 7])], [models.vi("Y", None)], inits),
                       path)


@pytest.mark.parametrize("seed", [0, 1])
def test_channel_splits_picks_and_shuffles_carry_channels(tmp_path, seed):
    """A ShuffleNet's channel split and shuffle, and a Gather picking channels, keep channels
    apart: conv2's input channel k is conv1's channel 3 + [2, 0, 2][k] (flows of a repeated
    channel add up), the concat's first half is conv1's first half, and the dense layer's
    unit k reads concat channel [0, 3, 1, 4, 2, 5][k] after the shuffle (float64 ε reference);
    every neuron's flows add up to its relevance."""
    an = Analyzer(shuffle_model(tmp_path / "s.onnx", seed), preset="epsilon-gamma-box")
    assert [l.name for l in graph_layers(an)] == ["conv1", "conv2", "concat", "fc"]
    x = np.random.default_rng(20 + seed).standard_normal((2, 3, 8, 7)).astype(np.float32)
    exp = explain_for_graph(an, x)
    eps = an.plan().rule_for(an.graph.find("fc")).get("epsilon", 0.0)
    for sample in range(2):
        ng = build(an, exp, sample, per_layer=10_000)
        g, scale = ng.graph, abs(exp.start_relevance[sample])
        f2 = an.channel_flows(exp, "conv2", np.arange(3), np.arange(3))[sample]
        for j in range(3):
            assert g[("conv1", 5)][("conv2", j)]["weight"] == pytest.approx(f2[0, j] + f2[2, j], rel=1e-6, abs=1e-9)
            assert g[("conv1", 3)][("conv2", j)]["weight"] == pytest.approx(f2[1, j], rel=1e-6, abs=1e-9)
            assert not g.has_edge(("conv1", 4), ("conv2", j)) and not g.has_edge(("conv1", j), ("conv2", j))
        r_cat = exp.kept["concat"][sample].astype(np.float64).sum(axis=(1, 2))
        np.testing.assert_allclose([g[("conv1", c)][("concat", c)]["weight"] for c in range(3)], r_cat[:3], rtol=1e-6)
        np.testing.assert_allclose([g[("conv2", c)][("concat", 3 + c)]["weight"] for c in range(3)], r_cat[3:],
                                   rtol=1e-6)
        feats = exp.forward["f"][sample].astype(np.float64)
        j = int(exp.targets[sample])
        w = onnx_numpy(tmp_path / "s.onnx", "W3").astype(np.float64)[j]
        z = feats @ w
        share = feats * w / (z + eps * (1.0 if z >= 0 else -1.0)) * float(exp.start_relevance[sample])
        for k, ch in enumerate([0, 3, 1, 4, 2, 5]):
            assert g[("concat", ch)][("fc", j)]["weight"] == pytest.approx(share[k], rel=1e-4, abs=1e-6 * scale)
        for layer in ng.layers[:-1]:
            for c in ng.kept[layer]:
                node = (layer, int(c))
                up = sum(d["weight"] for _, _, d in g.out_edges(node, data=True))
                assert up == pytest.approx(g.nodes[node]["relevance"], rel=1e-3, abs=1e-6 * scale)


def onnx_numpy(path, name: str) -> np.ndarray:
    """An initializer of a saved model."""
    return next(numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer if t.name == name)


def test_a_sum_of_channels_last_tensors_is_refused_by_name(tmp_path):
    """Transposed to NHWC before the sum, axis 1 holds rows: no channel-by-channel join."""
    rng = np.random.default_rng(3)
    w = lambda *s: (rng.standard_normal(s) * 0.4).astype(np.float32)  # noqa: E731
    nodes = [helper.make_node("Conv", ["X", "W1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["X", "W2"], ["c2"], name="conv2", kernel_shape=[1, 1]),
             helper.make_node("Transpose", ["c1"], ["t1"], name="nhwc1", perm=[0, 2, 3, 1]),
             helper.make_node("Transpose", ["c2"], ["t2"], name="nhwc2", perm=[0, 2, 3, 1]),
             helper.make_node("Add", ["t1", "t2"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "W3"], ["Y"], name="fc", transB=1)]
    inits = {"W1": w(4, 3, 3, 3), "W2": w(4, 3, 1, 1), "W3": w(5, 6 * 6 * 4)}
    path = models.save(models.make_model(nodes, [models.vi("X", ["N", 3, 6, 6])], [models.vi("Y", None)], inits),
                       tmp_path / "nhwc.onnx")
    with pytest.raises(InputError, match="the channels of 'conv1' reach 'add' \\(Add\\) on another axis"):
        graph_layers(Analyzer(path))
