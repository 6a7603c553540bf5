"""Behind a ReLU the γ rule's negative-output group has nothing to explain (``backward.vanishing``).

Leaving it out is only allowed where the relevance is exactly 0 wherever the ReLU is off: the
result must be the same to the last bit as computing the group, for every preset, and the
layers where that does not hold (a bias-free rule's w² fallback above, a flat rule above,
relevance placed on the ReLU's output from outside) must keep it.
"""

from __future__ import annotations

import numpy as np
import pytest
from lrpath_onnx.models import registry

from lrpath_onnx import Analyzer
from lrpath_onnx.backward import propagate as propagate_module
from lrpath_onnx.backward.vanishing import quiet_negatives
from lrpath_onnx.plan.presets import PRESETS
from tests import models
from tests.test_compile import DIGITS


def _without_skipping(monkeypatch):
    monkeypatch.setattr(propagate_module, "quiet_negatives", lambda *a: frozenset())


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_leaving_the_group_out_changes_nothing(preset, monkeypatch):
    an = Analyzer(registry.get("mnist-vgg").path(), preset=preset, low=0.0, high=1.0)
    quiet = quiet_negatives(an.graph, an.plan(), an.graph.output)
    fast = an.explain(DIGITS).relevance
    _without_skipping(monkeypatch)  # a new analyzer's session then fetches all that every step reads
    full = Analyzer(registry.get("mnist-vgg").path(), preset=preset, low=0.0, high=1.0).explain(DIGITS).relevance
    np.testing.assert_array_equal(fast, full)
    gammas = {l.name for l in an.plan().uses("gamma")}
    if preset in ("epsilon-gamma-box", "paper"):  # every γ conv behind a ReLU is left its positive group
        assert gammas and gammas <= quiet
    if preset == "conserving":  # bias-free rules pass zero-denominator outputs on by w², to every input
        assert not quiet


