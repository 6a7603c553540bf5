"""Layer-wise (conditional) K-path heatmaps: restricting the relevance at one layer and
propagating it down, against a float64 NumPy LRP of a dense network, against the engine's own
masked backward pass, and sample by sample in a batch."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from onnx import helper
from PIL import Image

from lrpath_onnx import Analyzer
from lrpath_onnx.models.registry import HERE
from lrpath_onnx.paths.conditional import layer_share, layerwise, neuron_maps, restricted_maps
from lrpath_onnx.paths.heatmaps import inner_masks
from lrpath_onnx.paths.neurons import explain_for_graph, graph_layers
from tests import models
from tests.reference import lrp_linear
from tests.test_cli import lrpath

DIGITS = HERE / "digits"
SIZES = (13, 11, 9, 7)


def mlp(rng, tmp_path):
    """X → Gemm → Relu → Gemm → Relu → Gemm, with its weights for the reference."""
    ws = [(rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32) for a, b in zip(SIZES, SIZES[1:])]
    bs = [(rng.standard_normal(b) * 0.1).astype(np.float32) for b in SIZES[1:]]
    nodes, src, inits = [], "X", {}
    for i, (w, b) in enumerate(zip(ws, bs)):
        inits[f"W{i}"], inits[f"B{i}"] = w, b
        nodes.append(helper.make_node("Gemm", [src, f"W{i}", f"B{i}"], [f"d{i}"], name=f"dense{i}"))
        src = f"d{i}"
        if i < len(ws) - 1:
            nodes.append(helper.make_node("Relu", [src], [f"r{i}"], name=f"relu{i}"))
            src = f"r{i}"
    path = models.save(models.make_model(nodes, [models.vi("X", ["N", SIZES[0]])], [models.vi(src, None)], inits),
                       tmp_path / "mlp.onnx")
    return path, ws, bs


def reference(x, ws, bs, target, restrict_at=None, mask=None, eps=1e-6):
    """Float64 LRP-ε of the dense net; with ``restrict_at`` = i, the relevance at dense layer
    i's output is multiplied by ``mask`` before it goes on down."""
    acts = [np.asarray(x, np.float64)]
    for i, (w, b) in enumerate(zip(ws, bs)):
        z = acts[-1] @ w + b
        acts.append(np.maximum(z, 0) if i < len(ws) - 1 else z)
    r = np.zeros_like(acts[-1])
    r[target] = acts[-1][target]
    for i in reversed(range(len(ws))):
        if i == restrict_at:
            r = r * mask
        r = lrp_linear("epsilon", acts[i], ws[i].astype(np.float64), bs[i].astype(np.float64), r, eps=eps)
    return r


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_restricting_one_layer_matches_a_numpy_reference(tmp_path, seed):
    rng = np.random.default_rng(seed)
    path, ws, bs = mlp(rng, tmp_path)
    an = Analyzer(path, preset="epsilon-plus", low=-3.0, high=3.0)
    assert {e.rule.name for e in an.plan().entries if e.layer.kind == "linear"} == {"epsilon"}
    x = rng.standard_normal((2, SIZES[0])).astype(np.float32)
    exp = explain_for_graph(an, x)
    for sample in (0, 1):
        target = exp.targets[sample]
        np.testing.assert_allclose(exp.relevance[sample], reference(x[sample], ws, bs, target), rtol=1e-4, atol=1e-6)
        for i, name in enumerate(["dense0", "dense1"]):
            mask = (rng.uniform(size=SIZES[i + 1]) < 0.5).astype(np.float32)
            want = reference(x[sample], ws, bs, target, restrict_at=i, mask=mask)
            got = restricted_maps(an, exp, name, mask[None], sample)[0]
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
            # the same as the engine's own masked backward pass with a mask at that layer only
            masked = an.reexplain(exp, {name: mask}).relevance[sample]
            np.testing.assert_allclose(got, masked, rtol=1e-5, atol=1e-7)


