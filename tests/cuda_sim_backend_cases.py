"""The CUDA backend end to end in numba's simulator: ``DeviceArray`` against numpy, and every
analyzer entry point (explain, masks, inner targets, channel flows, deconvolution, the CLI)
on ``--device cuda`` against ``--device cpu``.

Not collected by the main run (no ``test_`` prefix): ``test_cuda_backend_sim.py`` runs it in
a subprocess with ``NUMBA_ENABLE_CUDASIM=1``, which must be set before numba is imported.
The simulator runs every GPU thread in Python, so the model here is tiny. On a GPU machine
the same file runs on the device: ``python -m pytest tests/cuda_sim_backend_cases.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

from tests import cuda_target  # noqa: F401  (first: a GPU or the simulator)

from lrpath_onnx import Analyzer  # noqa: E402
from lrpath_onnx.api import NeuronTarget  # noqa: E402
from lrpath_onnx.deconv.reconstruct import reconstruct, select_neurons  # noqa: E402
from lrpath_onnx.device_array import DeviceArray  # noqa: E402
from tests import models  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RULES = ["zero", "epsilon:0.5", "gamma:0.25", "zplus", "alphabeta:2,1", "flat", "wsquare", "zbox"]
PRESETS = ["paper", "epsilon-gamma-box", "epsilon-plus", "epsilon-alpha2-beta1", "conserving"]


# ---------------------------------------------------------------------- DeviceArray
def _pair(rng, shape, dtype=np.float32):
    h = rng.standard_normal(shape).astype(dtype)
    return h, DeviceArray.from_host(h)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("shapes", [((2, 3, 4, 5), (2, 3, 4, 5)), ((2, 3, 4, 5), (1, 3, 1, 1)),
                                    ((3, 1, 5), (3, 4, 1)), ((6,), (2, 6)), ((2, 7), (7,))],
                         ids=["same", "channel", "both", "row", "vector"])
def test_broadcast_arithmetic_matches_numpy(seed, shapes):
    rng = np.random.default_rng(seed)
    (a, da), (b, db) = _pair(rng, shapes[0]), _pair(rng, shapes[1])
    b = np.where(np.abs(b) < 0.1, 0.5, b).astype(np.float32)
    db = DeviceArray.from_host(b)
    for got, want in [(da + db, a + b), (da - db, a - b), (da * db, a * b), (da / db, a / b),
                      (np.maximum(da, db), np.maximum(a, b)), (np.minimum(da, db), np.minimum(a, b)),
                      (np.multiply(a, db), a * b), (2.5 - da, 2.5 - a), (da * 3, a * 3), (-da, -a),
                      (np.maximum(da, 0), np.maximum(a, 0)), (1.0 / db, 1.0 / b)]:
        assert isinstance(got, DeviceArray) and got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got.get(), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("perm", [(0, 1, 2, 3), (0, 2, 3, 1), (3, 1, 0, 2), (1, 0, 3, 2)])
def test_transpose_reshape_and_slices_match_numpy(perm):
    rng = np.random.default_rng(3)
    a, da = _pair(rng, (2, 3, 4, 5), np.float64)
    t = da.transpose(perm)
    np.testing.assert_array_equal(t.get(), a.transpose(perm))
    np.testing.assert_array_equal(np.transpose(da, perm).get(), a.transpose(perm))
    np.testing.assert_array_equal(t.reshape(-1, 5 if perm[-1] == 3 else t.shape[-1]).get(),
                                  a.transpose(perm).reshape(-1, t.shape[-1]))
    sl = da[:, 1:3]  # a strided view: reshape must copy it contiguous first
    np.testing.assert_array_equal(sl.reshape(2, -1).get(), a[:, 1:3].reshape(2, -1))
    np.testing.assert_array_equal(da.T.get(), a.T)


@pytest.mark.parametrize("axis", [None, 0, 1, (2, 3), (1, 2, 3), -1])
@pytest.mark.parametrize("keepdims", [False, True])
def test_sums_are_float64_and_match_numpy(axis, keepdims):
    rng = np.random.default_rng(4)
    a, da = _pair(rng, (3, 4, 5, 6))
    got = da.sum(axis=axis, keepdims=keepdims)
    want = a.astype(np.float64).sum(axis=axis, keepdims=keepdims)
    got = got.get() if isinstance(got, DeviceArray) else got
    assert np.shape(got) == np.shape(want)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_split_fill_astype_any_and_host_guard():
    rng = np.random.default_rng(5)
    a, da = _pair(rng, (2, 9, 3, 3))
    for parts, want in [(np.split(da, 3, axis=1), np.split(a, 3, axis=1)),
                        (np.split(da, [2, 7], axis=1), np.split(a, [2, 7], axis=1))]:
        assert len(parts) == len(want)
        for p, w in zip(parts, want):
            np.testing.assert_array_equal(p.get(), w)
    np.testing.assert_array_equal(np.ones_like(da).get(), np.ones_like(a))
    np.testing.assert_array_equal(np.zeros_like(da, dtype=np.float64).get(), np.zeros(a.shape))
    assert da.astype(np.float64).dtype == np.float64
    np.testing.assert_array_equal(da.astype(np.float64).get(), a.astype(np.float64))
    assert da.any() and not np.zeros_like(da).any()
    with pytest.raises(TypeError, match="stays on the GPU"):
        np.asarray(da) + 0  # an implicit host copy is refused
    with pytest.raises(TypeError, match="stays on the GPU"):
        np.array(da)


# ---------------------------------------------------------------------- the analyzer
def tiny_net(rng) -> tuple:
    """Conv-BN-Relu-MaxPool-Conv(s2)-Relu, a residual 1x1 branch, Concat, AveragePool, two
    Gemms: every handler family of a CNN on 1x3x6x6, small enough for the simulator."""
    def w(*s):
        return (rng.standard_normal(s) * np.sqrt(2.0 / np.prod(s[1:]))).astype(np.float32)

    f32 = np.float32
    inits = {"W1": w(3, 3, 3, 3), "B1": (0.1 * rng.standard_normal(3)).astype(f32),
             "g": (1 + 0.3 * rng.standard_normal(3)).astype(f32), "be": (0.2 * rng.standard_normal(3)).astype(f32),
             "mu": (0.3 * rng.standard_normal(3)).astype(f32), "var": (0.5 + rng.random(3)).astype(f32),
             "W2": w(4, 3, 3, 3), "B2": (0.1 * rng.standard_normal(4)).astype(f32), "W3": w(4, 4, 1, 1),
             "W4": w(6, 32), "B4": (0.1 * rng.standard_normal(6)).astype(f32), "W5": w(3, 6)}
    node = helper.make_node
    nodes = [node("Conv", ["X", "W1", "B1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             node("BatchNormalization", ["c1", "g", "be", "mu", "var"], ["bn1"], name="bn1"),
             node("Relu", ["bn1"], ["r1"], name="relu1"),
             node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
             node("Conv", ["p1", "W2", "B2"], ["c2"], name="conv2", kernel_shape=[3, 3], strides=[2, 2],
                  pads=[1, 1, 1, 1]),
             node("Relu", ["c2"], ["r2"], name="relu2"),
             node("Conv", ["r2", "W3"], ["c3"], name="conv3", kernel_shape=[1, 1]),
             node("Add", ["r2", "c3"], ["s"], name="add"),
             node("Concat", ["s", "r2"], ["cat"], name="concat", axis=1),
             node("AveragePool", ["cat"], ["ap"], name="avgpool", kernel_shape=[2, 2], pads=[0, 0, 1, 1]),
             node("Flatten", ["ap"], ["f"], name="flatten", axis=1),
             node("Gemm", ["f", "W4", "B4"], ["d1"], name="fc1", transB=1),
             node("Relu", ["d1"], ["r3"], name="relu3"),
             node("Gemm", ["r3", "W5"], ["logits"], name="fc2", transB=1)]
    return models.make_model(nodes, [models.vi("X", ["N", 3, 6, 6])], [models.vi("logits", None)], inits)


def chain_net(rng) -> tuple:
    """Conv-Relu-MaxPool-Conv-Relu-Gemm-Relu-Gemm: a VGG-like chain, as neuron paths need."""
    def w(*s):
        return (rng.standard_normal(s) * np.sqrt(2.0 / np.prod(s[1:]))).astype(np.float32)

    inits = {"W1": w(4, 3, 3, 3), "B1": np.full(4, 0.05, np.float32), "W2": w(5, 4, 3, 3),
             "B2": np.full(5, 0.05, np.float32), "W3": w(6, 20), "W4": w(3, 6)}
    node = helper.make_node
    nodes = [node("Conv", ["X", "W1", "B1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             node("Relu", ["c1"], ["r1"], name="relu1"),
             node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
             node("Conv", ["p1", "W2", "B2"], ["c2"], name="conv2", kernel_shape=[3, 3], strides=[2, 2],
                  pads=[1, 1, 1, 1]),
             node("Relu", ["c2"], ["r2"], name="relu2"),
             node("Flatten", ["r2"], ["f"], name="flatten", axis=1),
             node("Gemm", ["f", "W3"], ["d1"], name="fc1", transB=1),
             node("Relu", ["d1"], ["r3"], name="relu3"),
             node("Gemm", ["r3", "W4"], ["logits"], name="fc2", transB=1)]
    return models.make_model(nodes, [models.vi("X", ["N", 3, 6, 6])], [models.vi("logits", None)], inits)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return models.save(tiny_net(np.random.default_rng(11)), tmp_path_factory.mktemp("m") / "tiny.onnx")


def _x(seed, n=2):
    return np.random.default_rng(seed).random((n, 3, 6, 6)).astype(np.float32)


def _both(path, **kw):
    return Analyzer(path, **kw), Analyzer(path, device="cuda", **kw)


def _close(got, want, rtol=2e-5):
    """float32 kernels in another summation order: errors relative to the largest value."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * max(np.abs(want).max(), 1e-30))


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_on_cuda_match_cpu(tiny, preset):
    cpu, gpu = _both(tiny, preset=preset)
    assert gpu.device == "cuda" and cpu.device == "cpu"
    x = _x(0)
    a, b = cpu.explain(x, keep=["conv2", "fc1"]), gpu.explain(x, keep=["conv2", "fc1"])
    assert isinstance(b.relevance, np.ndarray) and b.device == "cuda"
    assert a.targets == b.targets
    _close(b.relevance, a.relevance)
    for layer in ("conv2", "fc1"):
        assert isinstance(b.kept[layer], np.ndarray)
        _close(b.kept[layer], a.kept[layer])
    for i in range(2):
        assert b.conservation(i)["ratio"] == pytest.approx(a.conservation(i)["ratio"], rel=1e-4)


