"""Pad's copying modes (reflect, edge, wrap; a Conv2d with ``padding_mode="reflect"``): each
copy's relevance goes back to the element it copies.

In a network without biases or non-linearities LRP-0 is exact: an input's relevance is
x_i · ∂y_t/∂x_i, and the map's Jacobian row is read off onnxruntime on the unit inputs."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

from lrpath_onnx import Analyzer
from lrpath_onnx.backward.bounds import box_bounds
from lrpath_onnx.compile.check import run_compiled
from lrpath_onnx.compile.model import compile_model, save
from lrpath_onnx.graph.receptive import receptive_box
from tests import models
from tests.test_receptive import brute_box


def padded_linear_net(rng, shape, modes, bias=False):
    """X → Pad(modes[0]) → Conv 3×3 → Pad(modes[1]) → Conv 2×2 stride 2 → Pad(modes[2]) on
    the width → Conv 1×3 → GlobalAveragePool → Flatten → Gemm; signed weights."""
    c, nodes, inits, t = shape[0], [], {}, "X"
    pads = {0: [0, 0, 2, 1, 0, 0, 1, 2], 1: [0, 0, 1, 0, 0, 0, 0, 1], 2: [0, 0, 0, 2, 0, 0, 0, 1]}
    convs = [(4, (3, 3), [1, 1]), (5, (2, 2), [2, 2]), (3, (1, 3), [1, 1])]
    for i, (mode, (k, kernel, strides)) in enumerate(zip(modes, convs)):
        inits[f"p{i}"] = np.array(pads[i], np.int64)
        nodes.append(helper.make_node("Pad", [t, f"p{i}"], [f"pad{i}"], name=f"pad{i}", mode=mode))
        inits[f"w{i}"] = rng.standard_normal((k, c, *kernel)).astype(np.float32)
        ins = [f"pad{i}", f"w{i}"]
        if bias:
            inits[f"b{i}"] = rng.standard_normal(k).astype(np.float32) * 0.1
            ins.append(f"b{i}")
        nodes.append(helper.make_node("Conv", ins, [f"conv{i}"], name=f"conv{i}", strides=strides))
        c, t = k, f"conv{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [t], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flat"))
    inits["fc"] = rng.standard_normal((c, 6)).astype(np.float32)
    nodes.append(helper.make_node("Gemm", ["flat", "fc"], ["logits"], name="fc"))
    return models.make_model(nodes, [models.vi("X", ["N", *shape])], [models.vi("logits", ["N", 6])], inits, opset=19)


def jacobian_row(path, shape, target):
    """∂y_target/∂x of a linear map without biases: its outputs on the unit inputs."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    n = int(np.prod(shape))
    eye = np.eye(n, dtype=np.float32).reshape((n, *shape))
    return sess.run(None, {"X": eye})[0][:, target].reshape(shape).astype(np.float64)


MODES = [("reflect", "edge", "wrap"), ("edge", "wrap", "reflect"), ("wrap", "reflect", "constant")]


@pytest.mark.parametrize("modes", MODES, ids="-".join)
@pytest.mark.parametrize("seed", [0, 1])
def test_copying_pads_send_each_copy_s_relevance_to_what_it_copies(tmp_path, modes, seed):
    rng = np.random.default_rng(seed)
    shape = (3, 9, 7)
    path = models.save(padded_linear_net(rng, shape, modes), tmp_path / "pads.onnx")
    an = Analyzer(path, rules=["*=zero"])
    assert [l.mode for l in an.graph.layers if l.op == "Pad"] == [m for m in modes if m != "constant"]
    x = rng.standard_normal((2, *shape)).astype(np.float32)  # signed inputs
    exp = an.explain(x, target=4)
    for i in range(2):
        want = x[i].astype(np.float64) * jacobian_row(path, shape, 4)
        np.testing.assert_allclose(exp.relevance[i], want, atol=2e-5 * np.abs(want).max())
        assert exp.relevance[i].sum() == pytest.approx(float(exp.logits[i, 4]), rel=1e-4)  # conserved
    save(compile_model(an), tmp_path / "pads.lrp.onnx")
    (compiled,) = run_compiled(tmp_path / "pads.lrp.onnx", an.graph.input, x, 4)
    np.testing.assert_allclose(compiled, exp.relevance, atol=1e-5 * np.abs(exp.relevance).max())


