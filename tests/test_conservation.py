"""Relevance conservation, and LRP-0 = gradient × input on bias-free ReLU networks."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from lrpath_onnx import Analyzer
from tests import models
from tests import reference as ref

SEEDS = [0, 1, 2]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rule", ["zero", "zplus:stabilizer=0", "alphabeta:2,1,stabilizer=0", "flat:stabilizer=0",
                                  "wsquare:stabilizer=0", "zbox:stabilizer=0"])
def test_bias_free_layers_conserve_exactly(tmp_path, rule, seed):
    """Without a stabiliser (zennit's 1e-6 is the default), a bias-free layer conserves exactly."""
    rng = np.random.default_rng(seed)
    model, w, _ = models.conv_model(rng, (2, 5, 8, 7), 6, strides=(2, 1), bias=False)
    path = models.save(model, tmp_path / "m.onnx")
    an = Analyzer(path, rules=[f"conv={rule}"], low=-4, high=4)
    x = rng.standard_normal((2, 5, 8, 7)).astype(np.float32)
    r = rng.standard_normal(an.forward(x)["Y"].shape)
    exp = an.relevance_from(x, "Y", r, dtype=np.float64)
    np.testing.assert_allclose(exp.relevance.reshape(2, -1).sum(1), r.reshape(2, -1).sum(1), rtol=1e-9)
    flow = exp.flows[0]
    np.testing.assert_allclose(flow.relevance_in, flow.relevance_out, rtol=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("eps", [1e-3, 0.5])
def test_epsilon_absorbs_exactly_the_bias_and_epsilon_share(tmp_path, seed, eps):
    rng = np.random.default_rng(seed)
    model, W, b = models.gemm_model(rng, 9, 6)
    path = models.save(model, tmp_path / "m.onnx")
    an = Analyzer(path, rules=[f"gemm=epsilon:{eps}"])
    x = rng.standard_normal((3, 9)).astype(np.float32)
    r = rng.standard_normal((3, 6))
    exp = an.relevance_from(x, "Y", r, dtype=np.float64)
    z = x.astype(np.float64) @ W + b
    expected = (r * (z - b) / (z + eps * np.where(z >= 0, 1, -1))).sum(1)
    np.testing.assert_allclose(exp.relevance.sum(1), expected, rtol=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_gamma_absorbs_exactly_the_modified_bias_share(tmp_path, seed):
    rng = np.random.default_rng(seed)
    model, w, b = models.conv_model(rng, (2, 4, 6, 6), 5, pre_relu=True)
    path = models.save(model, tmp_path / "m.onnx")
    an = Analyzer(path, rules=["conv=gamma:0.5"])
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    r = rng.standard_normal((2, 5, 6, 6))
    exp = an.relevance_from(x, "Y", r, dtype=np.float64)
    M, _, _ = ref.conv_matrix(w, (4, 6, 6), pads=(1, 1, 1, 1))
    b = b.astype(np.float64)
    a = np.maximum(x.reshape(2, -1).astype(np.float64), 0)
    z = a @ M + np.repeat(b, 36)
    r2 = r.reshape(2, -1)
    expected = 0
    # generalized γ: outputs with z > 0 use w + γw⁺ (bias b + γb⁺), those with z < 0 use w + γw⁻
    for keep, mod in ((z > 0, np.maximum), (z < 0, np.minimum)):
        bg = np.repeat(b + 0.5 * mod(b, 0), 36)
        zg = a @ (M + 0.5 * mod(M, 0)) + bg
        expected = expected + (r2 * keep * (zg - bg) * ref._div(1.0, zg, ref.STAB)).sum(1)
    np.testing.assert_allclose(exp.relevance.reshape(2, -1).sum(1), expected, rtol=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_whole_network_conserves_with_lrp0_and_no_bias(tmp_path, seed):
    rng = np.random.default_rng(seed)
    model, _ = models.small_cnn(rng, bias=False)
    path = models.save(model, tmp_path / "m.onnx")
    an = Analyzer(path, rules=["*=zero"])
    x = rng.standard_normal((3, 3, 12, 12)).astype(np.float32)
    exp = an.explain(x)
    for i in range(3):
        c = exp.conservation(i)
        assert c["output_relevance"] == pytest.approx(float(exp.logits[i, exp.targets[i]]), rel=1e-6)
        assert c["ratio"] == pytest.approx(1.0, abs=2e-5)  # float32 path
        assert all(abs(layer["ratio"] - 1) < 2e-5 for layer in c["per_layer"] if layer["ratio"] is not None)


def _dyadic(rng, shape, denom=8):
    """Small multiples of 1/denom: float32 sums and products of these are exact, so the
    float32 forward pass of onnxruntime and a float64 reference agree bit for bit."""
    return (rng.integers(-3, 4, shape) / denom).astype(np.float32)


def _bias_free_relu_net(rng):
    w1 = _dyadic(rng, (4, 2, 3, 3))
    w2 = _dyadic(rng, (5, 4, 3, 3))
    w3 = _dyadic(rng, (5 * 4 * 3, 6))
    w4 = _dyadic(rng, (6, 3))
    nodes = [helper.make_node("Conv", ["X", "W1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "W2"], ["c2"], name="conv2", kernel_shape=[3, 3], strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Flatten", ["r2"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "W3"], ["d"], name="fc1"),
             helper.make_node("Relu", ["d"], ["r3"], name="relu3"),
             helper.make_node("MatMul", ["r3", "W4"], ["logits"], name="fc2")]
    model = models.make_model(nodes, [models.vi("X", ["N", 2, 9, 7])], [models.vi("logits", None)],
                              {"W1": w1, "W2": w2, "W3": w3, "W4": w4})
    M1, _, _ = ref.conv_matrix(w1, (2, 9, 7), pads=(1, 1, 1, 1))
    M2, _, _ = ref.conv_matrix(w2, (4, 9, 7), strides=(2, 2))
    return model, [(M1, True), (M2, True), (w3.astype(np.float64), True), (w4.astype(np.float64), False)]


@pytest.mark.parametrize("seed", SEEDS)
def test_lrp0_equals_gradient_times_input_on_bias_free_relu_net(tmp_path, seed):
    rng = np.random.default_rng(seed)
    model, mats = _bias_free_relu_net(rng)
    path = models.save(model, tmp_path / "m.onnx")
    an = Analyzer(path, rules=["*=zero"])
    x = _dyadic(rng, (2, 2, 9, 7), 4)
    logits = an.forward(x)["logits"]
    target = logits.argmax(1)
    start = np.zeros(logits.shape)
    start[np.arange(2), target] = logits[np.arange(2), target]
    exp = an.relevance_from(x, "logits", start, dtype=np.float64)
    for n in range(2):
        gxi = ref.relu_net_gradient_x_input(mats, x[n].reshape(-1), target[n])
        np.testing.assert_allclose(exp.relevance[n].reshape(-1), gxi, rtol=1e-9, atol=1e-12)
