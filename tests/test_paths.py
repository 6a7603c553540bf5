"""Neuron graph, masked model, path heatmaps and the paths/optimize commands on mnist-vgg."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pytest
from PIL import Image

from lrpath_onnx import Analyzer, InputError
from lrpath_onnx.models.registry import HERE
from lrpath_onnx.paths import SINK, SOURCE, build, explain_for_graph, graph_layers, k_best_paths
from lrpath_onnx.paths.conditional import layerwise
from lrpath_onnx.paths.masking import MaskedModel
from lrpath_onnx.paths.optimize import CRITERIA, InputSweep, choose
from lrpath_onnx.paths.scores import mse, spearman, unit_l1
from lrpath_onnx.viz.heatmap import relevance_map
from tests.test_cli import lrpath
from tests.test_graph import FIXTURES
from tests.test_paths_branches import branched_model

DIGITS = HERE / "digits"


@pytest.fixture(scope="module")
def mnist():
    an = Analyzer(HERE / "mnist_vgg.onnx", low=0.0, high=1.0)
    x = np.stack([np.asarray(Image.open(DIGITS / f"digit_{d}.png"), np.float32) / 255 for d in (3, 8)])[:, None]
    return an, x


def test_graph_layers_and_chain_check(mnist, tmp_path):
    an, _ = mnist
    assert [l.name for l in graph_layers(an)] == ["features.0", "features.2", "features.5", "features.7",
                                                  "classifier.0", "classifier.3"]
    resnet = [(l.name, l.op) for l in graph_layers(Analyzer(FIXTURES / "torch_resnet_block.onnx"))]
    assert [op for _, op in resnet].count("Add") == 1  # a residual sum joins the graph's branches
    with pytest.raises(InputError, match="joins or mixes channels"):
        graph_layers(Analyzer(branched_model(tmp_path / "h.onnx", concat_axis=2)))


@pytest.mark.parametrize("command", ["paths", "optimize"])
def test_a_model_without_a_chain_is_refused_before_out_is_made(tmp_path, command):
    """One line, exit 2, and no empty --out folder left behind (a concat along the height)."""
    model = branched_model(tmp_path / "h.onnx", concat_axis=2)
    np.save(tmp_path / "x.npy", np.zeros(Analyzer(model).input_shape[1:], np.float32))
    res = lrpath(command, model, tmp_path / "x.npy", "--out", tmp_path / "out")
    assert res.returncode == 2 and "joins or mixes channels" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("sample", [0, 1])
def test_full_graph_conserves_neuron_by_neuron(mnist, sample):
    """With every neuron kept, a neuron's outgoing flows add up to its relevance, and the
    first layer's neurons send all their (bias-free z^B) relevance to the input."""
    an, x = mnist
    exp = explain_for_graph(an, x)
    ng = build(an, exp, sample, per_layer=10_000)
    g = ng.graph
    assert g.number_of_nodes() == 2 + 32 + 32 + 64 + 64 + 128 + 1
    for layer in ng.layers[:-1]:
        for j in ng.kept[layer]:
            node = (layer, int(j))
            into_lower = sum(d["weight"] for _, _, d in g.in_edges(node, data=True))
            from_upper = sum(d["weight"] for _, _, d in g.out_edges(node, data=True))
            rel = g.nodes[node]["relevance"]
            assert from_upper == pytest.approx(rel, rel=1e-3, abs=1e-5 * abs(exp.start_relevance[sample]))
            if layer == "features.0":  # z^B has no bias: everything reaches the input (up to the
                # float32 rounding of onnxruntime's z, which the z^B denominator reuses)
                assert into_lower == pytest.approx(rel, rel=5e-3, abs=1e-6)
    assert g.nodes[SINK]["relevance"] == pytest.approx(float(exp.logits[sample].max()), rel=1e-6)
    assert ng.kept["classifier.3"].tolist() == [int(exp.logits[sample].argmax())]


def test_top_n_and_getoptimizer_selection(mnist):
    an, x = mnist
    exp = explain_for_graph(an, x[:1])
    ng = build(an, exp, 0, per_layer=5)
    for layer in ng.layers[:-1]:
        rel = ng.relevance[layer]
        assert len(ng.kept[layer]) == 5 and set(ng.kept[layer]) == set(np.argsort(-rel)[:5])
    ng2 = build(an, exp, 0, how="getoptimizer", threshold=1.0)
    assert all(0 < len(ng2.kept[l]) <= len(ng2.relevance[l]) for l in ng2.layers)
    best = k_best_paths(ng.graph, SOURCE, SINK, 5)
    assert len(best) == 5 and best[0][0] >= best[-1][0]
    assert nx.dag_longest_path_length(ng.graph) >= best[0][0] - 1e-9


def test_masked_model_and_masked_relevance(mnist):
    an, x = mnist
    mm = MaskedModel(an)
    np.testing.assert_array_equal(mm.run(x), an.runtime().run(x)["logits"])  # onnxruntime's own forward
    cut = mm.run(x, {"features.5": np.zeros(64)})
    assert np.abs(cut - an.forward(x)["logits"]).max() > 1.0
    exp = explain_for_graph(an, x)
    ones = {l: np.ones(len(v)) for l, v in build(an, exp, 0).relevance.items()}
    np.testing.assert_allclose(an.reexplain(exp, ones).relevance, exp.relevance, rtol=1e-6, atol=1e-7)
    zero = an.reexplain(exp, {"features.2": np.zeros(32)}).relevance
    assert np.abs(zero).max() == 0.0
    half = np.zeros(32)
    half[:16] = 1
    part = an.reexplain(exp, {"features.2": half})
    assert 0 < np.abs(part.relevance).sum() < np.abs(exp.relevance).sum() * 1.5