def test_a_reflect_padded_first_conv_keeps_z_b_and_conserves_with_biases(tmp_path):
    """With biases and the input box rule the reflect pad's copies still add up: the first
    conv's z^B relevance, pad included, is what reaches the input."""
    rng = np.random.default_rng(3)
    shape = (3, 11, 8)
    path = models.save(padded_linear_net(rng, shape, ("reflect", "edge", "reflect"), bias=True), tmp_path / "b.onnx")
    an = Analyzer(path, preset="epsilon-gamma-box", low=-1.0, high=1.0)
    assert [l.name for l in an.plan().uses("zbox")] == ["conv0"]
    x = rng.uniform(-1, 1, (1, *shape)).astype(np.float32)
    exp = an.explain(x, keep=["conv0"])
    below = exp.kept["conv0"]  # relevance at the first conv's output
    assert exp.relevance.sum() == pytest.approx(float(below.sum()), rel=1e-4)
    # z^B's bounds reach the conv through the pad as the pixels do: reflected, per position
    low = np.linspace(-1.0, -0.5, int(np.prod(shape)), dtype=np.float32).reshape(1, *shape)
    padded = an.graph.find("conv0").inputs[0]
    (lo, hi), = box_bounds(an.graph, an.plan(), low, -low, (1, *shape), {padded: (1, 3, 14, 11)}).values()
    np.testing.assert_array_equal(lo, np.pad(low, [(0, 0), (0, 0), (2, 1), (1, 2)], mode="reflect"))
    np.testing.assert_array_equal(hi, -lo)


@pytest.mark.parametrize("mode", ["reflect", "edge", "wrap"])
def test_receptive_fields_through_copying_pads_match_brute_force(tmp_path, mode):
    rng = np.random.default_rng(7)
    shape = (2, 8, 9)
    model = padded_linear_net(rng, shape, (mode, mode, "constant"))
    for init in model.graph.initializer:  # positive weights: every unit is monotone in each input
        if init.name.startswith(("w", "fc")):
            arr = np.abs(np.frombuffer(init.raw_data, np.float32)) + 0.1
            init.raw_data = arr.astype(np.float32).tobytes()
    path = models.save(model, tmp_path / "rf.onnx")
    an = Analyzer(path, low=0.0, high=1.0)
    x = rng.uniform(0.1, 1.0, shape).astype(np.float32)
    layer = "conv1"
    out_shape = an.graph.shapes[layer][1:]
    sess_path = tmp_path / "upto.onnx"
    cut = models.make_model([n for n in model.graph.node if n.name in ("pad0", "conv0", "pad1", "conv1")],
                            [models.vi("X", ["N", *shape])], [models.vi(layer, None)],
                            {i.name: np.frombuffer(i.raw_data, np.float32 if i.data_type == 1 else np.int64)
                             .reshape(tuple(i.dims)) for i in model.graph.initializer
                             if i.name[0] in "pw" and i.name[1] in "01"}, opset=19)
    models.save(cut, sess_path)
    for index in [(0, 0, 0), (4, out_shape[1] - 1, out_shape[2] - 1), (2, 1, out_shape[2] // 2)]:
        assert receptive_box(an.graph, layer, index) == brute_box(sess_path, x, index), index


def test_a_pad_with_an_unknown_mode_or_a_non_zero_constant_is_refused_by_name(tmp_path):
    from lrpath_onnx.errors import UnsupportedOpError

    rng = np.random.default_rng(0)
    model = padded_linear_net(rng, (3, 6, 6), ("reflect", "edge", "wrap"))
    model.graph.node[0].attribute[0].s = b"mirror"
    path = models.save(model, tmp_path / "bad.onnx")
    with pytest.raises(UnsupportedOpError, match="Pad mode 'mirror'"):
        Analyzer(path)
