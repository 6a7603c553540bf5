"""The native forward pass (``runtime.native``): the same tensors as onnxruntime's, within
float32 rounding, on every layer it runs; the engine each setting picks; and the kernels it
adds (in-place ReLU, the gather behind MaxPool)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import helper

from lrpath_onnx.api import Analyzer
from lrpath_onnx.errors import InputError
from lrpath_onnx.kernels import elementwise as ew
from lrpath_onnx.kernels import pooling
from lrpath_onnx.runtime.native import MIN_MACS, PROVIDER, NativeForward, multiply_adds, slower_reason
from lrpath_onnx.runtime.session import ActivationRuntime
from tests import models
from tests.test_cli import lrpath


def _pair(path, **kw):
    """The same model under both engines, each asked for every layer's output."""
    nat = Analyzer(path, forward_engine="native", **kw)
    ort = Analyzer(path, forward_engine="onnxruntime", **kw)
    every = [layer.output for layer in nat.graph.layers]
    nat.request(*every)
    ort.request(*every)
    return nat, ort


def _close(got: np.ndarray, want: np.ndarray, name: str) -> None:
    scale = float(np.abs(want).max()) or 1.0
    err = float(np.abs(got.astype(np.float64) - want).max()) / scale
    assert err < 2e-5, (name, err)


def _same_forward(path, x):
    """Both engines' tensors for ``x``, checked equal within rounding; (native's, the switches seen)."""
    nat, ort = _pair(path)
    assert isinstance(nat.engine(), NativeForward) and isinstance(ort.engine(), ActivationRuntime)
    fn, fo = nat.forward(x), ort.forward(x)
    assert set(fn) == set(fo) and len(fn) >= len(nat.graph.layers)
    switches = 0
    for name, want in fo.items():
        got = fn[name]
        assert got.shape == want.shape and got.dtype == want.dtype, name
        if want.dtype.kind == "i":  # a switch: the element it picks holds its window's maximum
            layer = next(l for l in nat.graph.layers if getattr(l, "indices", None) == name)
            src = fo[layer.inputs[0]].reshape(-1)
            np.testing.assert_allclose(src[got.reshape(-1)], src[want.reshape(-1)], rtol=0, atol=1e-5)
            assert np.mean(got == want) > 0.99
            switches += 1
        else:
            _close(got, want, name)
    return fn, switches


@pytest.mark.parametrize("seed,gemm,batch", [(0, True, 3), (1, False, 1), (2, True, 5)])
def test_native_tensors_match_onnxruntime(tmp_path, seed, gemm, batch):
    rng = np.random.default_rng(seed)
    path = models.save(models.mixed_cnn(rng, gemm=gemm), tmp_path / "m.onnx")
    fn, switches = _same_forward(path, rng.standard_normal((batch, 3, 19, 17)).astype(np.float32))
    assert switches == 2 and fn["logits"].shape == (batch, 7)


@pytest.mark.parametrize("seed", [0, 1])
def test_concat_and_average_pools_match_onnxruntime(tmp_path, seed):
    rng = np.random.default_rng(seed)
    path = models.save(models.concat_pool_cnn(rng), tmp_path / "c.onnx")
    fn, switches = _same_forward(path, rng.standard_normal((3, 3, 13, 11)).astype(np.float32))
    assert switches == 0 and fn["logits"].shape == (3, 4) and fn["cat"].shape == (3, 11, 13, 11)


def test_vgg_style_explanation_is_the_same_under_both_engines(tmp_path):
    """LRP on the native forward: relevance as onnxruntime's forward gives it, conservation too."""
    rng = np.random.default_rng(3)
    model, _ = models.small_cnn(rng)
    path = models.save(model, tmp_path / "cnn.onnx")
    x = rng.standard_normal((4, 3, 12, 12)).astype(np.float32)
    for preset in ("epsilon-gamma-box", "epsilon-plus"):
        nat = Analyzer(path, preset=preset, low=-3.0, high=3.0, forward_engine="native")
        ort = Analyzer(path, preset=preset, low=-3.0, high=3.0, forward_engine="onnxruntime")
        en, eo = nat.explain(x), ort.explain(x)
        assert en.provider == PROVIDER and eo.provider == "CPUExecutionProvider"
        assert en.targets == eo.targets
        _close(en.relevance, eo.relevance, preset)
        for i in range(len(x)):
            np.testing.assert_allclose(en.conservation(i)["ratio"], eo.conservation(i)["ratio"], atol=1e-4)