def reference_below(x, ws, bs, starts, eps=1e-6):
    """Float64 LRP-ε of the dense net from relevance given at several dense layers' outputs
    (layer index → relevance), each added when the pass reaches its layer."""
    acts = [np.asarray(x, np.float64)]
    for i, (w, b) in enumerate(zip(ws, bs)):
        z = acts[-1] @ w + b
        acts.append(np.maximum(z, 0) if i < len(ws) - 1 else z)
    r = np.zeros(SIZES[-1])
    for i in reversed(range(len(ws))):
        r = r + starts.get(i, 0.0)
        r = lrp_linear("epsilon", acts[i], ws[i].astype(np.float64), bs[i].astype(np.float64), r, eps=eps)
    return r


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_pass_from_several_layers_matches_a_numpy_reference(tmp_path, seed):
    """Signed relevance given at two or three layers at once, in one pass: the float64
    reference, and the sum of the passes started at each layer alone."""
    rng = np.random.default_rng(seed)
    path, ws, bs = mlp(rng, tmp_path)
    an = Analyzer(path, preset="epsilon-plus", low=-3.0, high=3.0)
    x = rng.standard_normal((2, SIZES[0])).astype(np.float32)
    exp = explain_for_graph(an, x)
    for sample in (0, 1):
        for chosen in ([0, 1], [0, 2], [0, 1, 2]):
            starts = {i: rng.standard_normal(SIZES[i + 1]).astype(np.float32) for i in chosen}
            got = an.relevance_below_sum(exp, {f"dense{i}": r for i, r in starts.items()}, sample)
            want = reference_below(x[sample], ws, bs, starts)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
            alone = sum(an.relevance_below(exp, f"dense{i}", r[None], sample)[0] for i, r in starts.items())
            np.testing.assert_allclose(got, alone, rtol=1e-5, atol=1e-6 * np.abs(alone).max())
    # a layer named twice (its name and its output tensor) gets both relevances
    r = rng.standard_normal(SIZES[2]).astype(np.float32)
    twice = an.relevance_below_sum(exp, {"dense1": r, an.graph.find("dense1").output: 2 * r})
    np.testing.assert_allclose(twice, 3 * an.relevance_below(exp, "dense1", r[None])[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model", ["mnist_vgg", "mnist_resnet", "mnist_efficientnet"])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_mean_map_in_one_pass_equals_the_mean_of_the_layer_maps(model, seed):
    """``per_layer=False``: on a chain, residual sums with projections, and SE gates with
    depthwise layers; random path masks."""
    an = Analyzer(HERE / f"{model}.onnx", low=0.0, high=1.0)
    x = np.asarray(Image.open(DIGITS / f"digit_{seed + 4}.png"), np.float32)[None, None] / 255
    exp = explain_for_graph(an, x)
    rng = np.random.default_rng(seed)
    masks = inner_masks(exp, {l.name: (rng.uniform(size=exp.kept[l.name].shape[1]) < 0.3).astype(np.float32)
                              for l in graph_layers(an)})
    assert len(masks) >= 4
    each = layerwise(an, exp, masks)
    once = layerwise(an, exp, masks, per_layer=False)
    np.testing.assert_allclose(once.summary, each.summary, rtol=1e-4, atol=1e-5 * np.abs(each.summary).max())
    assert once.summary_share == pytest.approx(each.summary_share, rel=1e-4, abs=1e-6)
    assert once.layer_share == each.layer_share and once.maps == {}
    assert set(once.input_share) == set(masks) and all(v is None for v in once.input_share.values())


@pytest.fixture(scope="module")
def digits():
    an = Analyzer(HERE / "mnist_vgg.onnx", low=0.0, high=1.0)
    x = np.stack([np.asarray(Image.open(DIGITS / f"digit_{d}.png"), np.float32) / 255 for d in (2, 8)])[:, None]
    return an, x, explain_for_graph(an, x)


@pytest.mark.parametrize("layer", ["features.0", "features.5", "classifier.0"])
def test_neuron_maps_add_up_and_each_sample_uses_its_own_forward_pass(digits, layer):
    """Backward passes are linear: the maps of single neurons add up to the layer's full
    relevance propagated down (the explanation itself); sample 1's maps, computed from a
    batch of two, are those of an explanation of sample 1 alone (MaxPool switches included)."""
    an, x, exp = digits
    n = exp.kept[layer].shape[1]
    for sample in (0, 1):
        maps = neuron_maps(an, exp, layer, range(n), sample)
        np.testing.assert_allclose(maps.sum(0), exp.relevance[sample], rtol=1e-4,
                                   atol=2e-6 * np.abs(exp.relevance[sample]).max())
    alone = explain_for_graph(an, x[1:2])
    pick = [0, 3, n - 1]
    np.testing.assert_allclose(neuron_maps(an, exp, layer, pick, 1), neuron_maps(an, alone, layer, pick, 0),
                               rtol=1e-5, atol=1e-8)


def test_later_passes_reuse_the_modified_forwards_of_the_first(digits, monkeypatch):
    """The rules' forward terms (γ's modified forward, z^B's bounded ones) depend on the
    activations only: the explanation the neuron graph keeps holds them, and the restricted
    passes that follow convolve nothing forward, with the same maps as recomputing them."""
    an, _, exp = digits
    kept = {k for k in exp.forward if "::z[" in k}
    gamma = [l.name for l in an.graph.layers if an.plan().rule_for(l).name in ("gamma", "zbox")]
    assert gamma and {k.split("::")[0] for k in kept} >= {an.graph.find(n).output for n in gamma}
    layer = "features.5"
    masks = np.eye(exp.kept[layer].shape[1], dtype=np.float32)[:4]
    calls = []
    forward = type(an.backend).conv2d
    monkeypatch.setattr(type(an.backend), "conv2d", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    reused = restricted_maps(an, exp, layer, masks, sample=1)
    assert calls == []
    bare = {k: v for k, v in exp.forward.items() if k not in kept}
    recomputed = restricted_maps(an, dataclasses.replace(exp, forward=bare), layer, masks, sample=1)
    assert len(calls) >= 2  # the layers below features.5 compute their terms again
    # the kept terms come from the batch of two, the recomputed ones from a batch of four:
    # BLAS may sum in another order
    np.testing.assert_allclose(reused, recomputed, rtol=1e-5, atol=1e-6 * np.abs(recomputed).max())


def test_kept_z_box_terms_are_not_taken_under_other_bounds():
    an = Analyzer(HERE / "mnist_vgg.onnx", low=0.0, high=1.0)
    x = np.random.default_rng(3).uniform(size=(1, 1, 28, 28)).astype(np.float32)
    exp = explain_for_graph(an, x)
    assert any("above" in k for k in exp.forward)
    masks = np.eye(exp.kept["features.2"].shape[1], dtype=np.float32)[:3]
    an.set_bounds(-0.5, 1.5)
    got = restricted_maps(an, exp, "features.2", masks)
    bare = {k: v for k, v in exp.forward.items() if "::z[" not in k}
    want = restricted_maps(an, dataclasses.replace(exp, forward=bare), "features.2", masks)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    an.set_bounds(0.0, 1.0)
    stale = restricted_maps(an, dataclasses.replace(exp, forward=bare), "features.2", masks)
    assert np.abs(stale - want).max() > 1e-3 * np.abs(want).max()  # the bounds matter


def test_layerwise_shares_and_summary(digits):
    an, _, exp = digits
    rng = np.random.default_rng(5)
    masks = {l.name: (rng.uniform(size=exp.kept[l.name].shape[1]) < 0.3).astype(np.float32)
             for l in graph_layers(an)}
    masks["classifier.3"][exp.targets[0]] = 1.0  # paths end at the target
    inner = inner_masks(exp, masks)
    assert "classifier.3" not in inner and set(inner) == set(masks) - {"classifier.3"}  # the target's own layer
    lw = layerwise(an, exp, inner, sample=0)
    total = exp.relevance[0].sum(dtype=np.float64)
    for name, m in inner.items():
        per_channel = exp.kept[name][0].reshape(len(m), -1).sum(1, dtype=np.float64)
        assert lw.layer_share[name] == pytest.approx(per_channel[m > 0].sum() / per_channel.sum())
        assert lw.input_share[name] == pytest.approx(lw.maps[name].sum() / total, rel=1e-6)
        # what arrives at the input is what the layer's path neurons held, up to ε and biases
        assert lw.input_share[name] == pytest.approx(lw.layer_share[name] * per_channel.sum() / total, abs=0.03)
    np.testing.assert_allclose(lw.summary, np.mean([lw.maps[n] for n in inner], axis=0), rtol=1e-6)
    assert lw.summary_share == pytest.approx(np.mean([lw.input_share[n] for n in inner]), rel=1e-5)
    assert layer_share(np.zeros((3, 2, 2)), np.ones(3)) is None


def test_paths_writes_the_layer_row_and_the_share_per_layer(tmp_path):
    res = lrpath("paths", "mnist-vgg", DIGITS / "digit_3.png", "--out", tmp_path / "lw", "--k", "3", "--per-layer", "6",
                 "--layer-maps")
    assert res.returncode == 0, res.stderr
    info = json.loads((tmp_path / "lw" / "digit_3" / "paths.json").read_text())
    assert info["path_heatmap"] == "layerwise"
    layers = [s["layer"] for s in info["share_per_layer"]]
    assert layers == info["layers"][:-1]  # every graph layer but the target's own
    shares = [s["input_share"] for s in info["share_per_layer"]]
    assert info["relevance_share_k_paths"] == pytest.approx(np.mean(shares), rel=1e-5)
    assert 0.01 < info["relevance_share_k_paths"] < 1
    with Image.open(tmp_path / "lw" / "digit_3" / "heatmap_k_paths_layers.png") as im:
        assert im.size[0] > 600 and len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)) > 50
    res = lrpath("paths", "mnist-vgg", DIGITS / "digit_3.png", "--out", tmp_path / "st", "--k", "3", "--per-layer", "6",
                 "--path-heatmap", "strict")
    strict = json.loads((tmp_path / "st" / "digit_3" / "paths.json").read_text())
    assert strict["path_heatmap"] == "strict" and strict["paths"] == info["paths"]
    assert abs(strict["relevance_share_k_paths"]) < info["relevance_share_k_paths"]
    # the default (--no-layer-maps): the same mean map from one pass, no layer row (an earlier run's is removed)
    res = lrpath("paths", "mnist-vgg", DIGITS / "digit_3.png", "--out", tmp_path / "lw", "--k", "3", "--per-layer", "6")
    assert res.returncode == 0, res.stderr
    fast = json.loads((tmp_path / "lw" / "digit_3" / "paths.json").read_text())
    assert fast["layer_maps"] is False and info["layer_maps"] is True and fast["paths"] == info["paths"]
    assert fast["relevance_share_k_paths"] == pytest.approx(info["relevance_share_k_paths"], rel=1e-4)
    assert [s["input_share"] for s in fast["share_per_layer"]] == [None] * len(layers)
    assert [s["relevance_share"] for s in fast["share_per_layer"]] == \
        [s["relevance_share"] for s in info["share_per_layer"]]
    assert not (tmp_path / "lw" / "digit_3" / "heatmap_k_paths_layers.png").exists()
    with Image.open(tmp_path / "lw" / "digit_3" / "heatmap_k_paths_relevance.png") as im:
        assert len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)) > 50
