"""Element-wise activations, single ops and fused patterns: parsed into one activation layer,
their numpy forward equals onnxruntime, their derivative equals finite differences, and
relevance passes through them unchanged."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import helper

from lrpath_onnx import Analyzer
from lrpath_onnx.graph.layers import ActivationLayer
from tests import models

X_SHAPE = (2, 3, 6, 5)


def _net(act_nodes: list, act_in: str, act_out: str, inits: dict, rng, opset: int = 20):
    """X → conv1 → [activation nodes: act_in → act_out] → conv2 → Y."""
    w1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["X", "W1", "B1"], [act_in], name="conv1", kernel_shape=[3, 3], pads=[1] * 4),
             *act_nodes,
             helper.make_node("Conv", [act_out, "W2"], ["Y"], name="conv2", kernel_shape=[3, 3], pads=[1] * 4)]
    inits = {"W1": w1, "B1": rng.standard_normal(4).astype(np.float32), "W2": w2, **inits}
    return models.make_model(nodes, [models.vi("X", ["N", *X_SHAPE[1:]])], [models.vi("Y", None)], inits, opset=opset)


def _c(v):
    return np.asarray(v, np.float32)


#: single-op activations: (op, attributes, constant inputs, expected function name)
SINGLE = {
    "relu": ("Relu", {}, {}, "relu"),
    "leakyrelu": ("LeakyRelu", {"alpha": 0.1}, {}, "leakyrelu"),
    "relu6": ("Clip", {}, {"lo": _c(0.0), "hi": _c(6.0)}, "clip"),
    "hardtanh": ("Clip", {}, {"lo": _c(-1.0), "hi": _c(1.0)}, "clip"),
    "prelu": ("PRelu", {}, {"slope": _c([[[0.1]], [[0.2]], [[-0.3]], [[0.5]]])}, "prelu"),
    "thresholdedrelu": ("ThresholdedRelu", {"alpha": 0.5}, {}, "thresholdedrelu"),
    "sigmoid": ("Sigmoid", {}, {}, "sigmoid"),
    "hardsigmoid": ("HardSigmoid", {"alpha": 0.2, "beta": 0.5}, {}, "hardsigmoid"),
    "hardswish": ("HardSwish", {}, {}, "hardswish"),
    "gelu": ("Gelu", {}, {}, "gelu"),
    "gelu_tanh": ("Gelu", {"approximate": "tanh"}, {}, "gelu"),
    "mish": ("Mish", {}, {}, "mish"),
    "elu": ("Elu", {"alpha": 0.7}, {}, "elu"),
    "celu": ("Celu", {"alpha": 1.3}, {}, "celu"),
    "selu": ("Selu", {}, {}, "selu"),
    "softplus": ("Softplus", {}, {}, "softplus"),
    "softsign": ("Softsign", {}, {}, "softsign"),
    "tanh": ("Tanh", {}, {}, "tanh"),
    "erf": ("Erf", {}, {}, "erf"),
}


def _single(case, rng):
    op, attrs, consts, _ = SINGLE[case]
    node = helper.make_node(op, ["a"] + list(consts), ["b"], name="act", **attrs)
    return _net([node], "a", "b", consts, rng)


def _pattern(case, rng):
    """Activations as exporters spell them out."""
    n = helper.make_node
    if case == "silu":
        nodes = [n("Sigmoid", ["a"], ["s"], name="act/Sigmoid"), n("Mul", ["a", "s"], ["b"], name="act/Mul")]
        consts = {}
    elif case == "hardswish":
        nodes = [n("Add", ["a", "three"], ["t"], name="act/Add"), n("Clip", ["t", "zero", "six"], ["c"], name="act/Clip"),
                 n("Div", ["c", "six"], ["d"], name="act/Div"), n("Mul", ["a", "d"], ["b"], name="act/Mul")]
        consts = {"three": _c(3.0), "zero": _c(0.0), "six": _c(6.0)}
    elif case == "gelu":
        nodes = [n("Div", ["a", "sqrt2"], ["t"], name="act/Div"), n("Erf", ["t"], ["e"], name="act/Erf"),
                 n("Add", ["e", "one"], ["p"], name="act/Add"), n("Mul", ["a", "p"], ["q"], name="act/Mul"),
                 n("Mul", ["q", "half"], ["b"], name="act/Mul_1")]
        consts = {"sqrt2": _c(math.sqrt(2)), "one": _c(1.0), "half": _c(0.5)}
    elif case == "gelu_tanh":
        nodes = [n("Pow", ["a", "three"], ["c"], name="act/Pow"), n("Mul", ["c", "k1"], ["d"], name="act/Mul"),
                 n("Add", ["a", "d"], ["e"], name="act/Add"), n("Mul", ["e", "k2"], ["f"], name="act/Mul_1"),
                 n("Tanh", ["f"], ["g"], name="act/Tanh"), n("Add", ["g", "one"], ["h"], name="act/Add_1"),
                 n("Mul", ["a", "h"], ["i"], name="act/Mul_2"), n("Mul", ["i", "half"], ["b"], name="act/Mul_3")]
        consts = {"three": _c(3.0), "k1": _c(0.044715), "k2": _c(math.sqrt(2 / math.pi)), "one": _c(1.0),
                  "half": _c(0.5)}
    elif case == "mish":
        nodes = [n("Softplus", ["a"], ["s"], name="act/Softplus"), n("Tanh", ["s"], ["t"], name="act/Tanh"),
                 n("Mul", ["a", "t"], ["b"], name="act/Mul")]
        consts = {}
    else:
        raise ValueError(case)
    return _net(nodes, "a", "b", consts, rng, opset=17)


PATTERNS = {"silu": "silu", "hardswish": "hardswish", "gelu": "gelu", "gelu_tanh": "gelu", "mish": "mish"}


def _analyzer(tmp_path, model):
    return Analyzer(models.save(model, tmp_path / "m.onnx"), preset="epsilon-gamma-box")


def _activation(an) -> ActivationLayer:
    acts = [l for l in an.graph.layers if isinstance(l, ActivationLayer)]
    assert len(acts) == 1, [l.name for l in an.graph.layers]
    return acts[0]


def _check(an, act, rng):
    x = rng.standard_normal(X_SHAPE).astype(np.float32) * 2
    an.request(act.inputs[0], act.output)
    exp = an.explain(x, keep=["conv1", act.name], keep_forward=True)
    a = exp.forward[act.inputs[0]].astype(np.float64)
    # forward: the handler's float64 numpy equals onnxruntime
    np.testing.assert_allclose(act.handler.forward(act, [a]), exp.forward[act.output], rtol=2e-5, atol=2e-6)
    # derivative: central finite differences of that forward
    h = 1e-6
    fd = (act.handler.forward(act, [a + h]) - act.handler.forward(act, [a - h])) / (2 * h)
    away = np.abs(np.abs(a) - 3) > 1e-3  # kinks of Hardswish/Hardsigmoid/Clip/ReLU are not differentiable
    away &= np.abs(a) > 1e-3
    for kink in (0.5, -2.5, 2.5, 6.0, -1.0, 1.0):
        away &= np.abs(a - kink) > 1e-3
    np.testing.assert_allclose(act.handler.derivative(act, a)[away], fd[away], rtol=1e-5, atol=1e-6)
    # relevance passes unchanged
    r_out, r_in = exp.kept[act.name], exp.kept["conv1"]
    np.testing.assert_array_equal(r_in, r_out)
    return exp


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("case", list(SINGLE))
def test_single_op_activations(tmp_path, case, seed):
    rng = np.random.default_rng(seed)
    an = _analyzer(tmp_path, _single(case, rng))
    act = _activation(an)
    assert act.fn == SINGLE[case][3]
    _check(an, act, rng)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("case", list(PATTERNS))
def test_patterns_fuse_into_one_activation(tmp_path, case, seed):
    rng = np.random.default_rng(seed)
    an = _analyzer(tmp_path, _pattern(case, rng))
    act = _activation(an)
    assert act.fn == PATTERNS[case] and act.name == "act" and len(act.parts) >= 2
    assert act.inputs == [an.graph.find("conv1").output]
    _check(an, act, rng)


def test_pattern_with_an_outside_reader_is_not_fused(tmp_path):
    """``x·sigmoid(x)`` whose sigmoid a convolution also reads stays apart: the product is a gate."""
    rng = np.random.default_rng(0)
    n = helper.make_node
    nodes = [n("Sigmoid", ["a"], ["s"], name="sig"), n("Mul", ["a", "s"], ["m"], name="mul"),
             n("Conv", ["s", "W3"], ["c3"], name="conv3", kernel_shape=[1, 1]),
             n("Add", ["m", "c3"], ["b"], name="add")]
    w3 = rng.standard_normal((4, 4, 1, 1)).astype(np.float32)
    an = _analyzer(tmp_path, _net(nodes, "a", "b", {"W3": w3}, rng, opset=17))
    kinds = {l.name: l.family for l in an.graph.layers}
    assert kinds["mul"] == "gate" and kinds["sig"] == "activation" and kinds["add"] == "merge"
    assert an.graph.find("mul").inputs == ["a", "s"]  # signal first, the sigmoid is the gate


def test_sum_of_functions_of_one_tensor_is_one_activation(tmp_path):
    """``x·σ(x) + σ(x)`` is an element-wise function of x however it is spelled."""
    rng = np.random.default_rng(0)
    n = helper.make_node
    nodes = [n("Sigmoid", ["a"], ["s"], name="f/sig"), n("Mul", ["a", "s"], ["m"], name="f/mul"),
             n("Add", ["m", "s"], ["b"], name="f/add")]
    an = _analyzer(tmp_path, _net(nodes, "a", "b", {}, rng, opset=17))
    act = _activation(an)
    assert act.name == "f" and [p.name for p in act.parts] == ["f/sig", "f/mul", "f/add"]
    _check(an, act, rng)


def test_activation_facts(tmp_path):
    """Non-negative outputs and sign keeping, which rules and passes rely on."""
    rng = np.random.default_rng(0)
    facts = {}
    for case in ("relu", "relu6", "hardtanh", "sigmoid", "silu", "hardswish", "tanh", "softplus"):
        model = _single(case, rng) if case in SINGLE else _pattern(case, rng)
        an = Analyzer(models.save(model, tmp_path / f"{case}.onnx"), preset="epsilon-gamma-box")
        act = _activation(an)
        facts[case] = (act.handler.nonneg_output(act, [False]), act.handler.sign_kind(act),
                       an.graph.find("conv2").nonneg_input, an.graph.find("conv1").sign_tensor == act.output)
    assert facts["relu"] == (True, "positive", True, True)
    assert facts["relu6"] == (True, "positive", True, True)
    assert facts["hardtanh"] == (False, "exact", False, False)
    assert facts["sigmoid"] == (True, None, True, False)
    assert facts["softplus"] == (True, None, True, False)
    assert facts["silu"] == (False, "exact", False, False)  # far below 0 its float32 output underflows
    assert facts["hardswish"] == (False, "positive", False, True)
    assert facts["tanh"] == (False, "exact", False, False)
