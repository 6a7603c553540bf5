"""InstanceNormalization (and torch's GroupNorm, exported as one over groups between two
Reshapes) against a float64 reference written with explicit matrices: σ held constant, each
(sample, channel) plane is y = A x + b with A = (w_c/σ)(I − 11ᵀ/P) over its P positions, and
LRP-ε applies to that matrix, as for LayerNorm."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

from lrpath_onnx import Analyzer
from lrpath_onnx.graph.layers import InstanceNormLayer
from tests import models
from tests import reference as ref


def instancenorm_model(rng, C, H, W, eps=1e-5):
    inits = {"s": rng.uniform(0.5, 1.5, C).astype(np.float32), "b": rng.normal(0, 0.3, C).astype(np.float32)}
    nodes = [helper.make_node("InstanceNormalization", ["X", "s", "b"], ["Y"], name="inorm", epsilon=eps)]
    return models.make_model(nodes, [models.vi("X", ["N", C, H, W])], [models.vi("Y", ["N", C, H, W])], inits), inits


def _reference(x, w, b, r, eps_rule, eps=1e-5):
    """Per sample and channel, LRP-ε on the explicit matrix of the plane's normalisation."""
    n, c = x.shape[:2]
    want = np.zeros_like(r)
    for i in range(n):
        for k in range(c):
            a = x[i, k].reshape(-1).astype(np.float64)
            P = a.size
            sigma = np.sqrt(a.var() + eps)
            A = (w[k] / sigma) * (np.eye(P) - np.ones((P, P)) / P)
            want[i, k] = ref.lrp_linear("epsilon", a, A.T, np.full(P, b[k]), r[i, k].reshape(-1),
                                        eps=eps_rule).reshape(x.shape[2:])
    return want


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("eps_rule", [0.0, 0.25])
def test_instancenorm_rule_matches_the_linear_map_reference(tmp_path, seed, eps_rule):
    rng = np.random.default_rng(seed)
    C, H, W = 3, 5, 7
    model, inits = instancenorm_model(rng, C, H, W)
    path = models.save(model, tmp_path / "in.onnx")
    an = Analyzer(path, rules=[f"inorm=epsilon:{eps_rule}"])
    assert isinstance(an.graph.find("inorm"), InstanceNormLayer)
    x = rng.normal(0, 2, (2, C, H, W)).astype(np.float32)
    r = rng.normal(0, 1, (2, C, H, W))
    exp = an.relevance_from(x, an.graph.output, r, dtype=np.float64)
    want = _reference(x, inits["s"].astype(np.float64), inits["b"].astype(np.float64), r, eps_rule)
    np.testing.assert_allclose(exp.relevance, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())
    ours = an.graph.find("inorm").handler.forward(an.graph.find("inorm"), [x.astype(np.float64)])
    onnx_y = ort.InferenceSession(str(path)).run(None, {"X": x})[0]
    np.testing.assert_allclose(ours, onnx_y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_instancenorm_without_its_bias_conserves(tmp_path, seed):
    """``nobias`` divides by y − b = A x: with ε = 0 each plane's relevance sums to its own
    (the centring moves relevance between positions, conserving it)."""
    rng = np.random.default_rng(seed)
    model, _ = instancenorm_model(rng, 4, 3, 6)
    an = Analyzer(models.save(model, tmp_path / "in.onnx"), rules=["inorm=epsilon:0,nobias"])
    x = rng.normal(0, 1, (2, 4, 3, 6)).astype(np.float32)
    r = rng.normal(0, 1, (2, 4, 3, 6))
    got = an.relevance_from(x, an.graph.output, r, dtype=np.float64).relevance
    np.testing.assert_allclose(got.sum(axis=(2, 3)), r.sum(axis=(2, 3)), rtol=1e-9, atol=1e-12)


def groupnorm_model(rng, C, G, H, W):
    """torch's GroupNorm as its exporter writes it: Reshape (N, G, −1), InstanceNormalization
    with unit scale and zero bias, Reshape back, per-channel Mul and Add."""
    inits = {"gshape": np.array([0, G, -1], np.int64), "back": np.array([0, C, H, W], np.int64),
             "ones": np.ones(G, np.float32), "zeros": np.zeros(G, np.float32),
             "gamma": rng.uniform(0.5, 1.5, (C, 1, 1)).astype(np.float32),
             "beta": rng.normal(0, 0.3, (C, 1, 1)).astype(np.float32)}
    nodes = [helper.make_node("Reshape", ["X", "gshape"], ["g"], name="group"),
             helper.make_node("InstanceNormalization", ["g", "ones", "zeros"], ["gn"], name="inorm", epsilon=1e-5),
             helper.make_node("Reshape", ["gn", "back"], ["u"], name="ungroup"),
             helper.make_node("Mul", ["u", "gamma"], ["m"], name="scale"),
             helper.make_node("Add", ["m", "beta"], ["Y"], name="shift")]
    return models.make_model(nodes, [models.vi("X", ["N", C, H, W])], [models.vi("Y", ["N", C, H, W])], inits), inits


@pytest.mark.parametrize("seed", [0, 1])
def test_groupnorm_as_exported_matches_its_reference(tmp_path, seed):
    """Each group of channels is normalised together; with the affine part's shift passing
    relevance on (``conserving``) and ε = 0 the group's relevance is what reached it, and the
    per-position shares follow the explicit-matrix reference."""
    rng = np.random.default_rng(seed)
    C, G, H, W = 6, 2, 3, 5
    model, inits = groupnorm_model(rng, C, G, H, W)
    path = models.save(model, tmp_path / "gn.onnx")
    an = Analyzer(path, preset="conserving", rules=["inorm=epsilon:0,nobias"])
    x = rng.normal(0, 1, (2, C, H, W)).astype(np.float32)
    r = rng.normal(0, 1, (2, C, H, W))
    got = an.relevance_from(x, an.graph.output, r, dtype=np.float64).relevance
    np.testing.assert_allclose(an.forward(x)["Y"], ort.InferenceSession(str(path)).run(None, {"X": x})[0], rtol=1e-5,
                               atol=1e-5)
    grouped = r.reshape(2, G, -1).sum(axis=2)
    np.testing.assert_allclose(got.reshape(2, G, -1).sum(axis=2), grouped, rtol=1e-9, atol=1e-12)
    xg = x.reshape(2, G, 1, -1)
    rg = r.reshape(2, G, 1, -1)  # the affine part passes relevance on unchanged
    want = _reference(xg, np.ones(G), np.zeros(G), rg, 0.0)
    np.testing.assert_allclose(got, want.reshape(x.shape), rtol=1e-9, atol=1e-9 * np.abs(want).max())


def test_auto_explains_an_instancenorm_cnn_with_the_conserving_preset(tmp_path):
    """A CNN with instance normalisation is no transformer: ``auto`` applies ``conserving`` and
    names the normalisation; the explanation is finite and keeps its sign."""
    rng = np.random.default_rng(3)
    w1 = (rng.standard_normal((4, 3, 3, 3)) * 0.5).astype(np.float32)
    w2 = (rng.standard_normal((5, 4)) * 0.5).astype(np.float32)
    inits = {"w1": w1, "w2": w2, "s": np.ones(4, np.float32), "b": np.full(4, 0.2, np.float32)}
    nodes = [helper.make_node("Conv", ["X", "w1"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("InstanceNormalization", ["c", "s", "b"], ["n"], name="inorm"),
             helper.make_node("Relu", ["n"], ["a"], name="relu"),
             helper.make_node("GlobalAveragePool", ["a"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w2"], ["Y"], name="fc", transB=1)]
    model = models.make_model(nodes, [models.vi("X", ["N", 3, 8, 8])], [models.vi("Y", ["N", 5])], inits)
    an = Analyzer(models.save(model, tmp_path / "cnn.onnx"))
    assert an.plan().applied == "conserving" and "inorm" in an.plan().reason
    exp = an.explain(rng.random((2, 3, 8, 8)).astype(np.float32))
    assert np.isfinite(exp.relevance).all()
    assert all(0.3 < exp.conservation(i)["ratio"] < 3 for i in range(2))