@pytest.mark.parametrize("seed,reshape", [(0, (0, -1)), (1, (-1, 720)), (2, "dynamic")])
def test_keras_style_transposes_relu6_and_reshape_match_onnxruntime(tmp_path, seed, reshape):
    rng = np.random.default_rng(seed)
    path = models.save(models.nhwc_cnn(rng, reshape=reshape), tmp_path / "k.onnx")
    x = (rng.standard_normal((3, 10, 9, 3)) * 2).astype(np.float32)
    fn, _ = _same_forward(path, x)
    assert fn["r1"].max() == 6.0 and fn["r1"].min() == 0.0  # the Clip bites at both ends
    assert fn["logits"].shape == (3, 3)


def test_a_reshape_to_one_sample_stays_with_onnxruntime(tmp_path):
    """A Reshape to (1, -1), as an export for one sample bakes in: not run natively (onnxruntime
    refuses a batch of several there, and the analyzer then explains one sample at a time)."""
    path = models.save(models.nhwc_cnn(np.random.default_rng(0), reshape=(1, -1)), tmp_path / "one.onnx")
    with pytest.raises(InputError, match="layer 'flatten' is Reshape not keeping an open batch axis first"):
        Analyzer(path, forward_engine="native").engine()
    an = Analyzer(path)
    x = np.random.default_rng(1).standard_normal((2, 10, 9, 3)).astype(np.float32)
    assert an.explain(x).relevance.shape == x.shape and an.one_at_a_time
    assert isinstance(an.engine(), ActivationRuntime)


def _sigmoid_model(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["X", "W"], ["c"], name="conv", kernel_shape=[3, 3]),
             helper.make_node("Sigmoid", ["c"], ["s"], name="gate"),
             helper.make_node("Flatten", ["s"], ["Y"], name="flat")]
    model = models.make_model(nodes, [models.vi("X", ["N", 3, 6, 6])], [models.vi("Y", ["N", 64])], {"W": w})
    return models.save(model, tmp_path / "sig.onnx")


def test_auto_runs_natively_only_where_winograd_carries_a_large_forward(tmp_path):
    rng = np.random.default_rng(0)
    big = models.save(models.wide_cnn(rng), tmp_path / "wide.onnx")
    assert multiply_adds(Analyzer(big).graph)[0] > MIN_MACS
    assert isinstance(Analyzer(big).engine(), NativeForward)
    pointwise = Analyzer(models.save(models.wide_cnn(rng, pointwise=True), tmp_path / "pw.onnx"))
    assert slower_reason(pointwise.graph) == "only 1% of the multiply-adds in 3x3 stride-1 convolutions"
    assert isinstance(pointwise.engine(), ActivationRuntime)
    assert isinstance(Analyzer(pointwise.model_path, forward_engine="native").engine(), NativeForward)
    small = Analyzer(models.save(models.small_cnn(rng)[0], tmp_path / "cnn.onnx"))
    assert "onnxruntime's lower overhead wins" in slower_reason(small.graph)
    assert isinstance(small.engine(), ActivationRuntime) and small.provider == "CPUExecutionProvider"
    assert isinstance(Analyzer(big, device="cpu", forward_engine="onnxruntime").engine(), ActivationRuntime)


def test_auto_falls_back_to_onnxruntime_and_native_says_why(tmp_path):
    path = _sigmoid_model(tmp_path)
    assert isinstance(Analyzer(path).engine(), ActivationRuntime)
    with pytest.raises(InputError, match=r"--forward-engine native: layer 'gate' is activation sigmoid"):
        Analyzer(path, forward_engine="native").engine()
    cnn = models.save(models.small_cnn(np.random.default_rng(0))[0], tmp_path / "cnn.onnx")
    with pytest.raises(InputError, match=r"forward terms are onnxruntime nodes \(rule_forward='runtime'\)"):
        Analyzer(cnn, rule_forward="runtime", preset="epsilon-gamma-box", forward_engine="native").engine()
    with pytest.raises(InputError, match="forward engine must be one of auto, native, onnxruntime"):
        Analyzer(cnn, forward_engine="tvm")


@pytest.mark.parametrize("preset", ["epsilon-gamma-box", "epsilon-plus"])
def test_what_the_backward_pass_asks_for_matches_onnxruntime(tmp_path, preset):
    """The requests of a plan alone (ReLUs in place, tensors let go on the way), not every
    layer's output: the same tensors as onnxruntime's session returns."""
    rng = np.random.default_rng(4)
    path = models.save(models.mixed_cnn(rng), tmp_path / "m.onnx")
    nat = Analyzer(path, preset=preset, forward_engine="native")
    ort = Analyzer(path, preset=preset, forward_engine="onnxruntime")
    assert nat.engine()._in_place == {"relu1", "relu2"}
    x = rng.standard_normal((2, 3, 19, 17)).astype(np.float32)
    fn, fo = nat.forward(x), ort.forward(x)
    assert set(fn) == set(fo)
    for name, want in fo.items():
        if want.dtype.kind == "f":
            _close(fn[name], want, name)