def test_a_flat_rule_above_or_relevance_from_outside_keeps_the_group(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    path = models.save(models.small_cnn(rng)[0], tmp_path / "m.onnx")
    an = Analyzer(path, preset="epsilon-gamma-box", low=-1.0, high=1.0, rules=["conv1=gamma"])
    assert {"conv1", "conv2", "fc1"} <= quiet_negatives(an.graph, an.plan(), an.graph.output)
    flat = Analyzer(path, preset="epsilon-gamma-box", low=-1.0, high=1.0, rules=["conv1=gamma", "conv2=flat"])
    assert "conv1" not in quiet_negatives(flat.graph, flat.plan(), flat.graph.output)
    assert "conv1" not in quiet_negatives(an.graph, an.plan(), "r1")
    # relevance placed on the ReLU's output everywhere (where it is 0 too) goes on through both groups
    x = rng.uniform(-1, 1, (2, 3, 12, 12)).astype(np.float32)
    r = rng.normal(0, 1, (2, 6, 12, 12))
    got = an.relevance_from(x, "r1", r, dtype=np.float64).relevance
    _without_skipping(monkeypatch)
    np.testing.assert_array_equal(got, an.relevance_from(x, "r1", r, dtype=np.float64).relevance)


def test_compiled_pass_leaves_the_group_out_too():
    """The compiled graph cannot look at values: without the plan's knowledge it would write each
    γ layer's negative group (a modified forward and a transposed product) and add zeros."""
    from lrpath_onnx.compile.model import compile_model

    an = Analyzer(registry.get("mnist-vgg").path(), preset="epsilon-gamma-box", low=0.0, high=1.0)
    proto = compile_model(an)
    convs = [n for n in proto.graph.node if n.op_type in ("Conv", "ConvTranspose") and n.name.startswith("lrp/")]
    gammas = [l.name for l in an.plan().uses("gamma") if l.op == "Conv"]
    assert len(gammas) == 3 and len(convs) == 3 + 2 * len(gammas)  # z^B's three terms, γ's forward and transpose


def _fetching_every_sign(monkeypatch):
    """The session as before: γ's sign fetched from the ReLU after every layer that needs one."""
    from lrpath_onnx.ops.linear import LinearHandler

    monkeypatch.setattr(LinearHandler, "needs_when_quiet", LinearHandler.needs)


@pytest.mark.parametrize("preset", ["epsilon-gamma-box", "paper"])
def test_quiet_layers_leave_their_relus_unfetched_and_unchanged(preset, monkeypatch):
    """A γ conv whose relevance vanishes behind its ReLU reads no sign, so the ReLU's output
    is fetched only where some step reads it: before a max pool, only to derive the switches,
    then dropped. The relevance stays the same to the last bit, from the logits, and from
    relevance placed on the ReLU's output itself, where the layer is not quiet (the session
    then fetches that output, as the start)."""
    path = registry.get("mnist-vgg").path()
    an = Analyzer(path, preset=preset, low=0.0, high=1.0)
    pool_input = an.graph.find("features.4").inputs[0]
    assert an.graph.find("features.2").sign_tensor == pool_input
    assert "features.2" in quiet_negatives(an.graph, an.plan(), an.graph.output)
    assert pool_input not in an.requests()
    assert pool_input not in an.forward(DIGITS)
    fast = an.explain(DIGITS)
    rng = np.random.default_rng(3)
    r = rng.normal(0, 1, an.forward(DIGITS[:2])[an.graph.find("features.4").output].shape)
    inner = an.relevance_from(DIGITS[:2], pool_input, np.repeat(np.repeat(r, 2, 2), 2, 3)).relevance

    _fetching_every_sign(monkeypatch)
    full = Analyzer(path, preset=preset, low=0.0, high=1.0)
    assert pool_input in full.requests()
    want = full.explain(DIGITS)
    np.testing.assert_array_equal(fast.relevance, want.relevance)
    np.testing.assert_array_equal(fast.logits, want.logits)
    np.testing.assert_array_equal(
        inner, full.relevance_from(DIGITS[:2], pool_input, np.repeat(np.repeat(r, 2, 2), 2, 3)).relevance)


@pytest.mark.parametrize("cap", [None, 6.0])
def test_epsilon_divides_by_the_relu_only_where_it_is_the_layer_output(cap, tmp_path):
    """LRP-ε behind a quiet ReLU divides by the ReLU's output (equal to z wherever relevance
    arrives), not behind ReLU6, whose output is min(z, 6): there z is still fetched. Both
    equal the float64 pass, which recomputes z."""
    from onnx import helper

    rng = np.random.default_rng(0)
    w = {"W1": rng.normal(0, 3, (8, 16)), "b1": rng.normal(0, 1, 16),
         "W2": rng.normal(0, 1, (16, 4)), "b2": rng.normal(0, 1, 4), "lo": np.float32(0), "hi": np.float32(6)}
    act = (helper.make_node("Relu", ["h"], ["a"], name="act") if cap is None
           else helper.make_node("Clip", ["h", "lo", "hi"], ["a"], name="act"))
    nodes = [helper.make_node("Gemm", ["X", "W1", "b1"], ["h"], name="fc1"), act,
             helper.make_node("Gemm", ["a", "W2", "b2"], ["Y"], name="fc2")]
    m = models.make_model(nodes, [models.vi("X", ["N", 8])], [models.vi("Y", None)],
                          {k: np.asarray(v, np.float32) for k, v in w.items()})
    path = models.save(m, tmp_path / "m.onnx")
    an = Analyzer(path, preset="epsilon-plus")
    assert "fc1" in quiet_negatives(an.graph, an.plan(), an.graph.output)
    assert ("h" in an.requests()) == (cap is not None)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    got = an.explain(x, target=0)
    assert cap is None or (an.forward(x)["h"] > cap).any()  # ReLU6 caps some relevant outputs
    start = got.logits * (np.arange(4) == 0)
    want = an.relevance_from(x, "Y", start, dtype=np.float64).relevance
    np.testing.assert_allclose(got.relevance, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
