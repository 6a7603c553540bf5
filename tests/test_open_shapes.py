"""Shapes computed at run time: sizes an exporter builds from ``Shape`` ops (torch's
``F.interpolate(size=…)``, ``F.pad``) leave onnx's shape inference open, and a model exported
with dynamic height and width has none until the user gives ``--size``. Neuron paths,
receptive fields and Resize need them; onnxruntime runs on zeros (or the given size) say them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from lrpath_onnx import Analyzer
from lrpath_onnx.graph.canonical import infer_shapes
from lrpath_onnx.graph.receptive import receptive_box
from tests import models


def _resize_net(rng, run_time_sizes: bool, hw=(8, 8), dynamic_hw=False):
    """Conv-Relu-Resize(×1.5, linear)-Conv-Relu-GAP-Gemm; the Resize's sizes computed from the
    tensor's own shape as torch writes ``F.interpolate(scale_factor=1.5,
    recompute_scale_factor=True)`` (batch and channels kept, floor(1.5·H), floor(1.5·W)), or
    as constant scales."""
    def w(*s):
        return (rng.standard_normal(s) * np.sqrt(2.0 / np.prod(s[1:]))).astype(np.float32)

    inits = {"W1": w(4, 3, 3, 3), "B1": (0.1 * rng.standard_normal(4)).astype(np.float32),
             "W2": w(5, 4, 3, 3), "W3": w(6, 5), "k": np.array([1.5], np.float32),
             "scales": np.array([1, 1, 1.5, 1.5], np.float32), "roi": np.zeros(0, np.float32),
             "s0": np.array([0], np.int64), "s2": np.array([2], np.int64), "s4": np.array([4], np.int64)}
    nodes = [helper.make_node("Conv", ["X", "W1", "B1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1")]
    if run_time_sizes:
        nodes += [helper.make_node("Shape", ["r1"], ["sh"], name="shape"),
                  helper.make_node("Slice", ["sh", "s0", "s2"], ["nc"], name="slice"),
                  helper.make_node("Slice", ["sh", "s2", "s4"], ["hw0"], name="slice_hw"),
                  helper.make_node("Cast", ["hw0"], ["hwf"], name="cast", to=TensorProto.FLOAT),
                  helper.make_node("Mul", ["hwf", "k"], ["hwm"], name="mul"),
                  helper.make_node("Floor", ["hwm"], ["hwfl"], name="floor"),
                  helper.make_node("Cast", ["hwfl"], ["hw"], name="cast_back", to=TensorProto.INT64),
                  helper.make_node("Concat", ["nc", "hw"], ["sizes"], name="concat", axis=0),
                  helper.make_node("Resize", ["r1", "", "", "sizes"], ["up"], name="up", mode="linear")]
    else:
        nodes.append(helper.make_node("Resize", ["r1", "roi", "scales"], ["up"], name="up", mode="linear"))
    nodes += [helper.make_node("Conv", ["up", "W2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1] * 4),
              helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
              helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
              helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
              helper.make_node("Gemm", ["f", "W3"], ["logits"], name="fc", transB=1)]
    shape = ["N", 3, "H", "W"] if dynamic_hw else ["N", 3, *hw]
    return models.make_model(nodes, [models.vi("X", shape)], [models.vi("logits", ["N", 6])], inits)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_resize_sizes_built_from_the_input_shape(tmp_path, seed):
    """Sizes from ``Shape`` (open to onnx's inference) are the output's probed size: the same
    explanation as constant scales, and receptive fields through it."""
    rng = np.random.default_rng(seed)
    sized = _resize_net(np.random.default_rng(seed), True)
    shapes, _ = infer_shapes(sized)
    assert shapes.get("c2") is None or None in shapes["c2"][1:]  # inference alone cannot tell
    an = Analyzer(models.save(sized, tmp_path / "sized.onnx"), preset="conserving")
    ref = Analyzer(models.save(_resize_net(np.random.default_rng(seed), False), tmp_path / "scaled.onnx"),
                   preset="conserving")
    assert an.graph.shapes["c2"] == (None, 5, 12, 12)
    x = rng.random((2, 3, 8, 8)).astype(np.float32)
    got, want = an.explain(x), ref.explain(x)
    np.testing.assert_allclose(got.logits, want.logits, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got.relevance, want.relevance, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.relevance.reshape(2, -1).sum(1), got.start_relevance.reshape(2, -1).sum(1),
                               rtol=1e-4)
    assert receptive_box(an.graph, "c2", (0, 6, 6)) == receptive_box(ref.graph, "c2", (0, 6, 6))


def test_resize_sizes_at_run_time_need_a_known_size(tmp_path):
    """With height and width open the output size is unknown: refused by name, until the
    size is given (``Analyzer(size=…)``, the CLI's ``--size``)."""
    path = models.save(_resize_net(np.random.default_rng(0), True, dynamic_hw=True), tmp_path / "dyn.onnx")
    with pytest.raises(Exception, match="Resize.*the output's size is not known"):
        Analyzer(path)
    an = Analyzer(path, size=(8, 8))
    assert an.graph.input_shape == (None, 3, 8, 8) and an.graph.shapes["c2"] == (None, 5, 12, 12)
    ref = Analyzer(models.save(_resize_net(np.random.default_rng(0), False), tmp_path / "scaled.onnx"))
    x = np.random.default_rng(1).random((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(an.explain(x).relevance, ref.explain(x).relevance, rtol=1e-5, atol=1e-7)


def test_a_dynamic_size_model_gets_every_shape_from_size(tmp_path):
    """A model exported with dynamic height and width: `lrpath paths` and `deconv` refused it
    for want of static shapes; with --size both run, and explain without --size still takes
    .npy tensors of any size."""
    from tests.test_cli import lrpath

    model = _resize_net(np.random.default_rng(3), False, dynamic_hw=True)
    path = models.save(model, tmp_path / "dyn.onnx")
    assert Analyzer(path).graph.shapes.get("c2") in (None, (None, 5, None, None))
    an = Analyzer(path, size=(10, 14))
    assert an.graph.shapes["c2"] == (None, 5, 15, 21)
    rng = np.random.default_rng(4)
    np.save(tmp_path / "a.npy", rng.random((3, 10, 14)).astype(np.float32))
    np.save(tmp_path / "b.npy", rng.random((3, 6, 6)).astype(np.float32))
    res = lrpath("paths", path, tmp_path / "a.npy", "--size", "10,14", "--out", tmp_path / "p")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "p" / "a" / "paths.json").is_file()
    res = lrpath("deconv", path, tmp_path / "a.npy", "--size", "10,14", "--layer", "conv2", "--out", tmp_path / "d")
    assert res.returncode == 0, res.stderr
    res = lrpath("explain", path, tmp_path / "b.npy", "--out", tmp_path / "e")
    assert res.returncode == 0, res.stderr
    res = lrpath("explain", path, tmp_path / "b.npy", "--size", "10,14", "--out", tmp_path / "e2")
    assert res.returncode == 2 and "expected (?, 3, 10, 14)" in res.stderr


def test_probed_shapes_need_no_run_where_inference_knows_them(tmp_path, monkeypatch):
    """The probe runs only for open shapes: a plain chain loads without any onnxruntime run."""
    import lrpath_onnx.runtime.shape_probe as probe

    calls = []
    monkeypatch.setattr(probe, "_session", lambda *a: calls.append(a) or (_ for _ in ()).throw(RuntimeError()))
    model, _ = models.small_cnn(np.random.default_rng(0))
    Analyzer(models.save(model, tmp_path / "cnn.onnx"))
    assert calls == []


def _run_time_pad_net(rng):
    """Conv-Relu-Pad-Conv-Relu-GAP-Gemm, the Pad's amounts computed from the tensor's shape
    through casts (as exporters write ``F.pad`` to a size): onnx's inference leaves every
    shape after it open, the pads themselves fold to constants."""
    def w(*s):
        return (rng.standard_normal(s) * np.sqrt(2.0 / np.prod(s[1:]))).astype(np.float32)

    inits = {"W1": w(4, 3, 3, 3), "W2": w(5, 4, 3, 3), "W3": w(6, 5), "k": np.array([0.125], np.float32),
             "s2": np.array([2], np.int64), "s3": np.array([3], np.int64),
             "zeros": np.zeros(2, np.int64), "pre": np.zeros(4, np.int64)}
    nodes = [helper.make_node("Conv", ["X", "W1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Shape", ["r1"], ["sh"], name="shape"),
             helper.make_node("Slice", ["sh", "s2", "s3"], ["h"], name="slice"),
             helper.make_node("Cast", ["h"], ["hf"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Mul", ["hf", "k"], ["hk"], name="mul"),
             helper.make_node("Floor", ["hk"], ["hfl"], name="floor"),
             helper.make_node("Cast", ["hfl"], ["one"], name="cast_back", to=TensorProto.INT64),
             helper.make_node("Concat", ["zeros", "one", "one", "zeros", "one", "one"], ["pads"], name="pads", axis=0),
             helper.make_node("Pad", ["r1", "pads"], ["p"], name="pad"),
             helper.make_node("Conv", ["p", "W2"], ["c2"], name="conv2", kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "W3"], ["logits"], name="fc", transB=1)]
    return models.make_model(nodes, [models.vi("X", ["N", 3, 8, 8])], [models.vi("logits", ["N", 6])], inits)


def test_open_shapes_are_probed_only_when_asked(tmp_path, monkeypatch):
    """Shapes left open by inference are probed when neuron paths or receptive fields ask for
    them, not at load (explaining needs none of them)."""
    import lrpath_onnx.runtime.shape_probe as probe

    calls = []
    session = probe._session
    monkeypatch.setattr(probe, "_session", lambda *a: calls.append(a) or session(*a))
    path = models.save(_run_time_pad_net(np.random.default_rng(0)), tmp_path / "pad.onnx")
    assert None in (infer_shapes(onnx.load(str(path)))[0].get("c2") or (None, None))[1:]
    an = Analyzer(path)
    explained = an.explain(np.random.default_rng(1).random((1, 3, 8, 8)).astype(np.float32))
    assert calls == [] and explained.relevance.shape == (1, 3, 8, 8)
    assert receptive_box(an.graph, "c2", (0, 3, 3)) == ((0, 2), (1, 5), (1, 5))
    assert len(calls) == 1 and an.graph.shapes["c2"] == (None, 5, 8, 8)
    receptive_box(an.graph, "c2", (0, 0, 0))
    assert len(calls) == 1


def test_compile_takes_size_for_a_dynamic_size_model(tmp_path):
    """compile asked for --size on a dynamic-H/W model but had no such option: now the file is
    compiled for that size, its relevance matches explain's (--check), and without --size the
    error says what to give."""
    from tests.test_cli import lrpath

    path = models.save(_resize_net(np.random.default_rng(5), False, dynamic_hw=True), tmp_path / "dyn.onnx")
    np.save(tmp_path / "a.npy", np.random.default_rng(6).random((3, 10, 14)).astype(np.float32))
    res = lrpath("compile", path, "--out", tmp_path / "none.onnx")
    assert res.returncode == 2 and "give --size" in res.stderr and not (tmp_path / "none.onnx").exists()
    res = lrpath("compile", path, tmp_path / "a.npy", "--size", "10,14", "--check", "--out", tmp_path / "c.onnx")
    assert res.returncode == 0, res.stderr
    err = float(res.stdout.split("largest relative L2 ")[1].split()[0])
    assert err < 1e-4
    shape = [d.dim_value or None for d in onnx.load(tmp_path / "c.onnx").graph.input[0].type.tensor_type.shape.dim]
    assert shape[1:] == [3, 10, 14]
