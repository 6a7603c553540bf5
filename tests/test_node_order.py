"""The analyzer's onnxruntime session runs each fetched tensor's ReorderOutput right after its producer."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from lrpath_onnx import Analyzer
from lrpath_onnx.runtime import ordered_session as O
from lrpath_onnx.runtime.node_order import leaves_last
from tests import models


def _names(proto):
    return [n.name for n in proto.graph.node]


def test_leaves_move_to_the_end_the_one_reading_the_latest_producer_first():
    """A chain a → b → c with a leaf on each link (and one reading the input only): the leaves
    go last, the one after the latest producer first, so a walk from the last leaf meets the
    earliest; the inner nodes keep their order. A second call finds nothing to change."""
    n = helper.make_node
    nodes = [n("Relu", ["x"], ["a"], name="a"), n("Identity", ["a"], ["la"], name="la"),
             n("Relu", ["a"], ["b"], name="b"), n("Neg", ["x"], ["lx"], name="lx"),
             n("Relu", ["b"], ["c"], name="c"), n("Identity", ["b"], ["lb"], name="lb"),
             n("Identity", ["c"], ["lc"], name="lc"), n("Add", ["a", "c"], ["lac"], name="lac")]
    proto = models.make_model(nodes, [models.vi("x", [1, 4])],
                              [models.vi(o, [1, 4]) for o in ("la", "lx", "lb", "lc", "lac")])
    assert leaves_last(proto)
    assert _names(proto) == ["a", "b", "c", "lc", "lac", "lb", "la", "lx"]
    onnx.checker.check_model(proto)
    assert not leaves_last(proto)
    assert _names(proto) == ["a", "b", "c", "lc", "lac", "lb", "la", "lx"]


def test_a_graph_with_subgraphs_keeps_its_order():
    """A node holding a subgraph reads tensors the node list does not show: left as it is."""
    then = helper.make_graph([helper.make_node("Identity", ["a"], ["t"])], "then", [], [models.vi("t", [1, 4])])
    other = helper.make_graph([helper.make_node("Neg", ["a"], ["e"])], "else", [], [models.vi("e", [1, 4])])
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="a"),
             helper.make_node("Identity", ["a"], ["la"], name="la"),
             helper.make_node("ReduceMax", ["x"], ["m"], name="m", keepdims=0),
             helper.make_node("Cast", ["m"], ["cond"], name="cast", to=onnx.TensorProto.BOOL),
             helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then, else_branch=other)]
    proto = models.make_model(nodes, [models.vi("x", [1, 4])], [models.vi("la", [1, 4]), models.vi("y", [1, 4])])
    before = _names(proto)
    assert not leaves_last(proto)
    assert _names(proto) == before


def _conv_chain(rng, channels=32):
    """Conv-Relu ×2, MaxPool, Conv-Relu, Flatten, Gemm on 3×20×20: wide enough for onnxruntime's
    blocked (NCHWc) convolutions, whose fetched outputs need a ReorderOutput each."""
    def w(*s):
        return (rng.standard_normal(s) * np.sqrt(2.0 / np.prod(s[1:]))).astype(np.float32)

    c = channels
    inits = {"W1": w(c, 3, 3, 3), "B1": w(c) * 0.1, "W2": w(c, c, 3, 3), "B2": w(c) * 0.1,
             "W3": w(c, c, 3, 3), "B3": w(c) * 0.1, "W4": w(5, c * 10 * 10), "B4": w(5) * 0.1}
    n = helper.make_node
    nodes = [n("Conv", ["X", "W1", "B1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             n("Relu", ["c1"], ["r1"], name="relu1"),
             n("Conv", ["r1", "W2", "B2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             n("Relu", ["c2"], ["r2"], name="relu2"),
             n("MaxPool", ["r2"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             n("Conv", ["p", "W3", "B3"], ["c3"], name="conv3", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             n("Relu", ["c3"], ["r3"], name="relu3"),
             n("Flatten", ["r3"], ["f"], name="flatten", axis=1),
             n("Gemm", ["f", "W4", "B4"], ["logits"], name="fc", transB=1)]
    return models.make_model(nodes, [models.vi("X", ["N", 3, 20, 20])], [models.vi("logits", ["N", 5])], inits)


@pytest.mark.parametrize("seed", [0, 1])
def test_each_fetched_tensor_is_written_out_before_the_next_convolution(tmp_path, monkeypatch, seed):
    """onnxruntime's own order ran every ReorderOutput after the last convolution (each blocked
    activation alive to the end of the run). The analyzer's session, per onnxruntime's profile
    of a run, writes each one out before another convolution starts, and returns exactly the
    tensors a session of the same graph in onnxruntime's order returns."""
    rng = np.random.default_rng(seed)
    model = _conv_chain(rng)
    prefix = str(tmp_path / "prof")

    def profiled(threads):
        opts = plain_options(threads)
        opts.enable_profiling = True
        opts.profile_file_prefix = prefix
        return opts

    plain_options = O.session_options
    monkeypatch.setattr(O, "session_options", profiled)
    an = Analyzer(models.save(model, tmp_path / "chain.onnx"), preset="epsilon-gamma-box",
                  rules=["conv1=epsilon"])
    rt = an.runtime()
    x = rng.random((2, 3, 20, 20), dtype=np.float32)
    got = rt.run(x)
    with open(rt.session.end_profiling()) as f:
        events = json.load(f)
    ran = [e["args"]["op_name"] for e in sorted((e for e in events if e.get("cat") == "Node"
                                                and e["name"].endswith("_kernel_time")), key=lambda e: e["ts"])]
    reorders = [i for i, op in enumerate(ran) if op == "ReorderOutput"]
    convs = [i for i, op in enumerate(ran) if op == "Conv"]
    if not reorders:
        pytest.skip("onnxruntime runs these convolutions without its blocked layout here (no AVX2): nothing to order")
    assert len(reorders) >= 3 and len(convs) == 3  # the blocked path was taken, with its outputs
    for i in reorders:  # the convolutions before it: at most one since the previous reorder
        since = max([j for j in reorders if j < i], default=-1)
        assert sum(since < j < i for j in convs) <= 1, ran

    monkeypatch.setattr(O, "session_options", plain_options)
    monkeypatch.setattr(O, "inference_session", lambda data, threads, providers: ort.InferenceSession(
        data, plain_options(threads), providers=providers))
    as_ordered = Analyzer(models.save(model, tmp_path / "chain.onnx"), preset="epsilon-gamma-box",
                          rules=["conv1=epsilon"]).runtime()
    want = as_ordered.run(x)
    assert set(got) == set(want) and len(got) >= 4
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