def test_paths_command_writes_everything(tmp_path):
    res = lrpath("paths", "mnist-vgg", DIGITS / "digit_3.png", "--out", tmp_path, "--k", "4", "--per-layer", "6")
    assert res.returncode == 0, res.stderr
    folder = tmp_path / "digit_3"
    for name in ("graph.png", "heatmap_full.png", "heatmap_k_paths_relevance.png", "heatmap_k_paths_activation.png"):
        with Image.open(folder / name) as im:
            assert im.size[0] >= 224 and len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)) > 10
    g = nx.read_graphml(folder / "graph.graphml")
    assert g.number_of_nodes() == 2 + 6 * 5 + 1
    info = json.loads((folder / "paths.json").read_text())
    assert len(info["paths"]) == 4 and info["paths"][0]["weight"] >= info["paths"][3]["weight"]
    assert [n["layer"] for n in info["paths"][0]["neurons"]] == info["layers"]
    assert info["longest"] == {k: v for k, v in info["paths"][0].items() if k != "rank"}
    assert "<svg" in (folder / "graph.svg").read_text()[:200]
    doc = json.loads((folder / "graph.json").read_text())  # a graph this small is written and drawn whole
    assert info["graph"]["edges"] == info["graph"]["edges_written"] == info["graph"]["edges_drawn"] == \
        len(doc["edges"]) == doc["edges_total"] == g.number_of_edges() == g.graph["edges_total"]
    assert "warning" not in res.stderr


def test_optimize_command(tmp_path):
    res = lrpath("optimize", "mnist-vgg", DIGITS / "digit_1.png", DIGITS / "digit_7.png", "--out", tmp_path,
                 "--k-max", "4", "--per-layer", "6", "--thresholds", "-1,0,1,2")
    assert res.returncode == 0, res.stderr
    info = json.loads((tmp_path / "optimize.json").read_text())
    assert info["inputs"] == 2 and info["k"] == [1, 2, 3, 4]
    assert all(np.isfinite(v) for v in info["per_k"]["all_layers_prob_mse"])
    kept = info["neurons_kept_per_threshold"]
    assert kept == sorted(kept)  # a larger t keeps more neurons
    assert info["per_threshold"]["all_layers_prob_mse"][-1] <= info["per_threshold"]["all_layers_prob_mse"][0]
    assert info["criterion"] == "heatmap_rank" and info["chosen_k"] in info["k"]
    assert set(info["chosen_k_by"]) == set(CRITERIA) and info["still_improving"] == (info["chosen_k"] == 4)
    share = info["per_k"]["share"]
    assert share == sorted(share) and 0 < share[0] < share[-1] < 1  # more paths, more of each layer's relevance
    assert f"chosen K = {info['chosen_k']} by heatmap_rank" in res.stdout
    for png in ("optimize_k.png", "optimize_threshold.png"):
        with Image.open(tmp_path / png) as im:
            assert im.size == (1000, 600)


def test_sweep_measures_match_their_definitions(mnist):
    """Each K's measures, recomputed from the definitions: the layer-wise heatmap from
    ``layerwise`` on the K paths' masks, the one-layer outputs from the masked model."""
    an, x = mnist
    mm = MaskedModel(an)
    s = InputSweep(an, mm, x[1:2], 6, 8, "nchw")
    for k in (1, 3, 6):
        m = s.measures(k)
        masks = s.ng.path_masks(s.best[:k])
        lw = layerwise(an, s.exp, {n: masks[n] for n in s.inner})
        full = unit_l1(relevance_map(s.exp.relevance[0], "nchw"))
        mine = unit_l1(relevance_map(lw.summary, "nchw"))
        assert m["heatmap_mse"] == pytest.approx(mse(mine, full), rel=1e-4)
        assert m["heatmap_spearman"] == pytest.approx(spearman(mine, full, support=True), abs=1e-3)
        assert m["share"] == pytest.approx(np.mean([lw.layer_share[n] for n in s.inner]), rel=1e-6)
        assert m["input_share"] == pytest.approx(lw.summary_share, rel=1e-4)
        f = float(s.exp.logits[0, s.target])
        changes = [abs(float(mm.run(x[1:2], {n: masks[n]})[0, s.target]) - f) / abs(f) for n in s.inner]
        assert m["one_layer_output_change"] == pytest.approx(np.mean(changes), rel=1e-5)
        every = mm.run(x[1:2], {n: v for n, v in masks.items() if n in mm.shapes})[0, s.target]
        assert m["all_layers_output_change"] == pytest.approx(abs(float(every) - f) / abs(f), rel=1e-5)


def test_the_criterion_picks_the_smallest_k_near_the_best():
    per_k = {"heatmap_spearman": [0.5, 0.7, 0.79, 0.8, 0.8], "share": [0.1, 0.2, 0.3, 0.4, 0.5]}
    assert choose([1, 2, 3, 4, 5], per_k, "heatmap_rank", 0.05) == 3  # 1 − 0.79 within 5 % of 1 − 0.8
    assert choose([1, 2, 3, 4, 5], per_k, "share", 0.05) == 5  # still improving: the largest K
    with pytest.raises(InputError, match="no 'one_layer_output_change' measure"):
        choose([1, 2, 3, 4, 5], per_k, "output_one_layer", 0.05)
