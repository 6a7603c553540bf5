"""Squeeze-excitation gates: detected, held constant for the backward pass (all relevance to the
signal), equal to the explanation of the twin network whose gates are frozen to the values
they take on that input; the gate branch stays out of neuron graphs."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from lrpath_onnx import Analyzer
from lrpath_onnx.errors import UnsupportedOpError
from lrpath_onnx.graph.layers import GateLayer
from lrpath_onnx.paths.neurons import graph_layers
from tests import models

X_SHAPE = (1, 3, 8, 7)


def _se_net(rng, squash="Sigmoid", gate_first=False, frozen=None):
    """conv1 → ReLU → ×gate(GAP → conv → ReLU → conv → squash) → conv2 → GAP → flatten → dense.

    With ``frozen`` (the gate's values), the gate branch is replaced by that constant."""
    n = helper.make_node
    inits = {"W1": rng.standard_normal((6, 3, 3, 3)).astype(np.float32), "B1": rng.standard_normal(6).astype(np.float32),
             "Wse1": rng.standard_normal((2, 6, 1, 1)).astype(np.float32), "Bse1": rng.standard_normal(2).astype(np.float32),
             "Wse2": rng.standard_normal((6, 2, 1, 1)).astype(np.float32), "Bse2": rng.standard_normal(6).astype(np.float32),
             "W2": rng.standard_normal((5, 6, 3, 3)).astype(np.float32), "B2": rng.standard_normal(5).astype(np.float32),
             "Wd": rng.standard_normal((5, 4)).astype(np.float32), "Bd": rng.standard_normal(4).astype(np.float32)}
    nodes = [n("Conv", ["X", "W1", "B1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1] * 4),
             n("Relu", ["c1"], ["r1"], name="relu1")]
    if frozen is None:
        nodes += [n("GlobalAveragePool", ["r1"], ["p"], name="se/pool"),
                  n("Conv", ["p", "Wse1", "Bse1"], ["s1"], name="se/reduce", kernel_shape=[1, 1]),
                  n("Relu", ["s1"], ["s2"], name="se/relu"),
                  n("Conv", ["s2", "Wse2", "Bse2"], ["s3"], name="se/expand", kernel_shape=[1, 1]),
                  n(squash, ["s3"], ["g"], name="se/squash")]
    else:
        inits["g"] = np.asarray(frozen, np.float32)
    ins = ["g", "r1"] if gate_first else ["r1", "g"]
    nodes += [n("Mul", ins, ["m"], name="se/scale"),
              n("Conv", ["m", "W2", "B2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1] * 4),
              n("Relu", ["c2"], ["r2"], name="relu2"),
              n("GlobalAveragePool", ["r2"], ["q"], name="pool"),
              n("Flatten", ["q"], ["f"], name="flatten"),
              n("Gemm", ["f", "Wd", "Bd"], ["Y"], name="fc")]
    return models.make_model(nodes, [models.vi("X", ["N", *X_SHAPE[1:]])], [models.vi("Y", None)], inits)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("squash", ["Sigmoid", "HardSigmoid"])
@pytest.mark.parametrize("gate_first", [False, True])
@pytest.mark.parametrize("preset", ["epsilon-gamma-box", "conserving", "epsilon-plus"])
def test_gated_net_equals_its_frozen_twin(tmp_path, seed, squash, gate_first, preset):
    x = np.random.default_rng(seed + 100).standard_normal(X_SHAPE).astype(np.float32)
    gated = Analyzer(models.save(_se_net(np.random.default_rng(seed), squash, gate_first), tmp_path / "g.onnx"),
                     preset=preset)
    gate = gated.graph.find("se/scale")
    assert isinstance(gate, GateLayer) and gate.inputs == ["r1", "g"]
    gated.request("g")
    exp = gated.explain(x, keep_forward=True)
    frozen = Analyzer(models.save(_se_net(np.random.default_rng(seed), squash, gate_first,
                                          frozen=exp.forward["g"]), tmp_path / "f.onnx"), preset=preset)
    assert not any(isinstance(l, GateLayer) for l in frozen.graph.layers)
    twin = frozen.explain(x)
    np.testing.assert_allclose(twin.logits, exp.logits, rtol=1e-5, atol=1e-6)
    assert twin.targets == exp.targets
    scale = np.abs(twin.relevance).max()
    np.testing.assert_allclose(exp.relevance, twin.relevance, rtol=1e-4, atol=1e-5 * scale)


def test_gate_branch_gets_no_relevance_and_stays_out_of_neuron_graphs(tmp_path):
    an = Analyzer(models.save(_se_net(np.random.default_rng(0)), tmp_path / "g.onnx"), preset="epsilon-gamma-box")
    x = np.random.default_rng(1).standard_normal(X_SHAPE).astype(np.float32)
    exp = an.explain(x, keep=["*"])
    assert "se/reduce" not in exp.kept and "se/expand" not in exp.kept  # relevance never reaches the branch
    np.testing.assert_array_equal(exp.kept["se/scale"], exp.kept["relu1"])  # all of it to the signal
    assert [l.name for l in graph_layers(an)] == ["conv1", "conv2", "fc"]


def test_auto_preset_names_the_gate(tmp_path):
    an = Analyzer(models.save(_se_net(np.random.default_rng(0)), tmp_path / "g.onnx"))
    assert an.plan().applied == "conserving" and "gate" in an.plan().reason
    assert an.plan().rule_for(an.graph.find("se/scale")).name == "gate"


def test_product_of_two_unsquashed_tensors_is_refused(tmp_path):
    n = helper.make_node
    rng = np.random.default_rng(0)
    nodes = [n("Conv", ["X", "W1"], ["a"], name="c1", kernel_shape=[1, 1]),
             n("Conv", ["X", "W2"], ["b"], name="c2", kernel_shape=[1, 1]),
             n("Mul", ["a", "b"], ["Y"], name="bilinear")]
    model = models.make_model(nodes, [models.vi("X", ["N", 3, 4, 4])], [models.vi("Y", None)],
                              {"W1": rng.standard_normal((2, 3, 1, 1)).astype(np.float32),
                               "W2": rng.standard_normal((2, 3, 1, 1)).astype(np.float32)})
    with pytest.raises(UnsupportedOpError, match="Mul at node 'bilinear'.*neither an activation of one tensor nor a gate"):
        Analyzer(models.save(model, tmp_path / "b.onnx"))
