"""A float16 model is analysed in float32: the same explanation as the float32 model it was
converted from, up to float16's rounding of the weights; the plain forwards beside the
analyzer feed it float16 as a user's session would."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lrpath_onnx import Analyzer
from lrpath_onnx.graph.loader import load_model
from tests import models


def _half(model: onnx.ModelProto, cast_inside: bool) -> onnx.ModelProto:
    """``model`` as a float16 converter leaves it: float16 weights and declared types; with
    ``cast_inside``, float32 input and output with casts to and from float16 around the graph
    (onnxconverter-common's ``keep_io_types``)."""
    half = onnx.ModelProto()
    half.CopyFrom(model)
    g = half.graph
    for t in g.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    if not cast_inside:
        for v in (*g.input, *g.output):
            v.type.tensor_type.elem_type = TensorProto.FLOAT16
        return half
    x, y = g.input[0].name, g.output[0].name
    for node in g.node:
        node.input[:] = [f"{x}_h" if i == x else i for i in node.input]
        node.output[:] = [f"{y}_h" if o == y else o for o in node.output]
    g.node.insert(0, helper.make_node("Cast", [x], [f"{x}_h"], name="to_half", to=TensorProto.FLOAT16))
    g.node.append(helper.make_node("Cast", [f"{y}_h"], [y], name="to_float", to=TensorProto.FLOAT))
    return half


@pytest.mark.parametrize("cast_inside", [False, True], ids=["half-io", "float-io"])
@pytest.mark.parametrize("seed", [0, 1])
def test_a_float16_model_explains_as_its_float32_original(tmp_path, seed, cast_inside):
    rng = np.random.default_rng(seed)
    model, _ = models.small_cnn(rng, bn=True)
    full = Analyzer(models.save(model, tmp_path / "full.onnx"))
    path = models.save(_half(model, cast_inside), tmp_path / "half.onnx")
    loaded = load_model(path)
    assert loaded.widened
    assert all(a.dtype != np.float16 for a in loaded.initializers.values())
    half = Analyzer(path)
    x = rng.random((3, 3, 12, 12)).astype(np.float32)
    got, want = half.explain(x), full.explain(x)
    assert got.targets == want.targets
    assert got.relevance.dtype == np.float32
    np.testing.assert_allclose(got.logits, want.logits, rtol=2e-2, atol=2e-2 * np.abs(want.logits).max())
    for i in range(3):
        err = np.linalg.norm(got.relevance[i] - want.relevance[i]) / np.linalg.norm(want.relevance[i])
        assert err < 2e-2, err
        assert got.conservation(i)["ratio"] == pytest.approx(want.conservation(i)["ratio"], rel=2e-2)


def test_plain_forwards_feed_a_float16_model_float16(tmp_path):
    """evaluate's perturbation forward and bench's baseline script run the file as it is (in
    float16), from float32 inputs, and hand back float32 logits (before: evaluate ended in
    an internal error, exit 3)."""
    from lrpath_onnx.cli.evaluate_cmd import plain_forward
    from lrpath_onnx.cli.plain_forward import _runner, session

    rng = np.random.default_rng(2)
    model, _ = models.small_cnn(rng)
    full = Analyzer(models.save(model, tmp_path / "full.onnx"))
    path = models.save(_half(model, False), tmp_path / "half.onnx")
    x = rng.random((2, 3, 12, 12)).astype(np.float32)
    want = full.forward(x)[full.graph.output]
    for got in (plain_forward(path, "cpu", None)(x), _runner(session(str(path), "cpu"))(x).astype(np.float32)):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2 * np.abs(want).max())


def test_plan_says_a_float16_model_is_analysed_in_float32(tmp_path):
    from tests.test_cli import lrpath

    model, _ = models.small_cnn(np.random.default_rng(3))
    res = lrpath("plan", models.save(_half(model, False), tmp_path / "half.onnx"))
    assert res.returncode == 0, res.stderr
    assert "(opset 17; float16, analysed in float32)" in res.stdout.splitlines()[0]
    res = lrpath("plan", models.save(model, tmp_path / "full.onnx"))
    assert "analysed in float32" not in res.stdout
