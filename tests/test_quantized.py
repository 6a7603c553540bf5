"""QDQ-quantized models: integer weights behind DequantizeLinear fold to float constants, and
each activation's QuantizeLinear–DequantizeLinear pair is one element-wise function that
relevance crosses unchanged, while the layers' rules read the quantized values the model
computed with. Float64 references spell the rounding and the rules out."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from lrpath_onnx import Analyzer
from lrpath_onnx.graph.constants import fold_constants
from lrpath_onnx.graph.layers import ActivationLayer
from tests import models
from tests import reference as ref


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
@pytest.mark.parametrize("axis", [None, 0, 1])
def test_dequantized_weights_fold_per_tensor_and_per_channel(dtype, axis):
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype)
    q = rng.integers(info.min, info.max + 1, (4, 3, 3, 3)).astype(dtype)
    n = 1 if axis is None else q.shape[axis]
    scale = rng.uniform(0.001, 0.1, n).astype(np.float32).reshape(() if axis is None else (n,))
    zero = rng.integers(info.min // 2, info.max // 2, n).astype(dtype).reshape(scale.shape)
    attrs = {} if axis is None else {"axis": axis}
    node = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["w"], **attrs)
    graph = helper.make_graph([node], "g", [], [])
    got = fold_constants(graph, {"q": q, "s": scale, "z": zero}, 17)["w"]
    shape = [1] * 4
    if axis is not None:
        shape[axis] = n
    want = (q.astype(np.float64) - zero.reshape(shape).astype(np.float64)) * scale.reshape(shape).astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def _qdq(src: str, name: str, scale: float, zero: int, dtype, inits: dict) -> list:
    inits[f"{name}_s"] = np.array(scale, np.float32)
    inits[f"{name}_z"] = np.array(zero, dtype)
    return [helper.make_node("QuantizeLinear", [src, f"{name}_s", f"{name}_z"], [f"{name}_q"], name=f"{name}_quant"),
            helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [name], name=f"{name}_dq")]


def qdq_net(rng, act_dtype=np.uint8):
    """X → QDQ → Conv(int8 weights, per channel) → Relu → QDQ → Conv → Relu → QDQ → GAP → Gemm →
    QDQ (the output's rounding); returns the model and the float weights as dequantized."""
    inits, nodes = {}, []
    w1q = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    w1s = rng.uniform(0.002, 0.01, 4).astype(np.float32)
    w2q = rng.integers(-127, 128, (5, 4, 3, 3)).astype(np.int8)
    w2s = np.float32(0.004)
    w3 = rng.standard_normal((3, 5)).astype(np.float32)
    inits.update(w1q=w1q, w1s=w1s, w1z=np.zeros(4, np.int8), w2q=w2q, w2s=np.array(w2s), w2z=np.array(0, np.int8),
                 b1=(0.05 * rng.standard_normal(4)).astype(np.float32), w3=w3)
    z = 0 if act_dtype == np.uint8 else -20
    nodes += _qdq("X", "xq", 1 / 255, z, act_dtype, inits)
    nodes += [helper.make_node("DequantizeLinear", ["w1q", "w1s", "w1z"], ["w1"], name="w1_dq", axis=0),
              helper.make_node("DequantizeLinear", ["w2q", "w2s", "w2z"], ["w2"], name="w2_dq"),
              helper.make_node("Conv", ["xq", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1] * 4),
              helper.make_node("Relu", ["c1"], ["r1"], name="relu1")]
    nodes += _qdq("r1", "a1", 0.02, z, act_dtype, inits)
    nodes += [helper.make_node("Conv", ["a1", "w2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1] * 4),
              helper.make_node("Relu", ["c2"], ["r2"], name="relu2")]
    nodes += _qdq("r2", "a2", 0.02, z, act_dtype, inits)
    nodes += [helper.make_node("GlobalAveragePool", ["a2"], ["g"], name="gap"),
              helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
              helper.make_node("Gemm", ["f", "w3"], ["logits"], name="fc", transB=1)]
    nodes += _qdq("logits", "out", 0.01, 0, np.int8, inits)
    model = models.make_model(nodes, [models.vi("X", ["N", 3, 6, 6])], [models.vi("out", ["N", 3])], inits)
    w1 = w1q.astype(np.float64) * w1s.reshape(4, 1, 1, 1)
    w2 = w2q.astype(np.float64) * float(w2s)
    return model, w1, w2


def _fake_quant(x, scale, zero, lo, hi):
    scale = float(np.float32(scale))  # as the model stores it
    return (np.clip(np.rint(x / scale) + zero, lo, hi) - zero) * scale


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("act_dtype", [np.uint8, np.int8])
def test_a_qdq_net_against_a_float64_reference(tmp_path, seed, act_dtype):
    """ε on every layer, the QDQ pairs passing relevance on: the reference runs the rounding and
    the rules in float64 on explicit matrices; the explained output is the logits before the
    output's own rounding (stripped, as a final Softmax is). (The activations are onnxruntime's
    float32 ones, so the comparison is to float32's resolution through ε's divisions.)"""
    rng = np.random.default_rng(seed)
    model, w1, w2 = qdq_net(rng, act_dtype)
    path = models.save(model, tmp_path / "qdq.onnx")
    an = Analyzer(path, preset="epsilon-plus", rules=["*=epsilon:0.01"])
    g = an.graph
    assert g.output == "logits" and "out_dq" in g.stripped
    quant = [l for l in g.layers if isinstance(l, ActivationLayer) and l.fn == "fakequant"]
    assert [l.output for l in quant] == ["xq", "a1", "a2"]
    x = rng.random((2, 3, 6, 6)).astype(np.float32)
    exp = an.relevance_from(x, "logits", np.eye(3)[[0, 2]] * 1.0, dtype=np.float64, keep=["relu1", "a1_dq"])
    fwd = an.forward(x)  # onnxruntime's rounded activations: a float64 forward may round a tie the other way
    z = 0 if act_dtype == np.uint8 else -20
    lo, hi = (0, 255) if act_dtype == np.uint8 else (-128, 127)
    inits = {t.name: t for t in model.graph.initializer}
    from onnx import numpy_helper
    b1 = numpy_helper.to_array(inits["b1"]).astype(np.float64)
    w3 = numpy_helper.to_array(inits["w3"]).astype(np.float64)
    M1 = ref.conv_matrix(w1, (3, 6, 6), pads=(1, 1, 1, 1))[0]
    M2 = ref.conv_matrix(w2, (4, 6, 6), pads=(1, 1, 1, 1))[0]
    for n, cls in enumerate([0, 2]):
        a0 = _fake_quant(x[n].astype(np.float64).reshape(-1), 1 / 255, z, lo, hi)
        np.testing.assert_allclose(fwd["xq"][n].reshape(-1), a0, rtol=1e-6)
        a1 = fwd["a1"][n].reshape(-1).astype(np.float64)
        np.testing.assert_array_less(np.abs(a1 - _fake_quant(np.maximum(a0 @ M1 + np.repeat(b1, 36), 0), 0.02, z, lo, hi)),
                                     0.0201)  # within one step of the float64 rounding
        a2 = fwd["a2"][n].reshape(-1).astype(np.float64)
        np.testing.assert_allclose(a2, _fake_quant(np.maximum(a1 @ M2, 0), 0.02, z, lo, hi), atol=0.0201)
        gap = a2.reshape(5, 36).mean(1)
        np.testing.assert_allclose(exp.logits[n], gap @ w3.T, rtol=1e-5, atol=1e-5)
        r_out = np.zeros(3)
        r_out[cls] = 1.0
        r_gap = ref.lrp_linear("epsilon", gap, w3.T, None, r_out, eps=0.01)
        r_a2 = ref.lrp_linear("epsilon", a2, np.kron(np.eye(5), np.ones((36, 1)) / 36), None, r_gap, eps=0.01)
        r_a1 = ref.lrp_linear("epsilon", a1, M2, None, r_a2, eps=0.01)
        r_x = ref.lrp_linear("epsilon", a0, M1, np.repeat(b1, 36), r_a1, eps=0.01)
        np.testing.assert_allclose(exp.kept["relu1"][n].reshape(-1), r_a1, rtol=1e-4, atol=1e-6 * np.abs(r_a1).max())
        np.testing.assert_allclose(exp.kept["a1_dq"][n].reshape(-1), r_a1, rtol=1e-4, atol=1e-6 * np.abs(r_a1).max())
        np.testing.assert_allclose(exp.relevance[n].reshape(-1), r_x, rtol=1e-4, atol=1e-6 * np.abs(r_x).max())
    ours = quant[1].handler.forward(quant[1], [np.linspace(-1, 6, 200)])
    np.testing.assert_allclose(ours, _fake_quant(np.linspace(-1, 6, 200), 0.02, z, lo, hi), rtol=1e-12)


def test_a_statically_quantized_cnn_explains_like_its_float_original(tmp_path):
    """onnxruntime's own ``quantize_static`` (QDQ, per-channel weights) of a BN-ReLU CNN: the
    preset is the float model's, every rounding pair is one layer, and the heatmaps follow the
    float model's (quantization moves activations, not the decision's evidence)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    rng = np.random.default_rng(4)
    model, _ = models.small_cnn(rng, bn=True)
    fpath = models.save(model, tmp_path / "float.onnx")
    calib = [{"X": rng.random((1, 3, 12, 12)).astype(np.float32)} for _ in range(16)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            return next(self.it, None)

    qpath = tmp_path / "qdq.onnx"
    quantize_static(str(fpath), str(qpath), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    full, quant = Analyzer(fpath), Analyzer(qpath)
    assert quant.plan().applied == full.plan().applied == "epsilon-gamma-box"
    assert any(isinstance(l, ActivationLayer) and l.fn == "fakequant" for l in quant.graph.layers)
    x = rng.random((4, 3, 12, 12)).astype(np.float32)
    got, want = quant.explain(x), full.explain(x)
    plain = ort.InferenceSession(str(qpath)).run(None, {"X": x})[0]
    np.testing.assert_allclose(got.logits, plain, atol=0.05 * np.abs(plain).max())
    assert got.targets == want.targets
    for i in range(4):
        corr = np.corrcoef(got.relevance[i].ravel(), want.relevance[i].ravel())[0, 1]
        assert corr > 0.95, corr
        assert got.conservation(i)["ratio"] == pytest.approx(want.conservation(i)["ratio"], rel=0.05)
    kept = Analyzer(qpath, preset="conserving").explain(x)
    for i in range(4):  # its rules without biases: the relevance arrives whole, quantization or not
        assert kept.conservation(i)["ratio"] == pytest.approx(1.0, abs=1e-3)
