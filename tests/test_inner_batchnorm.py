"""A BatchNorm no convolution takes in (after a concat, a pool or a ReLU: DenseNet's
pre-activation layers): the ``shift`` and ``ratio`` rules against float64 references, and
what ``auto`` gives it (named presets pass relevance through it, as zennit's composites do)."""

from __future__ import annotations

import numpy as np
import pytest
import onnx
from onnx import helper, numpy_helper

from lrpath_onnx import Analyzer
from tests import models


def preactivation_model(path, seed: int):
    """X → conv1 → relu → [x·s + t, per channel: BatchNormalization] → relu → conv2 → relu →
    GlobalAveragePool → Flatten → Gemm (4 classes). The BatchNorm reads the ReLU's zeros, and
    its shift switches some of them on."""
    rng = np.random.default_rng(seed)
    c = 5
    inits = {"W1": (rng.standard_normal((c, 3, 3, 3)) * 0.5).astype(np.float32),
             "B1": (rng.standard_normal(c) * 0.3).astype(np.float32),
             "gamma": rng.uniform(0.5, 1.5, c).astype(np.float32),
             "beta": rng.normal(0.3, 0.5, c).astype(np.float32),
             "mean": rng.normal(0.5, 0.2, c).astype(np.float32),
             "var": rng.uniform(0.5, 1.5, c).astype(np.float32),
             "W2": (rng.standard_normal((6, c, 3, 3)) * 0.4).astype(np.float32),
             "D": rng.standard_normal((4, 6)).astype(np.float32)}
    n = helper.make_node
    nodes = [n("Conv", ["X", "W1", "B1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             n("Relu", ["c1"], ["r1"], name="relu1"),
             n("BatchNormalization", ["r1", "gamma", "beta", "mean", "var"], ["bn"], name="bn", epsilon=1e-5),
             n("Relu", ["bn"], ["r2"], name="relu2"),
             n("Conv", ["r2", "W2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             n("Relu", ["c2"], ["r3"], name="relu3"),
             n("GlobalAveragePool", ["r3"], ["g"], name="gap"),
             n("Flatten", ["g"], ["f"], name="flat"),
             n("Gemm", ["f", "D"], ["logits"], name="fc", transB=1)]
    models.save(models.make_model(nodes, [models.vi("X", ["N", 3, 7, 9])], [models.vi("logits", None)], inits), path)
    scale = inits["gamma"].astype(np.float64) / np.sqrt(inits["var"].astype(np.float64) + 1e-5)
    shift = inits["beta"] - inits["mean"] * scale
    return path, scale.reshape(1, -1, 1, 1), shift.reshape(1, -1, 1, 1)


def _step(rule: str, seed: int, tmp_path):
    """(relevance reaching the BatchNorm's output, what it passes to its input, its input,
    scale, shift) of one explanation with the BatchNorm under ``rule``."""
    path, scale, shift = preactivation_model(tmp_path / f"m{seed}.onnx", seed)
    an = Analyzer(path, preset="epsilon-gamma-box", rules=[f"bn={rule}"], low=-2.0, high=2.0)
    an.request("r1")
    x = np.random.default_rng(seed + 50).uniform(-2, 2, (2, 3, 7, 9)).astype(np.float32)
    exp = an.explain(x, keep=["bn", "relu1"], keep_forward=True)
    a = exp.forward["r1"].astype(np.float64)
    return exp.kept["bn"].astype(np.float64), exp.kept["relu1"].astype(np.float64), a, scale, shift


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shift_is_lrp0_with_the_shift_as_a_bias(tmp_path, seed):
    r_out, r_in, a, s, t = _step("shift", seed, tmp_path)
    y = a * s + t
    want = np.where(y != 0, a * s * r_out / np.where(y != 0, y, 1.0), 0.0)
    np.testing.assert_allclose(r_in, want, rtol=2e-5, atol=1e-6 * np.abs(want).max())
    dead = a == 0
    assert dead.any() and (np.abs(r_out[dead]) > 0).any()  # the shift switched dead units on
    assert not r_in[dead].any()  # and none of their relevance reaches them


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ratio_splits_by_absolute_shares_and_never_amplifies(tmp_path, seed):
    r_out, r_in, a, s, t = _step("ratio", seed, tmp_path)
    part = np.abs(a * s)
    want = part / (part + np.abs(t)) * r_out
    np.testing.assert_allclose(r_in, want, rtol=2e-5, atol=1e-6 * np.abs(want).max())
    assert np.all(np.abs(r_in) <= np.abs(r_out) + 1e-7) and not r_in[a == 0].any()


def test_pass_keeps_all_of_it_as_zennit_does(tmp_path):
    r_out, r_in, a, _, _ = _step("pass", 0, tmp_path)
    np.testing.assert_array_equal(r_in, r_out)
    assert (np.abs(r_in[a == 0]) > 0).any()  # relevance on units that were off: why auto shifts


def test_auto_gives_inner_batchnorms_the_shift_and_says_so(tmp_path):
    path, _, _ = preactivation_model(tmp_path / "m.onnx", 0)
    plan = Analyzer(path).plan()
    assert plan.applied == "epsilon-gamma-box"
    assert "1 BatchNorm(s) after a concat or pool keep their shift as a bias (shift), e.g. 'bn'" in plan.reason
    assert plan.rule_for(plan.graph.find("bn")).name == "shift"
    named = Analyzer(path, preset="epsilon-gamma-box").plan()
    assert named.rule_for(named.graph.find("bn")).name == "pass"


@pytest.mark.parametrize("seed", [0, 2])
def test_zero_and_epsilon_on_an_inner_batchnorm_are_the_shift_rule_with_their_epsilon(tmp_path, seed):
    """``--rule '*=zero'`` means LRP-0 everywhere: the BatchNorm no conv takes in is a linear
    layer with a diagonal weight and its shift as the bias (was: silently left at ``pass``)."""
    r_out, r_in, a, s, t = _step("zero", seed, tmp_path)
    y = a * s + t
    want = np.where(y != 0, a * s * r_out / np.where(y != 0, y, 1.0), 0.0)
    np.testing.assert_allclose(r_in, want, rtol=2e-5, atol=1e-6 * np.abs(want).max())
    r_out, r_in, a, s, t = _step("epsilon:0.5", seed, tmp_path)
    y = a * s + t
    want = a * s * r_out / (y + 0.5 * np.where(y >= 0, 1.0, -1.0))
    np.testing.assert_allclose(r_in, want, rtol=2e-5, atol=1e-6 * np.abs(want).max())


def test_a_wildcard_zero_rule_reaches_inner_batchnorms_but_not_the_input_normalisation(tmp_path):
    path, _, _ = preactivation_model(tmp_path / "m.onnx", 1)
    model = onnx.load(str(path))
    model.graph.node[0].input[0] = "Xn"  # (X - 0.4) / 0.3 before conv1
    model.graph.node.insert(0, helper.make_node("Div", ["Xc", "sd"], ["Xn"], name="norm_div"))
    model.graph.node.insert(0, helper.make_node("Sub", ["X", "mu"], ["Xc"], name="norm_sub"))
    model.graph.initializer.extend([numpy_helper.from_array(np.array(0.4, np.float32), "mu"),
                                    numpy_helper.from_array(np.array(0.3, np.float32), "sd")])
    models.save(model, tmp_path / "norm.onnx")
    plan = Analyzer(tmp_path / "norm.onnx", rules=["*=zero"]).plan()
    rules = {e.layer.name: (e.rule.name, e.source) for e in plan.entries if e.layer.op in ("BatchNormalization",
                                                                                          "Sub", "Div")}
    assert rules["bn"] == ("zero", "override")
    norm = [name for name in rules if name != "bn"]
    assert norm and all(rules[name][0] == "pass" for name in norm), rules
    named = Analyzer(tmp_path / "norm.onnx", rules=[f"{norm[0]}=zero"]).plan()  # named alone, it takes it
    assert named.rule_for(named.graph.find(norm[0])).name == "zero"
