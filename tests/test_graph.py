"""Graph walking and canonicalisation: folding keeps the function, every op is explained or named."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from lrpath_onnx import Analyzer, InputError, ModelError, UnsupportedOpError
from lrpath_onnx.graph.canonical import build_layer_graph
from lrpath_onnx.graph.loader import load_model
from lrpath_onnx.plan.planner import make_plan
from tests import models
from tests.canonical import canonical_forward

FIXTURES = Path(__file__).parent / "fixtures"
LIGHT = sorted(glob.glob(os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/light/*.onnx")))


def graph_of(path):
    return build_layer_graph(load_model(path))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batchnorm_folding_keeps_logits(tmp_path, seed):
    rng = np.random.default_rng(seed)
    model, _ = models.small_cnn(rng, bn=True)
    path = models.save(model, tmp_path / "bn.onnx")
    an = Analyzer(path)
    conv1 = an.graph.find("conv1")
    assert conv1.nodes == ["conv1", "bn1"] and conv1.output == "bn1"
    assert "BatchNormalization" not in {l.op for l in an.graph}
    x = rng.standard_normal((2, 3, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(canonical_forward(an.graph, x), an.forward(x)["logits"], rtol=1e-5, atol=1e-5)


def test_trailing_softmax_dropout_identity_are_stripped(tmp_path):
    rng = np.random.default_rng(0)
    model, _ = models.small_cnn(rng, softmax=True)
    g = model.graph
    # put an Identity and a Dropout in the middle
    for node in g.node:
        if node.name == "fc1":
            node.output[0] = "d1_raw"
    g.node.insert(7, helper.make_node("Dropout", ["d1_raw"], ["d1_drop"], name="drop"))
    g.node.insert(8, helper.make_node("Identity", ["d1_drop"], ["d1"], name="ident"))
    path = models.save(model, tmp_path / "sm.onnx")
    graph = graph_of(path)
    assert graph.output == "logits" and graph.stripped == ["softmax"]
    assert not {"Dropout", "Identity", "Softmax"} & {l.op for l in graph}
    assert graph.find("relu3").inputs == ["d1_raw"]


def test_all_unsupported_ops_are_named_at_once(tmp_path):
    nodes = [helper.make_node("LRN", ["X"], ["n1"], name="norm1", size=3),
             helper.make_node("Hardmax", ["n1"], ["s"], name="gate"),
             helper.make_node("Relu", ["s"], ["Y"], name="relu")]
    path = models.save(models.make_model(nodes, [models.vi("X", ["N", 3, 4, 4])], [models.vi("Y", None)]),
                       tmp_path / "u.onnx")
    with pytest.raises(UnsupportedOpError) as err:
        graph_of(path)
    assert "LRN at 'norm1'" in str(err.value) and "Hardmax at 'gate'" in str(err.value)
    collected: list = []
    graph = build_layer_graph(load_model(path), collect=collected)
    assert {(e.op_type, e.node) for e in collected} == {("LRN", "norm1"), ("Hardmax", "gate")}
    assert [l.name for l in graph] == ["relu"]


def test_mid_graph_logsoftmax_and_dynamic_mul_are_unsupported(tmp_path):
    """(A Softmax inside the network is attention's, explained by AttnLRP's rule; a LogSoftmax
    there is not explainable.)"""
    nodes = [helper.make_node("LogSoftmax", ["X"], ["s"], name="attn", axis=1),
             helper.make_node("Mul", ["s", "X"], ["Y"], name="gate")]
    path = models.save(models.make_model(nodes, [models.vi("X", ["N", 6])], [models.vi("Y", None)]),
                       tmp_path / "u.onnx")
    with pytest.raises(UnsupportedOpError) as err:
        graph_of(path)
    assert "Mul at 'gate'" in str(err.value) and "LogSoftmax at 'attn'" in str(err.value)


def test_cycle_and_dangling_inputs_are_model_errors(tmp_path):
    nodes = [helper.make_node("Relu", ["X", ], ["a"], name="r1"),
             helper.make_node("Add", ["a", "c"], ["b"], name="add"),
             helper.make_node("Relu", ["b"], ["c"], name="r2")]
    cyc = models.save(models.make_model(nodes, [models.vi("X", ["N", 3])], [models.vi("c", None)]), tmp_path / "c.onnx")
    with pytest.raises(ModelError, match="cycle"):
        graph_of(cyc)
    nodes = [helper.make_node("Add", ["X", "ghost"], ["Y"], name="add")]
    dang = models.save(models.make_model(nodes, [models.vi("X", ["N", 3])], [models.vi("Y", None)]), tmp_path / "d.onnx")
    with pytest.raises(ModelError, match="ghost"):
        graph_of(dang)


def _keras_like(rng):
    """What tf2onnx makes of a Keras CNN: NHWC input scaled in-graph, Transpose, Conv,
    Relu, Transpose back, Reshape, MatMul+Add, BN folded to Mul+Add, Softmax."""
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    wd = rng.standard_normal((6 * 6 * 4, 5)).astype(np.float32)
    inits = {"s255": np.array(1 / 255, np.float32), "mean": np.array([0.4, 0.5, 0.6], np.float32),
             "W": w, "Bc": rng.standard_normal(4).astype(np.float32), "Wd": wd,
             "bd": rng.standard_normal(5).astype(np.float32),
             "bn_s": (1 + 0.2 * rng.standard_normal(5)).astype(np.float32),
             "bn_t": (0.1 * rng.standard_normal(5)).astype(np.float32),
             "shape": np.array([-1, 6 * 6 * 4], np.int64)}
    nodes = [helper.make_node("Mul", ["X", "s255"], ["xs"], name="scale"),
             helper.make_node("Sub", ["xs", "mean"], ["xc"], name="center"),
             helper.make_node("Transpose", ["xc"], ["xt"], name="to_nchw", perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["xt", "W", "Bc"], ["c"], name="conv", kernel_shape=[3, 3], strides=[2, 2],
                              auto_pad="SAME_UPPER"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Transpose", ["r"], ["rt"], name="to_nhwc", perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["rt", "shape"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "Wd"], ["m"], name="dense"),
             helper.make_node("Add", ["m", "bd"], ["d"], name="dense_bias"),
             helper.make_node("Mul", ["d", "bn_s"], ["bm"], name="bn_mul"),
             helper.make_node("Add", ["bm", "bn_t"], ["logits"], name="bn_add"),
             helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1)]
    return models.make_model(nodes, [models.vi("X", ["N", 12, 12, 3])], [models.vi("probs", ["N", 5])], inits, opset=13)


def test_nhwc_tf2onnx_style_graph_is_explained_end_to_end(tmp_path):
    rng = np.random.default_rng(3)
    path = models.save(_keras_like(rng), tmp_path / "keras.onnx")
    an = Analyzer(path, low=0.0, high=255.0)
    dense = an.graph.find("dense")
    assert dense.nodes == ["dense", "dense_bias", "bn_mul", "bn_add"] and dense.output == "logits"
    assert an.graph.find("conv").geometry.pads == (0, 0, 1, 1)  # SAME_UPPER, 12 → 6 with stride 2
    assert [e.rule.name for e in an.plan().entries if e.layer.kind == "linear"] == ["zbox", "epsilon"]
    x = (rng.random((2, 12, 12, 3)) * 255).astype(np.float32)
    np.testing.assert_allclose(canonical_forward(an.graph, x), an.forward(x)["logits"], rtol=1e-4, atol=1e-4)
    exp = an.explain(x)
    assert exp.relevance.shape == x.shape and np.isfinite(exp.relevance).all()
    assert exp.bounds_violation.tolist() == [0.0, 0.0]


def test_zbox_bounds_follow_in_graph_normalisation(tmp_path):
    """The same conv explained behind in-graph scaling (bounds 0..255) and on pre-normalised
    input (bounds carried by hand) gives the same relevance."""
    rng = np.random.default_rng(4)
    full = _keras_like(rng)
    path = models.save(full, tmp_path / "keras.onnx")
    an = Analyzer(path, low=0.0, high=255.0, rules=["*=zero", "conv=zbox"])
    x = (rng.random((1, 12, 12, 3)) * 255).astype(np.float32)
    exp = an.explain(x, target=2)
    # cut the graph after the normalisation: input = xt (NCHW, normalised)
    mean = np.array([0.4, 0.5, 0.6], np.float32).reshape(1, 3, 1, 1)
    onnx.utils.extract_model(str(path), str(tmp_path / "tail.onnx"), ["xt"], ["probs"])
    tail = Analyzer(tmp_path / "tail.onnx", low=0.0 - mean, high=1.0 - mean, rules=["*=zero", "conv=zbox"])
    xt = (x * np.float32(1 / 255)).transpose(0, 3, 1, 2) - mean
    exp2 = tail.explain(xt, target=2)
    np.testing.assert_allclose(exp.relevance.transpose(0, 3, 1, 2), exp2.relevance, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["torch_cnn_bn", "torch_cnn_bn_unfolded", "torch_resnet_block",
                                  "torch_dense_bias_free", "torch_mlp_softmax"])
def test_pytorch_exports_keep_logits_and_explain(name):
    data = np.load(FIXTURES / f"{name}.npz")
    an = Analyzer(FIXTURES / f"{name}.onnx")
    x = data["x"]
    want = data["pre_softmax"] if "pre_softmax" in data else data["logits"]
    np.testing.assert_allclose(canonical_forward(an.graph, x), want, rtol=1e-4, atol=1e-5)
    exp = an.explain(x)
    assert exp.targets == [int(t) for t in data["target"]]
    for i in range(len(x)):
        c = exp.conservation(i)
        assert c["output_relevance"] == pytest.approx(float(want[i, exp.targets[i]]), rel=1e-5)
        assert np.isfinite(c["input_relevance"])
    if name == "torch_cnn_bn_unfolded":
        assert any("BatchNormalization" in n or len(l.nodes) > 1 for l in an.graph for n in l.nodes)
        assert "BatchNormalization" not in {l.op for l in an.graph}
    if name == "torch_mlp_softmax":
        assert an.graph.stripped and an.graph.output != an.model.proto.graph.output[0].name


def test_pytorch_bias_free_lrp0_equals_autograd_gradient_times_input():
    data = np.load(FIXTURES / "torch_dense_bias_free.npz")
    an = Analyzer(FIXTURES / "torch_dense_bias_free.onnx", rules=["*=zero"])
    exp = an.explain(data["x"], target=list(data["target"]))
    gxi = data["grad_x_input"]
    np.testing.assert_allclose(exp.relevance, gxi, rtol=1e-4, atol=1e-5 * np.abs(gxi).max())


def test_flat_everywhere_conserves_through_residual_depthwise_concat():
    an = Analyzer(FIXTURES / "torch_resnet_block.onnx", rules=["*=flat"])
    data = np.load(FIXTURES / "torch_resnet_block.npz")
    exp = an.explain(data["x"])
    for i in range(len(data["x"])):
        assert exp.conservation(i)["ratio"] == pytest.approx(1.0, abs=1e-4)
    ops = {l.op for l in an.graph}
    assert {"Conv", "Add", "Clip", "Concat", "AveragePool", "Gemm"} <= ops


@pytest.mark.parametrize("path", LIGHT, ids=[os.path.basename(p) for p in LIGHT])
def test_onnx_light_models_load_and_plan(path):
    model = load_model(path)
    collected: list = []
    graph = build_layer_graph(model, collect=collected)
    plan = make_plan(graph, "epsilon-gamma-box")
    assert len(plan.entries) == len(graph.layers) > 0
    if any(op in {n.op_type for n in model.proto.graph.node} for op in ("LRN",)):
        assert {e.op_type for e in collected} == {"LRN"}
    else:
        assert collected == []
        assert plan.uses("zbox"), "the first conv gets z^B"


@pytest.mark.parametrize("seed", [0, 1])
def test_affine_after_relu_folds_forward_only_as_a_pure_scale(tmp_path, seed):
    """A scale after a ReLU folds into the next dense/conv, whose input then stays the
    (non-negative) ReLU output; with a shift (Keras' BatchNorm) it stays a pass-through."""
    rng = np.random.default_rng(seed)
    inits = {"W1": rng.standard_normal((6, 5)).astype(np.float32), "s1": (1 + rng.random(5)).astype(np.float32),
             "t1": rng.standard_normal(5).astype(np.float32), "W2": rng.standard_normal((5, 3)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["X", "W1"], ["m1"], name="fc1"),
             helper.make_node("Relu", ["m1"], ["r1"], name="relu1"),
             helper.make_node("Mul", ["r1", "s1"], ["bn_m"], name="bn_mul"),
             helper.make_node("Add", ["bn_m", "t1"], ["bn"], name="bn_add"),
             helper.make_node("MatMul", ["bn", "W2"], ["Y"], name="fc2")]
    path = models.save(models.make_model(nodes, [models.vi("X", ["N", 6])], [models.vi("Y", None)], inits),
                       tmp_path / "fwd.onnx")
    an = Analyzer(path)
    fc2 = an.graph.find("fc2")
    assert fc2.inputs == ["bn"] and not fc2.nonneg_input  # the shift keeps BN apart
    x = rng.standard_normal((4, 6)).astype(np.float32)
    np.testing.assert_allclose(canonical_forward(an.graph, x), an.forward(x)["Y"], rtol=1e-5, atol=1e-5)
    inits["t1"] = np.zeros(5, np.float32)
    path = models.save(models.make_model(nodes, [models.vi("X", ["N", 6])], [models.vi("Y", None)], inits),
                       tmp_path / "fwd0.onnx")
    an = Analyzer(path)
    fc2 = an.graph.find("fc2")
    assert fc2.inputs == ["r1"] and fc2.nodes == ["bn_mul", "bn_add", "fc2"] and fc2.nonneg_input
    np.testing.assert_allclose(canonical_forward(an.graph, x), an.forward(x)["Y"], rtol=1e-5, atol=1e-5)

    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    for pads, shift, folded in (([1, 1, 1, 1], 0.0, True), ([0, 0, 0, 0], 1.0, False)):
        nodes = [helper.make_node("Relu", ["X"], ["r"], name="relu"),
                 helper.make_node("Mul", ["r", "s"], ["m"], name="scale"),
                 helper.make_node("Add", ["m", "t"], ["a"], name="shift"),
                 helper.make_node("Conv", ["a", "W"], ["Y"], name="conv", kernel_shape=[3, 3], pads=pads)]
        inits = {"s": (1 + rng.random((3, 1, 1))).astype(np.float32),
                 "t": (shift * rng.standard_normal((3, 1, 1))).astype(np.float32), "W": w}
        path = models.save(models.make_model(nodes, [models.vi("X", ["N", 3, 6, 6])], [models.vi("Y", None)], inits),
                           tmp_path / f"conv{pads[0]}.onnx")
        an = Analyzer(path)
        assert (an.graph.find("conv").inputs == ["r"]) is folded
        x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
        np.testing.assert_allclose(canonical_forward(an.graph, x), an.forward(x)["Y"], rtol=1e-4, atol=1e-4)


def test_keras_layer_names_work_as_people_type_them(tmp_path):
    """tf2onnx scopes Keras layer ``block1_conv1`` as ``block1_conv1_1``; both names find it, in
    every option that takes a layer, and an alias shared by two layers means neither."""
    rng = np.random.default_rng(0)
    n = helper.make_node
    nodes = [n("Conv", ["X", "W1"], ["a"], name="functional_1/block1_conv1_1/Conv2D", kernel_shape=[3, 3]),
             n("Relu", ["a"], ["b"], name="functional_1/block1_relu_1/Relu"),
             n("Conv", ["b", "W2"], ["c"], name="functional_1/conv_1/Conv2D", kernel_shape=[1, 1]),
             n("Conv", ["c", "W3"], ["d"], name="functional_1/conv_2/Conv2D", kernel_shape=[1, 1])]
    inits = {"W1": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
             "W2": rng.standard_normal((4, 4, 1, 1)).astype(np.float32),
             "W3": rng.standard_normal((2, 4, 1, 1)).astype(np.float32)}
    path = models.save(models.make_model(nodes, [models.vi("X", ["N", 3, 8, 8])], [models.vi("d", None)], inits),
                       tmp_path / "k.onnx")
    an = Analyzer(path, rules=["block1_conv1=epsilon:0.5"])
    assert an.graph.find("block1_conv1") is an.graph.find("block1_conv1_1")
    assert str(an.plan().rule_for(an.graph.find("block1_conv1_1"))) == "epsilon(epsilon=0.5)"
    with pytest.raises(InputError, match="no layer named 'conv'"):
        an.graph.find("conv")  # conv_1 and conv_2 both shorten to it


def test_a_conv_tf2onnx_named_itself_is_found_by_its_keras_layer(tmp_path):
    """tf2onnx names a Conv it fused a BatchNorm into ``Conv__36``; its weight keeps the Keras
    layer's scope, so the layer is ``b1c1_conv_1`` (and ``b1c1_conv``, and still ``Conv__36``); a
    MatMul's weight names it by the scope before the TensorFlow op; a node without a weight
    keeps the name tf2onnx made."""
    rng = np.random.default_rng(1)
    n = helper.make_node
    weight = "model_1/b1c1_conv_1/convolution/merged_input:0"
    dense = "model_1/logits_1/MatMul/ReadVariableOp:0"
    nodes = [n("Conv", ["X", weight, "model_1/b1c1_bn_1/batchnorm/sub:0"], ["Conv__36:0"], name="Conv__36",
               kernel_shape=[3, 3]),
             n("Relu", ["Conv__36:0"], ["b"], name="Relu__7"),
             n("Flatten", ["b"], ["f"], name="Flatten__9"),
             n("MatMul", ["f", dense], ["y"], name="MatMul__12")]
    inits = {weight: rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
             "model_1/b1c1_bn_1/batchnorm/sub:0": rng.standard_normal(4).astype(np.float32),
             dense: rng.standard_normal((4 * 6 * 6, 2)).astype(np.float32)}
    path = models.save(models.make_model(nodes, [models.vi("X", ["N", 3, 8, 8])], [models.vi("y", None)], inits),
                       tmp_path / "k.onnx")
    an = Analyzer(path)
    assert [layer.name for layer in an.graph.layers] == ["b1c1_conv_1", "Relu__7", "Flatten__9", "logits_1"]
    assert an.graph.find("b1c1_conv") is an.graph.find("b1c1_conv_1") is an.graph.layers[0]
    assert an.graph.find("Conv__36") is an.graph.layers[0]  # the name tf2onnx gave it still finds it


def test_cpu_session_lets_go_of_the_serialized_model_and_still_runs(tmp_path):
    """onnxruntime keeps the bytes a session was made from (for a provider fallback the CPU
    never takes); the analyzer's CPU session drops them, and its runs are those of a session
    made from the same model that keeps them."""
    import onnxruntime as ort

    from lrpath_onnx.runtime.session import release_model_bytes

    rng = np.random.default_rng(3)
    model, _ = models.small_cnn(rng)
    an = Analyzer(models.save(model, tmp_path / "cnn.onnx"))
    rt = an.runtime()
    assert rt.provider == "CPUExecutionProvider"
    assert rt.session._model_bytes is None and not rt.session._enable_fallback
    x = rng.standard_normal((2, 3, 12, 12)).astype(np.float32)
    fresh = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert fresh._model_bytes is not None
    want = fresh.run(None, {fresh.get_inputs()[0].name: x})[0]
    release_model_bytes(fresh)
    assert fresh._model_bytes is None
    np.testing.assert_allclose(fresh.run(None, {fresh.get_inputs()[0].name: x})[0], want, rtol=0, atol=0)
    np.testing.assert_allclose(rt.run(x)[an.graph.output], want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


def test_session_outputs_bound_ahead_equal_copied_ones_and_wrong_guesses_rerun(tmp_path):
    """The session writes outputs into buffers sized ahead (static shapes, another batch
    size); every route gives the tensors a copied run gives, and a wrong guess runs again."""
    rng = np.random.default_rng(0)
    model, _ = models.small_cnn(rng)
    an = Analyzer(models.save(model, tmp_path / "cnn.onnx"))
    rt = an.runtime()
    x = rng.standard_normal((3, 3, 12, 12)).astype(np.float32)
    copied = rt._finish(x, rt._run(x, None, {}))  # every output copied out of onnxruntime
    assert rt.derived and set(rt.derived) <= set(copied)  # the MaxPool's switches, computed after the run
    floats = {n for n in rt.output_names if n not in rt._int_outputs}
    assert len(floats) >= 4 and set(rt._foresee(x.shape)) == floats
    ahead = rt.run(x)  # first run: static shapes
    again = rt.run(x)  # learnt shapes
    rt._shapes.clear()
    rt.run(x[:1])
    other = rt.run(x)  # scaled from the batch-1 run
    rt._shapes.clear()
    rt._foresee = lambda shape: {n: ((shape[0] + 1,) + s[1:], dt) for n, (s, dt) in
                                 {k: (v.shape, v.dtype) for k, v in copied.items()}.items()}
    wrong = rt.run(x)
    for outs in (ahead, again, other, wrong):
        assert set(outs) == set(copied)
        for k in copied:
            np.testing.assert_array_equal(outs[k], copied[k])
            assert outs[k].dtype == copied[k].dtype


@pytest.mark.parametrize("seed", [0, 1])
def test_a_batch_run_in_slices_gives_the_tensors_of_one_run(tmp_path, monkeypatch, seed):
    """A batch whose fetched tensors are large runs through onnxruntime a few samples at a time,
    each run writing into its slice of the batch's arrays: the tensors are those of one run of
    the whole batch (the MaxPool switches still flat over the whole batch, the pool's input
    fetched only to derive them not returned), and so is the relevance. Not where large dense
    weights, read again by every run, outweigh a sample's tensors."""
    import lrpath_onnx.runtime.session as S

    rng = np.random.default_rng(seed)
    model, _ = models.small_cnn(rng)
    an = Analyzer(models.save(model, tmp_path / "cnn.onnx"), forward_engine="onnxruntime")
    rt = an.runtime()
    x = rng.standard_normal((5, 3, 12, 12)).astype(np.float32)
    whole = rt.run(x)  # a small model: one run
    want = an.explain(x).relevance
    planned = rt._shapes[x.shape]
    assert rt._dropped and rt.derived
    per_sample = sum(int(np.prod(s[1:])) * np.dtype(dt).itemsize for s, dt in planned.values())
    monkeypatch.setattr(S, "SLICE_BYTES", 2 * per_sample + 1)  # slices of 2
    assert rt.slice_size(planned) == 2
    runs = []
    execute = rt._execute
    monkeypatch.setattr(rt, "_execute", lambda xs, extra, arrays: runs.append(len(xs)) or execute(xs, extra, arrays))
    sliced = rt.run(x)
    assert runs == [2, 2, 1]
    assert set(sliced) == set(whole) and not set(rt._dropped) & set(sliced)
    for k, v in whole.items():
        assert sliced[k].shape == v.shape and sliced[k].dtype == v.dtype
        if v.dtype.kind == "i":
            np.testing.assert_array_equal(sliced[k], v)
        else:  # a Gemm of 2 rows may round differently from one of 5
            np.testing.assert_allclose(sliced[k], v, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(an.explain(x).relevance, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
    assert runs[3:] == [2, 2, 1]  # explain ran in slices too
    assert rt.run(x[:2]).keys() == whole.keys() and runs[-1] == 2  # a batch within one slice: one run
    rt._streamed_bytes = per_sample  # dense weights as large as a sample's tensors: each run would reread them
    rt.run(x)
    assert runs[-1] == 5


def test_a_model_with_its_own_pool_indices_runs_whole(tmp_path, monkeypatch):
    """A MaxPool whose ``Indices`` the model itself outputs is numbered by onnxruntime from the
    first sample of each run: such a batch is not run in slices (in slices of 2, samples 2-4
    lost all their relevance to samples 0-1), and its relevance is that of a whole run."""
    import lrpath_onnx.runtime.session as S

    rng = np.random.default_rng(0)
    model, _ = models.small_cnn(rng)
    next(n for n in model.graph.node if n.op_type == "MaxPool").output.append("idx")
    an = Analyzer(models.save(model, tmp_path / "cnn.onnx"))
    rt = an.runtime()
    x = rng.standard_normal((5, 3, 12, 12)).astype(np.float32)
    want = an.explain(x).relevance
    whole = rt.run(x)
    assert rt._int_outputs & set(rt.output_names)
    monkeypatch.setattr(S, "SLICE_BYTES", 1)
    assert not rt._sliceable(x.shape, rt._shapes[x.shape], None)
    for k, v in rt.run(x).items():
        np.testing.assert_array_equal(v, whole[k])
    np.testing.assert_array_equal(an.explain(x).relevance, want)
    assert (np.abs(want.reshape(5, -1)).sum(1) > 0).all()


def test_a_batch_that_onnxruntime_refuses_in_slices_runs_whole(tmp_path, monkeypatch):
    """Where a run in slices fails (a guessed output shape onnxruntime refuses), the batch runs
    whole with its outputs copied, and that input shape is not sliced again."""
    import lrpath_onnx.runtime.session as S

    rng = np.random.default_rng(0)
    model, _ = models.small_cnn(rng)
    an = Analyzer(models.save(model, tmp_path / "cnn.onnx"))
    rt = an.runtime()
    x = rng.standard_normal((4, 3, 12, 12)).astype(np.float32)
    want = rt.run(x)
    rt._shapes.clear()
    wrong = {k: ((4, v.shape[1] + 1) + v.shape[2:], v.dtype) for k, v in rt._run(x, None, {}).items()}
    monkeypatch.setattr(rt, "_foresee", lambda shape: wrong)
    monkeypatch.setattr(S, "SLICE_BYTES", 1)
    got = rt.run(x)
    assert x.shape in rt._unsliced and not rt._sliceable(x.shape, rt._shapes[x.shape], None)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    for k, v in rt.run(x).items():
        np.testing.assert_array_equal(v, want[k])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_switches_follow_a_rewired_pool_input(tmp_path, seed):
    """Where a node is inserted before the MaxPool (the path-fidelity check's neuron masks), the
    switches derived after the run are those of what the pool now reads, as onnxruntime's
    ``Indices`` of that input are, not of the tensor before the insertion."""
    from onnx import TensorProto

    from lrpath_onnx.kernels.pooling import max_switches
    from lrpath_onnx.ops.emit import mask_node
    from lrpath_onnx.runtime.session import ActivationRuntime

    rng = np.random.default_rng(seed)
    model, _ = models.small_cnn(rng)
    an = Analyzer(models.save(model, tmp_path / "cnn.onnx"))
    pool = next(l for l in an.graph.layers if l.op == "MaxPool")
    src, C = pool.inputs[0], an.graph.shapes[pool.inputs[0]][1]
    masked = f"{src}::masked"
    rt = ActivationRuntime(an.model, an.graph, {pool.indices, src}, "cpu", None, [mask_node(src, "m", masked)], [],
                           [helper.make_tensor_value_info("m", TensorProto.FLOAT, [1, C, 1, 1])], {src: masked})
    x = rng.standard_normal((2, 3, 12, 12)).astype(np.float32)
    m = (rng.random(C) < 0.5).astype(np.float32).reshape(1, C, 1, 1)
    m[0, 0] = 0  # at least one channel masked: all its windows tie at zero
    outs = rt.run(x, {"m": m})
    w = pool.window
    k, g = w.kernel, w.geometry
    _, want = models.maxpool_indices(outs[src] * m, k, g.strides, g.pads, g.dilations, int(w.ceil_mode))
    np.testing.assert_array_equal(outs[pool.indices], want)
    unmasked = max_switches(outs[src], k, g.strides, g.pads, g.dilations, want.shape[2:])
    assert not np.array_equal(unmasked, want)  # the masks moved some switches


def test_explanations_time_each_layer_step(tmp_path):
    """``layer_seconds`` holds every step the backward pass took, and a batch explained in parts
    (a fixed-batch model whose batch axis moves) sums its parts' times per layer."""
    rng = np.random.default_rng(0)
    model, _ = models.small_cnn(rng)
    an = Analyzer(models.save(model, tmp_path / "cnn.onnx"))
    x = rng.standard_normal((3, 3, 12, 12)).astype(np.float32)
    an.explain(x)  # compiled and cached: the next passes' steps are the pass
    exp = an.explain(x)
    assert list(exp.layer_seconds) == [layer.name for layer in reversed(an.graph.layers)]
    assert all(t > 0 for t in exp.layer_seconds.values())
    assert sum(exp.layer_seconds.values()) <= exp.timings_s["backward"]
    seen, explain = [], an.explain
    an.explain = lambda *a, **k: seen.append(explain(*a, **k)) or seen[-1]
    joined = an._in_parts(x, 1, None, lambda xs, t: an.explain(xs, t, (), None))
    assert len(seen) == 3
    for name, t in joined.layer_seconds.items():
        assert t == pytest.approx(sum(p.layer_seconds[name] for p in seen))
    np.testing.assert_allclose(joined.relevance, exp.relevance, rtol=1e-5, atol=1e-7)


def _fixed_batch_cnn(rng, own_indices: bool, batch: int = 1):
    """``small_cnn`` exported for one batch size only (torch.onnx.export's default: its dummy
    input's): its MaxPool's switches derived by the analyzer, or the model's own ``Indices``
    output."""
    model, _ = models.small_cnn(rng)
    g = model.graph
    g.input[0].type.tensor_type.shape.dim[0].dim_value = batch
    g.output[0].type.tensor_type.shape.dim[0].dim_value = batch
    if own_indices:
        pool = next(n for n in g.node if n.op_type == "MaxPool")
        pool.output.append("pool1_switches")
        g.output.append(helper.make_tensor_value_info("pool1_switches", onnx.TensorProto.INT64, None))
    return model


@pytest.mark.parametrize("own_indices", [False, True], ids=["derived", "own"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_batch_through_a_model_fixed_to_one_sample(tmp_path, seed, own_indices):
    """A model fixed to batch 1 runs a batch one sample per onnxruntime run; each run numbers
    its MaxPool switches from its own sample, so the joined batch renumbers them: every
    sample's relevance is its own explanation's, and each conserves (before, the samples
    after the first got their relevance unpooled into the first's maps: conservation 0)."""
    rng = np.random.default_rng(seed)
    an = Analyzer(models.save(_fixed_batch_cnn(rng, own_indices), tmp_path / "fixed.onnx"))
    assert an.graph.input_shape[0] == 1
    x = rng.random((3, 3, 12, 12)).astype(np.float32)
    exp = an.explain(x)
    for i in range(3):
        one = an.explain(x[i:i + 1])
        np.testing.assert_allclose(exp.relevance[i:i + 1], one.relevance, rtol=1e-5,
                                   atol=1e-6 * np.abs(one.relevance).max())
        assert exp.targets[i] == one.targets[0]
    sums = exp.relevance.reshape(3, -1).sum(axis=1) / exp.start_relevance.reshape(3, -1).sum(axis=1)
    singles = [an.explain(x[i:i + 1]) for i in range(3)]
    want = [float(e.relevance.sum() / e.start_relevance.sum()) for e in singles]
    np.testing.assert_allclose(sums, want, rtol=1e-4)
    assert min(abs(s) for s in sums) > 1e-3


@pytest.mark.parametrize("own_indices", [False, True], ids=["derived", "own"])
@pytest.mark.parametrize("n", [1, 3, 6, 8])
def test_any_batch_through_a_model_fixed_to_four_samples(tmp_path, n, own_indices):
    """A model exported for batch 4 explains any number of samples: the last chunk is filled
    up with copies of its last sample, whose results are dropped. Every sample's relevance and
    logits are what the same weights give with an open batch axis (before: one sample, or
    three, was refused with "the model takes batches of exactly 4")."""
    fixed = Analyzer(models.save(_fixed_batch_cnn(np.random.default_rng(5), own_indices, 4), tmp_path / "f.onnx"))
    assert fixed.graph.input_shape[0] == 4
    open_model, _ = models.small_cnn(np.random.default_rng(5))
    free = Analyzer(models.save(open_model, tmp_path / "free.onnx"))
    x = np.random.default_rng(n).random((n, 3, 12, 12)).astype(np.float32)
    got, want = fixed.explain(x, keep=["conv2"]), free.explain(x, keep=["conv2"])
    assert got.relevance.shape == want.relevance.shape == (n, 3, 12, 12)
    assert got.targets == want.targets
    np.testing.assert_allclose(got.logits, want.logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.relevance, want.relevance, rtol=1e-5, atol=1e-6 * np.abs(want.relevance).max())
    np.testing.assert_allclose(got.kept["conv2"], want.kept["conv2"], rtol=1e-5,
                               atol=1e-6 * np.abs(want.kept["conv2"]).max())
    for a, b in zip(got.flows, want.flows):
        np.testing.assert_allclose(a.relevance_in, b.relevance_in, rtol=1e-4, atol=1e-6)
    assert len(fixed.forward(x)[fixed.graph.output]) == n


def test_a_transformer_fixed_to_two_samples_explains_three(tmp_path):
    """A model whose batch axis moves inside (attention) is explained a fixed batch at a time;
    three samples through one exported for two: the last part is padded, and each sample's
    relevance is what the open-batch model gives it."""
    from lrpath_onnx.models import registry

    model = onnx.load(registry.get("mnist-vit").path())
    free = Analyzer(models.save(model, tmp_path / "free.onnx"))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    fixed = Analyzer(models.save(model, tmp_path / "fixed.onnx"))
    assert fixed.graph.input_shape[0] == 2 and fixed._batch_moves()
    x = np.random.default_rng(7).random((3, 1, 28, 28)).astype(np.float32)
    got = fixed.explain(x, target=[1, 2, 3])
    assert got.targets == [1, 2, 3] and got.relevance.shape == (3, 1, 28, 28)
    for i in range(3):
        want = free.explain(x[i:i + 1], target=i + 1)
        np.testing.assert_allclose(got.relevance[i:i + 1], want.relevance, rtol=1e-4,
                                   atol=1e-5 * np.abs(want.relevance).max())
        np.testing.assert_allclose(got.start_relevance[i], want.start_relevance[0], rtol=1e-5)


def test_commands_run_a_model_fixed_to_four_samples_on_fewer(tmp_path):
    """The plain forwards beside the analyzer (evaluate's perturbation curves, the masked
    model of optimize, bench's baseline script) run a fixed-batch model in padded chunks too:
    their logits equal the open-batch model's."""
    from lrpath_onnx.cli.evaluate_cmd import plain_forward
    from lrpath_onnx.cli.plain_forward import _runner, session
    from lrpath_onnx.paths.masking import MaskedModel

    path = models.save(_fixed_batch_cnn(np.random.default_rng(5), False, 4), tmp_path / "f.onnx")
    open_model, _ = models.small_cnn(np.random.default_rng(5))
    free = Analyzer(models.save(open_model, tmp_path / "free.onnx"))
    x = np.random.default_rng(0).random((3, 3, 12, 12)).astype(np.float32)
    want = free.forward(x)[free.graph.output]
    np.testing.assert_allclose(plain_forward(path, "cpu", 4)(x), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_runner(session(str(path), "cpu"))(x), want, rtol=1e-5, atol=1e-6)
    masked = MaskedModel(Analyzer(path))
    np.testing.assert_allclose(masked.run(x[:1]), want[:1], rtol=1e-5, atol=1e-6)
    name, shape = next(iter(masked.shapes.items()))
    off = masked.run(x[:1], {name: np.zeros(shape[1])})
    np.testing.assert_allclose(off, MaskedModel(free).run(x[:1], {name: np.zeros(shape[1])}), rtol=1e-5, atol=1e-6)


def test_a_multi_sample_npy_for_a_model_fixed_to_one_sample(tmp_path):
    """`lrpath explain` splits a .npy of several samples whatever batch the model is fixed to,
    and batches them by --batch-size: the same relevance as one file per sample."""
    from tests.test_cli import lrpath

    rng = np.random.default_rng(3)
    path = models.save(_fixed_batch_cnn(rng, False), tmp_path / "fixed.onnx")
    x = rng.random((3, 3, 12, 12)).astype(np.float32)
    np.save(tmp_path / "three.npy", x)
    res = lrpath("explain", path, tmp_path / "three.npy", "--batch-size", 2, "--out", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    an = Analyzer(path)
    for i in range(3):
        got = np.load(tmp_path / "out" / f"three-{i}" / "relevance.npy")
        want = an.explain(x[i:i + 1]).relevance[0]
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_share_of_input_outside_the_bounds_is_per_sample(tmp_path):
    """z^B's bounds are checked sample by sample: an input inside [low, high] reports 0 in its
    own explanation.json even when another sample of its batch lies far outside."""
    from tests.test_cli import lrpath

    rng = np.random.default_rng(4)
    model, _ = models.small_cnn(rng)
    path = models.save(model, tmp_path / "cnn.onnx")
    inside = rng.random((3, 12, 12)).astype(np.float32)
    outside = inside.copy()
    outside[0, :3] = 2.0  # 36 of 432 values above high = 1
    an = Analyzer(path, low=0.0, high=1.0)
    exp = an.explain(np.stack([inside, outside]))
    np.testing.assert_allclose(exp.bounds_violation, [0.0, 36 / 432])
    np.save(tmp_path / "in.npy", inside)
    np.save(tmp_path / "out.npy", outside)
    res = lrpath("explain", path, tmp_path / "in.npy", tmp_path / "out.npy", "--batch-size", 2,
                 "--out", tmp_path / "o")
    assert res.returncode == 0, res.stderr
    docs = [json.loads((tmp_path / "o" / s / "explanation.json").read_text()) for s in ("in", "out")]
    shares = [d["zbox_bounds"]["share_of_input_outside"] for d in docs]
    assert shares[0] == 0.0 and shares[1] == pytest.approx(36 / 432)
    said = [[w for w in d["warnings"] if "z^B" in w] for d in docs]
    assert said == [[], ["8% of the input values lie outside z^B's bounds [0, 1]: give the model's input "
                         "range with --low/--high (or the normalisation with --mean/--std)"]]
    assert f"warning: out: {said[1][0]}" in res.stderr and "warning: in: 8%" not in res.stderr
    assert [[w for w in an.warnings(exp, i) if "z^B" in w] for i in (0, 1)] == said  # the API says the same
    assert an.warnings(exp, 1) == docs[1]["warnings"]


def _channels_last_model(rng):
    """Conv → ReLU → to (N, H, W, C) → pointwise MatMul (a ConvNeXt Linear) → ReLU → back →
    global pool → Gemm: a layer whose channels are its last axis."""
    inits = {"W1": rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.5,
             "Wp": rng.standard_normal((4, 5)).astype(np.float32), "W2": rng.standard_normal((3, 5)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["X", "W1"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Transpose", ["r"], ["t"], name="to_last", perm=[0, 2, 3, 1]),
             helper.make_node("MatMul", ["t", "Wp"], ["p"], name="pw"),
             helper.make_node("Relu", ["p"], ["pr"], name="pw_relu"),
             helper.make_node("Transpose", ["pr"], ["b"], name="to_first", perm=[0, 3, 1, 2]),
             helper.make_node("GlobalAveragePool", ["b"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "W2"], ["Y"], name="fc", transB=1)]
    return models.make_model(nodes, [models.vi("X", [1, 3, 6, 7])], [models.vi("Y", [1, 3])], inits)


@pytest.mark.parametrize("layer", ["pw", "pw_relu"])
def test_a_neuron_target_counts_channels_on_a_channels_last_layer(tmp_path, layer):
    """--target LAYER:C:Y:X on a MatMul over (N, H, W, C), and the ReLU after it, is channel C
    at (Y, X): its value starts the relevance, and LRP-0 without biases conserves it."""
    import onnxruntime as ort
    from lrpath_onnx import NeuronTarget
    rng = np.random.default_rng(3)
    model = _channels_last_model(rng)
    path = models.save(model, tmp_path / "m.onnx")
    an = Analyzer(str(path), rules=["*=zero"])
    x = rng.standard_normal((1, 3, 6, 7)).astype(np.float32)
    tensor = an.graph.find(layer).output
    assert an.graph.channel_axes()[tensor] == 3 and an.graph.channel_axes()[an.graph.find("conv").output] == 1
    ext = onnx.shape_inference.infer_shapes(model)
    ext.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    act = ort.InferenceSession(ext.SerializeToString()).run([tensor], {"X": x})[0]  # (1, 6, 7, 5)
    c, y, xx = 4, 5, 2  # channel 4 exists only on the last axis (axis 1 has 6)
    exp = an.explain(x, target=NeuronTarget(layer, c, y, xx))
    assert exp.start_relevance[0] == pytest.approx(act[0, y, xx, c], rel=1e-6)
    assert exp.relevance.sum() == pytest.approx(act[0, y, xx, c], rel=1e-4)
    whole = an.explain(x, target=NeuronTarget(layer, 1))  # a whole channel: every position
    assert whole.start_relevance[0] == pytest.approx(act[0, ..., 1].sum(dtype=np.float64), rel=1e-5)
    with pytest.raises(InputError, match=f"layer '{layer}' has 5 channels"):
        an.explain(x, target=NeuronTarget(layer, 5, 0, 0))
    with pytest.raises(InputError, match=r"position outside the \(6, 7\) map"):
        an.explain(x, target=NeuronTarget(layer, 0, 6, 0))