@pytest.mark.parametrize("broken", ["gpu", "large", "no-folder", "save", "read", "reopen"])
def test_where_the_saved_graph_fails_the_session_is_made_as_onnxruntime_orders_it(tmp_path, monkeypatch, broken):
    """Another provider than the CPU, a model too large to save its optimized graph safely, no
    temporary folder, a graph onnxruntime cannot save (a full disk), one onnx cannot read, or
    one onnxruntime refuses back: the model is opened as usual and gives the same tensors, and
    no temporary folder is left behind."""
    rng = np.random.default_rng(2)
    model = _conv_chain(rng)
    path = models.save(model, tmp_path / "chain.onnx")
    x = rng.random((2, 3, 20, 20), dtype=np.float32)
    want = Analyzer(path, preset="epsilon-gamma-box").runtime().run(x)
    real_session, made = ort.InferenceSession, []

    def session(data, opts, providers=None):
        saving = bool(opts.optimized_model_filepath)
        reopening = opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        made.append("save" if saving else "reopen" if reopening else "plain")
        if (broken == "reopen" and reopening) or (broken == "save" and saving):
            raise RuntimeError(f"{broken} refused")
        return real_session(data, opts, providers=["CPUExecutionProvider"])

    def unreadable(*args, **kwargs):
        raise ValueError("unreadable")

    monkeypatch.setattr(O.ort, "InferenceSession", session)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(O.tempfile, "tempdir", str(tmp_path / "tmp"))
    if broken == "read":
        monkeypatch.setattr(O.onnx, "load", unreadable)
    if broken == "large":
        monkeypatch.setattr(O, "REORDER_BYTES", 1000)
    if broken == "no-folder":
        def no_folder(*args, **kwargs):
            raise PermissionError("read-only")
        monkeypatch.setattr(O.tempfile, "TemporaryDirectory", no_folder)
    if broken == "gpu":
        monkeypatch.setattr("lrpath_onnx.runtime.session.choose_providers",
                            lambda device: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    rt = Analyzer(path, preset="epsilon-gamma-box").runtime()
    assert made == {"gpu": ["plain"], "large": ["plain"], "no-folder": ["plain"], "save": ["save", "plain"],
                    "read": ["save", "plain"], "reopen": ["save", "reopen", "plain"]}[broken]
    assert not list((tmp_path / "tmp").iterdir())
    got = rt.run(x)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