@pytest.mark.parametrize("rule", RULES)
def test_every_rule_on_cuda_matches_cpu(tiny, rule):
    inner = "zbox:0,3" if rule == "zbox" else rule  # z^B past the first layer needs explicit bounds
    rules = [f"conv1={rule}", f"conv2={inner}", f"fc1={inner}"]
    cpu, gpu = _both(tiny, preset="paper", rules=rules, low=-1.0, high=2.0)
    x = _x(1)
    _close(gpu.explain(x, target=[0, 2]).relevance, cpu.explain(x, target=[0, 2]).relevance)


def test_float64_relevance_on_cuda_matches_cpu_to_float64_rounding(tiny):
    cpu, gpu = _both(tiny, preset="epsilon-gamma-box")
    x = _x(2)
    logits = cpu.forward(x)["logits"]
    r = np.zeros(logits.shape)
    r[:, 1] = logits[:, 1]
    a = cpu.relevance_from(x, "logits", r, dtype=np.float64, keep=["conv2"], keep_forward=True)
    b = gpu.relevance_from(x, "logits", r, dtype=np.float64, keep=["conv2"], keep_forward=True)
    assert b.relevance.dtype == np.float64
    _close(b.relevance, a.relevance, rtol=1e-11)
    # channel-pair flows of conv2 (the neuron-graph edges) on the device
    rows, cols = np.arange(3), np.array([3, 0])
    fa, fb = cpu.channel_flows(a, "conv2", rows, cols), gpu.channel_flows(b, "conv2", rows, cols)
    assert isinstance(fb, np.ndarray)
    _close(fb, fa, rtol=1e-11)