def test_an_input_the_layers_cannot_take_is_one_input_error(tmp_path):
    """An open height, then Flatten into a dense layer: the size it was made for runs, another
    fails at the dense layer as one line (as onnxruntime's failure is), not a traceback."""
    model = models.concat_pool_cnn(np.random.default_rng(0))
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    path = models.save(model, tmp_path / "open.onnx")
    an = Analyzer(path, forward_engine="native")
    assert an.forward(np.zeros((1, 3, 13, 11), np.float32))["logits"].shape == (1, 4)
    with pytest.raises(InputError, match=r"the forward pass failed on this input at layer 'fc' \(Gemm\)"):
        an.forward(np.zeros((1, 3, 9, 11), np.float32))


def test_in_place_relu_only_where_no_one_else_reads_the_convolution(tmp_path):
    path = models.save(models.mixed_cnn(np.random.default_rng(0)), tmp_path / "m.onnx")
    an = Analyzer(path, forward_engine="native")
    eng = an.engine()
    # relu1 and relu2 follow a convolution read by nothing else; relu3 follows a BatchNorm
    assert eng._in_place == {"relu1", "relu2"}
    an.request("c1", "r1")  # conv1's output, asked for: relu1 must leave it as it is
    x = np.random.default_rng(1).standard_normal((2, 3, 19, 17)).astype(np.float32)
    fwd = an.forward(x)
    assert an.engine()._in_place == {"relu2"}
    assert (fwd["c1"] < 0).any() and np.array_equal(fwd["r1"], np.maximum(fwd["c1"], 0))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("lo,hi", [(0.0, np.inf), (0.0, 6.0), (-1.5, 0.25), (1.0, 0.5)])
def test_clamp_kernel_against_numpy(seed, lo, hi):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((3, 5, 7, 11)) * 4).astype(np.float32)
    x[0, 0, 0, :3] = [-0.0, np.nan, 0.0]
    want = np.minimum(np.maximum(x, lo), hi)  # ONNX's Clip (hi wins where lo > hi); keeps the NaN
    got = ew.clamp(x, lo, hi)
    np.testing.assert_array_equal(got, want)
    assert not np.signbit(got[0, 0, 0, 0]) or lo < 0  # ReLU's 0 is +0, not −0
    assert np.isnan(got[0, 0, 0, 1])
    y = x.copy()
    assert ew.clamp(y, lo, hi, out=y) is y
    np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("seed", [0, 1])
def test_gather_is_the_max_pool_onnxruntime_computes(seed):
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.standard_normal((2, 3, 9, 8)), 0).astype(np.float32)  # ties at 0, as after a ReLU
    for kernel, strides, pads, dil, ceil in [((2, 2), (2, 2), (0, 0, 0, 0), (1, 1), 0),
                                             ((3, 3), (2, 1), (1, 1, 1, 0), (1, 2), 1)]:
        values, indices = models.maxpool_indices(x, kernel, strides, pads, dil, ceil)
        got = pooling.max_switches(x, kernel, strides, pads, dil, values.shape[2:])
        np.testing.assert_array_equal(got, indices)
        np.testing.assert_array_equal(pooling.gather(x, got), values)


def test_cli_forward_engine_names_its_provider(tmp_path):
    model, _ = models.small_cnn(np.random.default_rng(0))
    path = models.save(model, tmp_path / "cnn.onnx")
    np.save(tmp_path / "x.npy", np.random.default_rng(1).standard_normal((3, 12, 12)).astype(np.float32))
    providers = {}
    for engine in ("native", "onnxruntime"):
        res = lrpath("explain", path, tmp_path / "x.npy", "--out", tmp_path / engine, "--forward-engine", engine)
        assert res.returncode == 0, res.stderr
        (doc,) = (tmp_path / engine).rglob("explanation.json")
        providers[engine] = json.loads(doc.read_text())["provider"]
    assert providers == {"native": PROVIDER, "onnxruntime": "CPUExecutionProvider"}
    sig = _sigmoid_model(tmp_path)
    np.save(tmp_path / "s.npy", np.zeros((3, 6, 6), np.float32))
    res = lrpath("explain", sig, tmp_path / "s.npy", "--out", tmp_path / "n", "--forward-engine", "native")
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "error: --forward-engine native: layer 'gate' is activation sigmoid"]
