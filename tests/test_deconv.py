"""Deconvolution: switch unpooling with onnxruntime's indices, one-layer and whole-chain references."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import helper
from PIL import Image

from lrpath_onnx import Analyzer
from lrpath_onnx.deconv.reconstruct import Neuron, reconstruct, select_neurons
from lrpath_onnx.models.registry import HERE
from tests import models
from tests import reference as ref
from tests.test_cli import lrpath

SEEDS = [0, 1, 2]


def _argmax_scatter(x, values, kernel, strides, pads):
    """Reference unpooling: each pooled value to the first maximum of its window (NCHW)."""
    return ref.maxpool_wta(x, values, kernel, strides, pads)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("attrs", [dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
                                   dict(kernel_shape=[2, 3], strides=[1, 2]),
                                   dict(kernel_shape=[3, 3], strides=[3, 3])], ids=["k3s2p1", "k2x3s1x2", "k3s3"])
@pytest.mark.parametrize("nhwc", [False, True])
def test_unpooling_uses_onnxruntime_switches(tmp_path, attrs, seed, nhwc):
    rng = np.random.default_rng(seed)
    shape = (1, 9, 7, 3) if nhwc else (1, 3, 9, 7)
    nodes = []
    src = "X"
    if nhwc:
        nodes.append(helper.make_node("Transpose", ["X"], ["Xt"], name="to_nchw", perm=[0, 3, 1, 2]))
        src = "Xt"
    nodes += [helper.make_node("Relu", [src], ["r"], name="relu"),
              helper.make_node("MaxPool", ["r"], ["Y"], name="pool", **attrs)]
    path = models.save(models.make_model(nodes, [models.vi("X", list(shape))], [models.vi("Y", None)]),
                       tmp_path / "p.onnx")
    an = Analyzer(path)
    x = rng.standard_normal(shape).astype(np.float32)
    y = an.forward(x)["Y"][0]
    neurons = select_neurons(y, "pool", top=3)
    recs = reconstruct(an, x, neurons, whole_map=True)
    xn = x.transpose(0, 3, 1, 2) if nhwc else x
    for nr, rec in zip(neurons, recs):
        sig = np.zeros((1,) + y.shape)
        sig[0, nr.channel] = y[nr.channel]
        want = np.maximum(_argmax_scatter(np.maximum(xn, 0).astype(np.float64), sig, attrs["kernel_shape"],
                                          attrs["strides"], tuple(attrs.get("pads", (0, 0, 0, 0)))), 0)[0]
        got = rec.transpose(2, 0, 1) if nhwc else rec
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", [dict(strides=(1, 1), pads=(1, 1, 1, 1)), dict(strides=(2, 2), pads=(0, 1, 1, 0)),
                                  dict(groups=2), dict(dilations=(2, 2), pads=(2, 2, 2, 2))],
                         ids=["s1p1", "s2asym", "groups2", "dil2"])
def test_one_conv_layer_is_its_transposed_convolution(tmp_path, case, seed):
    rng = np.random.default_rng(seed)
    model, w, _ = models.conv_model(rng, (1, 4, 9, 8), 6, **case)
    an = Analyzer(models.save(model, tmp_path / "c.onnx"))
    x = rng.standard_normal((1, 4, 9, 8)).astype(np.float32)
    z = an.forward(x)["Y"][0]
    geom = dict(strides=case.get("strides", (1, 1)), pads=case.get("pads", (1, 1, 1, 1)),
                dilations=case.get("dilations", (1, 1)), groups=case.get("groups", 1))
    M, _, _ = ref.conv_matrix(w, (4, 9, 8), **geom)
    neurons = [Neuron("conv", c, None, None, 0.0) for c in (0, 3, 5)]
    recs = reconstruct(an, x, neurons, whole_map=True)
    for nr, rec in zip(neurons, recs):
        sig = np.zeros(z.shape)
        sig[nr.channel] = z[nr.channel]
        np.testing.assert_allclose(rec.reshape(-1), M @ sig.reshape(-1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
def test_whole_chain_matches_numpy_reference(tmp_path, seed):
    """conv1 → relu → maxpool → conv2 → relu, reconstructed from conv2's strongest activations."""
    rng = np.random.default_rng(seed)
    model, p = models.small_cnn(rng, bias=True)
    an = Analyzer(models.save(model, tmp_path / "cnn.onnx"))
    x = rng.standard_normal((1, 3, 12, 12)).astype(np.float32)
    an.request("r2")
    fwd = an.forward(x)
    act = fwd["r2"][0]
    neurons = select_neurons(act, "conv2", top=4)
    recs = reconstruct(an, x, neurons)
    M1, _, s1 = ref.conv_matrix(p["W1"], (3, 12, 12), pads=(1, 1, 1, 1))
    r1 = np.maximum(x.reshape(-1).astype(np.float64) @ M1 + np.repeat(p["B1"], 144), 0).reshape(s1)
    M2, _, _ = ref.conv_matrix(p["W2"], (6, 6, 6), strides=(2, 2), pads=(1, 1, 1, 1))
    for nr, rec in zip(neurons, recs):
        sig = np.zeros(act.shape)
        sig[nr.channel, nr.y, nr.x] = act[nr.channel, nr.y, nr.x]
        s = np.maximum(sig, 0)                                  # relu2
        s = (M2 @ s.reshape(-1)).reshape(1, 6, 6, 6)            # conv2ᵀ
        s = ref.maxpool_wta(r1[None], s, (2, 2), (2, 2))        # unpool by pool1's switches
        s = np.maximum(s, 0)                                    # relu1
        want = (M1 @ s.reshape(-1)).reshape(3, 12, 12)          # conv1ᵀ
        np.testing.assert_allclose(rec, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_zero_selection_gives_a_zero_image(tmp_path):
    rng = np.random.default_rng(0)
    model, _ = models.small_cnn(rng)
    an = Analyzer(models.save(model, tmp_path / "cnn.onnx"))
    x = rng.standard_normal((1, 3, 12, 12)).astype(np.float32)
    an.request("r2")
    act = an.forward(x)["r2"][0]
    c, y, xx = map(int, np.argwhere(act == 0)[0])
    rec = reconstruct(an, x, [Neuron("conv2", c, y, xx, 0.0)])
    assert rec.shape == (1, 3, 12, 12) and not rec.any()


def test_deconv_command_on_mnist(tmp_path):
    res = lrpath("deconv", "mnist-vgg", HERE / "digits" / "digit_5.png", "--layer", "features.7", "--top", "3",
                 "--layer", "features.2", "--out", tmp_path)
    assert res.returncode == 0, res.stderr
    folder = tmp_path / "digit_5"
    info = json.loads((folder / "deconv.json").read_text())
    assert [n["layer"] for n in info["neurons"]] == ["features.7"] * 3 + ["features.2"] * 3
    for n in info["neurons"]:
        with Image.open(folder / n["file"]) as im:
            assert im.size == (224, 224)
            pix = np.asarray(im)
            assert pix.min() < 100 or pix.max() > 156  # something besides the grey zero level
    with Image.open(folder / "grid.png") as im:
        assert im.size[0] > 500
    paths = tmp_path / "p"
    assert lrpath("paths", "mnist-vgg", HERE / "digits" / "digit_5.png", "--out", paths, "--k", "2").returncode == 0
    res = lrpath("deconv", "mnist-vgg", HERE / "digits" / "digit_5.png", "--from-paths",
                 paths / "digit_5" / "paths.json", "--out", tmp_path / "fp")
    assert res.returncode == 0, res.stderr
    layers = {n["layer"] for n in json.loads((tmp_path / "fp" / "digit_5" / "deconv.json").read_text())["neurons"]}
    assert layers == {"features.0", "features.2", "features.5", "features.7"}
    bad = lrpath("deconv", "mnist-vgg", HERE / "digits" / "digit_5.png", "--layer", "features.7", "--channels",
                 "99", "--out", tmp_path / "bad")
    assert bad.returncode == 2 and "--channels 99" in bad.stderr and bad.stderr.count("\n") == 1
    assert not (tmp_path / "bad").exists()