def test_masks_and_inner_targets_on_cuda_match_cpu(tiny):
    cpu, gpu = _both(tiny, preset="epsilon-plus")
    x = _x(3, n=1)
    a = cpu.explain(x, keep_forward=True)
    b = gpu.explain(x, keep_forward=True)
    masks = {"conv2": np.array([1, 0, 1, 0], np.float32), "fc1": np.array([0, 1, 1, 1, 0, 1], np.float32)}
    _close(gpu.reexplain(b, masks).relevance, cpu.reexplain(a, masks).relevance)
    target = NeuronTarget("conv2", 2, 1, 0)
    _close(gpu.explain(x, target=target).relevance, cpu.explain(x, target=target).relevance)


def modern_net(rng) -> tuple:
    """SiLU (as x·sigmoid(x)), a depthwise conv, a hard-sigmoid SE gate, a linear bottleneck with a
    residual sum, a nearest resize, GELU, global pooling: the modern families on 1x3x6x6."""
    def w(*s):
        return (rng.standard_normal(s) * np.sqrt(2.0 / np.prod(s[1:]))).astype(np.float32)

    f32 = np.float32
    inits = {"W1": w(4, 3, 3, 3), "B1": (0.3 * rng.standard_normal(4)).astype(f32), "Wd": w(4, 1, 3, 3),
             "Bd": (0.3 * rng.standard_normal(4)).astype(f32), "Ws": w(4, 4, 1, 1), "Wp": w(4, 4, 1, 1),
             "Bp": (0.3 * rng.standard_normal(4)).astype(f32), "sc": np.asarray([1, 1, 2, 2], f32), "Wf": w(3, 4)}
    node = helper.make_node
    nodes = [node("Conv", ["X", "W1", "B1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             node("Sigmoid", ["c1"], ["s1"], name="act1/Sigmoid"), node("Mul", ["c1", "s1"], ["a1"], name="act1/Mul"),
             node("Conv", ["a1", "Wd", "Bd"], ["d"], name="dw", kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=4),
             node("GlobalAveragePool", ["d"], ["q"], name="se/pool"),
             node("Conv", ["q", "Ws"], ["e"], name="se/conv", kernel_shape=[1, 1]),
             node("HardSigmoid", ["e"], ["g"], name="se/gate"), node("Mul", ["d", "g"], ["m"], name="se/scale"),
             node("Conv", ["m", "Wp", "Bp"], ["p"], name="project", kernel_shape=[1, 1]),
             node("Add", ["p", "a1"], ["s"], name="sum"),
             node("Resize", ["s", "", "sc"], ["u"], name="up", mode="nearest"),
             node("Gelu", ["u"], ["gl"], name="gelu"),
             node("GlobalAveragePool", ["gl"], ["gp"], name="pool"), node("Flatten", ["gp"], ["f"], name="flatten"),
             node("Gemm", ["f", "Wf"], ["logits"], name="fc", transB=1)]
    return models.make_model(nodes, [models.vi("X", ["N", 3, 6, 6])], [models.vi("logits", None)], inits, opset=20)


@pytest.mark.parametrize("preset", ["auto", "epsilon-gamma-box", "epsilon-plus"])
def test_modern_ops_on_cuda_match_cpu(tmp_path, preset):
    path = models.save(modern_net(np.random.default_rng(5)), tmp_path / "modern.onnx")
    cpu, gpu = _both(path, preset=preset, low=0.0, high=1.0)
    assert cpu.plan().applied == ("conserving" if preset == "auto" else preset)
    x = _x(6)
    a, b = cpu.explain(x), gpu.explain(x)
    assert a.targets == b.targets
    _close(b.relevance, a.relevance)


@pytest.mark.parametrize("mode", ["reflect", "edge"])
def test_copying_pads_on_cuda_match_cpu(tmp_path, mode):
    """Pad(reflect / edge) → conv: the copies' relevance summed back on the host, then uploaded."""
    rng = np.random.default_rng(8)
    inits = {"p": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64),
             "W": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
             "D": rng.standard_normal((3, 4)).astype(np.float32)}
    node = helper.make_node
    nodes = [node("Pad", ["X", "p"], ["xp"], name="pad", mode=mode),
             node("Conv", ["xp", "W"], ["c"], name="conv", kernel_shape=[3, 3]),
             node("Relu", ["c"], ["r"], name="relu"),
             node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             node("Flatten", ["g"], ["f"], name="flat"),
             node("Gemm", ["f", "D"], ["logits"], name="fc", transB=1)]
    path = models.save(models.make_model(nodes, [models.vi("X", ["N", 3, 6, 6])], [models.vi("logits", ["N", 3])],
                                         inits), tmp_path / "pad.onnx")
    cpu, gpu = _both(path, preset="epsilon-gamma-box", low=0.0, high=1.0)
    x = _x(9)
    a, b = cpu.explain(x), gpu.explain(x)
    assert isinstance(b.relevance, np.ndarray)
    _close(b.relevance, a.relevance)


def test_gradient_on_cuda_matches_cpu(tiny, tmp_path):
    for path in (tiny, models.save(modern_net(np.random.default_rng(5)), tmp_path / "modern.onnx")):
        cpu, gpu = _both(path)
        x = _x(7)
        a, b = cpu.gradient(x), gpu.gradient(x)
        assert isinstance(b.relevance, np.ndarray) and a.targets == b.targets
        _close(b.relevance, a.relevance)


def test_deconvolution_on_cuda_matches_cpu(tiny):
    cpu, gpu = _both(tiny)
    x = _x(4, n=1)
    act = cpu.forward(x)
    cpu.request("c2")
    neurons = select_neurons(cpu.forward(x)["c2"][0], "conv2", top=2)
    gpu.request("c2")
    for whole in (False, True):
        want = reconstruct(cpu, x, neurons, whole_map=whole)
        got = reconstruct(gpu, x, neurons, whole_map=whole)
        for g, w in zip(got, want):
            assert isinstance(g, np.ndarray)
            _close(g, w)
    assert "logits" in act


def test_cli_paths_on_cuda_writes_the_cpu_result(tmp_path):
    chain = models.save(chain_net(np.random.default_rng(12)), tmp_path / "chain.onnx")
    x = tmp_path / "x.npy"
    np.save(x, _x(5, n=1))
    out = {}
    env = dict(os.environ)
    for device in ("cpu", "cuda"):
        cmd = [sys.executable, "-m", "lrpath_onnx.cli.main", "paths", str(chain), str(x), "--out",
               str(tmp_path / device), "--device", device, "--k", "3", "--layout", "nchw"]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[device] = json.loads(next((tmp_path / device).rglob("paths.json")).read_text())
    assert out["cuda"]["device"] == "cuda" and out["cpu"]["device"] == "cpu"
    ga, gb = out["cpu"]["paths"], out["cuda"]["paths"]
    assert len(gb) == len(ga) == 3
    assert [[(n["layer"], n["neuron"]) for n in p["neurons"]] for p in gb] == \
        [[(n["layer"], n["neuron"]) for n in p["neurons"]] for p in ga]
    np.testing.assert_allclose([p["weight"] for p in gb], [p["weight"] for p in ga], rtol=1e-4)
    assert out["cuda"]["relevance_share_k_paths"] == pytest.approx(out["cpu"]["relevance_share_k_paths"], rel=1e-4)
