"""Deconvolution: switch unpooling with onnxruntime's indices, one-layer and whole-chain references."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import helper
from PIL import Image

from lrpath_onnx import Analyzer
from lrpath_onnx.deconv.crop import crop, neuron_box, pair
from lrpath_onnx.deconv.dataset import scan
from lrpath_onnx.deconv.reconstruct import Neuron, deepest_first, reconstruct, select_neurons
from lrpath_onnx.io.inputs import InputReader
from lrpath_onnx.paths.neurons import activation_tensor
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


def _one_conv(tmp_path, rng, case, chw):
    """One Conv layer (6 output channels) with ``case``'s geometry: (analyzer, input, its
    output, the float64 conv matrix, the geometry)."""
    model, w, _ = models.conv_model(rng, (1, *chw), 6, **case)
    an = Analyzer(models.save(model, tmp_path / "c.onnx"))
    x = rng.standard_normal((1, *chw)).astype(np.float32)
    z = an.forward(x)["Y"][0]
    geom = dict(strides=case.get("strides", (1, 1)), pads=case.get("pads", (1, 1, 1, 1)),
                dilations=case.get("dilations", (1, 1)), groups=case.get("groups", 1))
    M, _, _ = ref.conv_matrix(w, chw, **geom)
    return an, x, z, M, geom


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", [dict(strides=(1, 1), pads=(1, 1, 1, 1)), dict(strides=(2, 2), pads=(0, 1, 1, 0)),
                                  dict(groups=2), dict(dilations=(2, 2), pads=(2, 2, 2, 2))],
                         ids=["s1p1", "s2asym", "groups2", "dil2"])
def test_one_conv_layer_is_its_transposed_convolution(tmp_path, case, seed):
    rng = np.random.default_rng(seed)
    an, x, z, M, _ = _one_conv(tmp_path, rng, case, (4, 9, 8))
    neurons = [Neuron("conv", c, None, None, 0.0) for c in (0, 3, 5)]
    recs = reconstruct(an, x, neurons, whole_map=True)
    for nr, rec in zip(neurons, recs):
        sig = np.zeros(z.shape)
        sig[nr.channel] = z[nr.channel]
        np.testing.assert_allclose(rec.reshape(-1), M @ sig.reshape(-1), rtol=1e-4, atol=1e-5)


WINDOW_CASES = [dict(), dict(strides=(2, 2), pads=(0, 1, 1, 0)), dict(groups=2),
                dict(dilations=(2, 2), pads=(2, 2, 2, 2)), dict(kernel=(5, 3), pads=(3, 0, 1, 2)),
                dict(kernel=(3, 3), strides=(3, 2), pads=(4, 4, 4, 4))]
WINDOW_IDS = ["s1p1", "s2asym", "groups2", "dil2", "k5x3asym", "s3x2-pads-past-reach"]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", WINDOW_CASES, ids=WINDOW_IDS)
def test_a_transposed_window_equals_the_whole_transpose(seed, case):
    """The transpose of a box of the signal alone, placed at the span ``window_transpose``
    names, equals the exact transpose of the whole map with everything outside the box zero."""
    from lrpath_onnx.kernels.conv import ConvGeometry, conv2d_transpose
    from lrpath_onnx.ops.conv import window_transpose

    rng = np.random.default_rng(seed)
    kernel = case.get("kernel", (3, 3))
    geom = ConvGeometry(case.get("strides", (1, 1)), case.get("pads", (1, 1, 1, 1)),
                        case.get("dilations", (1, 1)), case.get("groups", 1))
    in_hw = (int(rng.integers(9, 14)), int(rng.integers(9, 14)))
    w = rng.standard_normal((6, 4 // geom.groups, *kernel))
    oh, ow = geom.out_size(*in_hw, *kernel)
    for _ in range(6):
        y0, x0 = int(rng.integers(0, oh)), int(rng.integers(0, ow))
        box = ((y0, int(rng.integers(y0, oh))), (x0, int(rng.integers(x0, ow))))
        s = np.zeros((1, 6, oh, ow))
        s[:, :, box[0][0]:box[0][1] + 1, box[1][0]:box[1][1] + 1] = rng.standard_normal(
            (1, 6, box[0][1] - box[0][0] + 1, box[1][1] - box[1][0] + 1))
        want = conv2d_transpose(s, w, geom, in_hw)
        sub, g2, (r0, r1), (c0, c1) = window_transpose(geom, box, kernel, in_hw)
        got = np.zeros_like(want)
        if min(sub) > 0:
            crop = s[:, :, box[0][0]:box[0][1] + 1, box[1][0]:box[1][1] + 1]
            got[:, :, r0:r1 + 1, c0:c1 + 1] = conv2d_transpose(np.ascontiguousarray(crop), w, g2, sub)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("pads", [(1, 1, 1, 1), (0, 2, 2, 0)], ids=["p1", "asym"])
@pytest.mark.parametrize("k, c", [(6, 4), (3, 8)], ids=["K>C", "K<C-flipped"])
def test_a_transposed_window_through_the_backend(seed, pads, k, c):
    """The backend's paths on a cropped window — exact (the flipped-kernel convolution where
    K ≤ C), F(2x2) and F(4x4) Winograd for boxes large enough — against the exact float64
    transpose of the whole map."""
    from lrpath_onnx.backend import CpuBackend
    from lrpath_onnx.kernels.conv import ConvGeometry, conv2d_transpose
    from lrpath_onnx.kernels import winograd4
    from lrpath_onnx.ops.conv import window_transpose

    rng = np.random.default_rng(seed)
    geom, in_hw, be = ConvGeometry((1, 1), pads), (37, 41), CpuBackend()
    w = rng.standard_normal((k, c, 3, 3))
    oh, ow = geom.out_size(*in_hw, 3, 3)
    boxes = [((0, 0), (0, 0)), ((oh - 1, oh - 1), (ow - 1, ow - 1)), ((2, 6), (30, 38)), ((0, oh - 1), (0, ow - 1)),
             ((5, 30), (9, 33))]
    used_f4 = False
    for box in boxes:
        s = np.zeros((1, k, oh, ow))
        s[:, :, box[0][0]:box[0][1] + 1, box[1][0]:box[1][1] + 1] = rng.standard_normal(
            (1, k, box[0][1] - box[0][0] + 1, box[1][1] - box[1][0] + 1))
        want = conv2d_transpose(s, w, geom, in_hw)
        sub, g2, (r0, r1), (c0, c1) = window_transpose(geom, box, (3, 3), in_hw)
        crop = np.ascontiguousarray(s[:, :, box[0][0]:box[0][1] + 1, box[1][0]:box[1][1] + 1])
        used_f4 |= winograd4.applies(3, 3, (1, 1), (1, 1), 1, c, k, sub)
        for exact, dtype, tol in ((True, np.float64, 1e-12), (False, np.float32, 1e-5)):
            got = np.zeros_like(want)
            got[:, :, r0:r1 + 1, c0:c1 + 1] = be.conv2d_transpose(crop.astype(dtype), w.astype(dtype), g2, sub,
                                                                  exact=exact)
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
    assert used_f4


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", WINDOW_CASES, ids=WINDOW_IDS)
def test_single_neurons_are_their_transposed_convolution(tmp_path, case, seed):
    """Each single-position neuron (corners included) reconstructs as the float64 transposed
    convolution of its one-hot signal, and nothing outside the pixels it reads."""
    rng = np.random.default_rng(seed)
    kernel = case.get("kernel", (3, 3))
    an, x, z, M, geom = _one_conv(tmp_path, rng, case, (4, 11, 10))
    K, oh, ow = z.shape
    spots = [(0, 0), (oh - 1, ow - 1), (0, ow - 1)] + [(int(rng.integers(oh)), int(rng.integers(ow))) for _ in range(4)]
    neurons = [Neuron("conv", int(rng.integers(K)), y, xx, 0.0) for y, xx in spots]
    recs = reconstruct(an, x, neurons)
    for nr, rec in zip(neurons, recs):
        sig = np.zeros(z.shape)
        sig[nr.channel, nr.y, nr.x] = z[nr.channel, nr.y, nr.x]
        want = (M @ sig.reshape(-1)).reshape(rec.shape)
        np.testing.assert_allclose(rec, want, rtol=1e-4, atol=1e-5 * max(np.abs(want).max(), 1e-30))
        reach = np.zeros(rec.shape, bool)  # the input elements any tap of the neuron's window reads
        (sh, sw), (pt, pl), (dh, dw) = geom["strides"], geom["pads"][:2], geom["dilations"]
        for ky in range(kernel[0]):
            for kx in range(kernel[1]):
                yy, xx = nr.y * sh - pt + ky * dh, nr.x * sw - pl + kx * dw
                if 0 <= yy < reach.shape[1] and 0 <= xx < reach.shape[2]:
                    reach[:, yy, xx] = True
        assert not rec[~reach].any()


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


def _affine_cnn(rng):
    """X → (X − mean) / std → conv1 → relu → ·scale + shift → conv2 → relu → dense: two constant
    affine maps no convolution folds (one before the first conv, one behind a ReLU)."""
    def w(*s):
        return (rng.standard_normal(s) * np.sqrt(2.0 / np.prod(s[1:]))).astype(np.float32)

    inits = {"W1": w(5, 3, 3, 3), "B1": (0.1 * rng.standard_normal(5)).astype(np.float32),
             "W2": w(4, 5, 3, 3), "B2": (0.1 * rng.standard_normal(4)).astype(np.float32),
             "W3": w(3, 4 * 5 * 5), "mean": rng.random((1, 3, 1, 1)).astype(np.float32),
             "std": (0.5 + rng.random((1, 3, 1, 1))).astype(np.float32),
             "scale": (0.5 + rng.random((1, 5, 1, 1))).astype(np.float32) * rng.choice([-1, 1], (1, 5, 1, 1)).astype(np.float32),
             "shift": rng.standard_normal((1, 5, 1, 1)).astype(np.float32)}
    nodes = [helper.make_node("Sub", ["X", "mean"], ["c"], name="center"),
             helper.make_node("Div", ["c", "std"], ["u"], name="normalise"),
             helper.make_node("Conv", ["u", "W1", "B1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Mul", ["r1", "scale"], ["m1"], name="scale1"),
             helper.make_node("Add", ["m1", "shift"], ["a1"], name="shift1"),
             helper.make_node("Conv", ["a1", "W2", "B2"], ["c2"], name="conv2", kernel_shape=[3, 3], strides=[2, 2],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Flatten", ["r2"], ["f"], name="flatten", axis=1),
             helper.make_node("Gemm", ["f", "W3"], ["logits"], name="fc", transB=1)]
    return models.make_model(nodes, [models.vi("X", ["N", 3, 9, 9])], [models.vi("logits", ["N", 3])], inits), inits


@pytest.mark.parametrize("seed", SEEDS)
def test_constant_affine_maps_transpose_the_signal(tmp_path, seed):
    """An input normalisation and a per-channel affine map behind a ReLU (what BatchNorm after a
    concatenation becomes) are not folded into a convolution: the signal crosses each as its
    transpose, ·scale, the shift having none (float64 reference)."""
    from lrpath_onnx.graph.layers import AffineLayer

    rng = np.random.default_rng(seed)
    model, p = _affine_cnn(rng)
    an = Analyzer(models.save(model, tmp_path / "affine.onnx"))
    assert sum(isinstance(lay, AffineLayer) for lay in an.graph.layers) >= 2
    x = rng.random((1, 3, 9, 9)).astype(np.float32)
    an.request("r2")
    act = an.forward(x)["r2"][0]
    neurons = select_neurons(act, "conv2", top=3)
    recs = reconstruct(an, x, neurons, whole_map=seed == 2)
    M1, _, _ = ref.conv_matrix(p["W1"], (3, 9, 9), pads=(1, 1, 1, 1))
    M2, _, _ = ref.conv_matrix(p["W2"], (5, 9, 9), strides=(2, 2), pads=(1, 1, 1, 1))
    for nr, rec in zip(neurons, recs):
        sig = np.zeros(act.shape)
        if seed == 2:
            sig[nr.channel] = act[nr.channel]
        else:
            sig[nr.channel, nr.y, nr.x] = act[nr.channel, nr.y, nr.x]
        s = np.maximum(sig, 0)                                        # relu2
        s = (M2 @ s.reshape(-1)).reshape(5, 9, 9)                     # conv2ᵀ
        s = s * p["scale"][0].astype(np.float64)                      # (·scale + shift)ᵀ
        s = np.maximum(s, 0)                                          # relu1
        s = (M1 @ s.reshape(-1)).reshape(3, 9, 9)                     # conv1ᵀ
        want = s / p["std"][0].astype(np.float64)                     # ((x − mean) / std)ᵀ
        assert np.abs(want).max() > 0
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
        with Image.open(folder / n["file"]) as im:  # the receptive field's crop, enlarged by a whole factor
            box = n["receptive_field"]
            h, w = box["rows"][1] - box["rows"][0] + 1, box["cols"][1] - box["cols"][0] + 1
            assert min(im.size) >= 224 and im.size[0] * h == im.size[1] * w
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


# ----------------------------------------------------------------------------- readable crops, dataset top images

@pytest.fixture(scope="module")
def mnist():
    an = Analyzer(HERE / "mnist_vgg.onnx", low=0.0, high=1.0)
    x = np.asarray(Image.open(HERE / "digits" / "digit_4.png"), np.float32)[None, None] / 255
    return an, x


@pytest.mark.parametrize("layer", ["features.0", "features.2", "features.5", "features.7"])
def test_a_reconstruction_stays_inside_its_receptive_field(mnist, layer):
    """The crop loses nothing: deconvolution can only reach the pixels the neuron reads."""
    an, x = mnist
    an.request(activation_tensor(an, an.graph.find(layer)))
    act = an.forward(x)[activation_tensor(an, an.graph.find(layer))][0]
    for nr in select_neurons(act, layer, top=4):
        rec = reconstruct(an, x, [nr])[0, 0]
        (y0, y1), (x0, x1) = neuron_box(an, nr, "nchw")
        outside = rec.copy()
        outside[y0:y1 + 1, x0:x1 + 1] = 0
        assert np.abs(rec).max() > 0 and not outside.any()
        patch, pic, box = pair(an, nr, rec[None], np.zeros((28, 28, 3), np.uint8), "nchw")
        assert patch.shape[:2] == pic.shape[:2] == (y1 - y0 + 1, x1 - x0 + 1)


def test_crop_scales_a_box_to_a_larger_picture():
    img = np.arange(56 * 56 * 3).reshape(56, 56, 3)
    assert crop(img, ((2, 3), (10, 13)), (28, 28)).shape == (4, 8, 3)
    assert crop(img, ((2, 3), (10, 13)), (28, 28))[0, 0, 0] == img[4, 20, 0]
    assert crop(img, None, (28, 28)).shape == img.shape


def test_deepest_layers_first_and_every_layer_shown():
    chosen = {"a": [1, 2, 3], "b": [4], "c": [5, 6]}
    assert deepest_first(chosen, 4) == {"c": [5, 6], "b": [4], "a": [1]}
    assert deepest_first(chosen, 2) == {"c": [5], "b": [4], "a": [1]}  # never fewer than one per layer
    assert deepest_first(chosen, 10) == {"c": [5, 6], "b": [4], "a": [1, 2, 3]}


def test_dataset_scan_ranks_images_by_activation_and_by_relevance(mnist):
    an, _ = mnist
    files = sorted((HERE / "digits").glob("*.png"))
    reader = InputReader(an.input_shape, an.preprocessing(), "nchw")
    neurons = {"features.5": [3, 11], "features.7": [0]}
    found = scan(an, reader, files, neurons, target=7, top=4, batch_size=3)
    an.request(*(activation_tensor(an, an.graph.find(n)) for n in neurons))
    for (layer, c), ways in found.items():
        values = {}
        for f in files:
            x = np.asarray(Image.open(f), np.float32)[None, None] / 255
            exp = an.explain(x, target=7, keep=[layer], keep_forward=True)
            values[f.stem] = (float(exp.forward[activation_tensor(an, an.graph.find(layer))][0, c].max()),
                              float(exp.kept[layer][0, c].sum()))
        for k, way in enumerate(("activation", "relevance")):
            want = sorted(((v[k], name) for name, v in values.items() if v[k] > 0), reverse=True)[:4]
            assert [(h.name, pytest.approx(h.value, rel=1e-4)) for h in ways[way]] == [(n, v) for v, n in want]


def test_deconv_dataset_command(tmp_path):
    digits = HERE / "digits"
    res = lrpath("deconv", "mnist-vgg", digits / "digit_5.png", "--layer", "features.7", "--channels", "3,9",
                 "--dataset", digits, "--top-images", "3", "--target", "5", "--out", tmp_path)
    assert res.returncode == 0, res.stderr
    info = json.loads((tmp_path / "dataset" / "top_images.json").read_text())
    assert info["target"] == {"index": 5, "label": "5"} and info["images"] == 10
    assert [(n["layer"], n["channel"]) for n in info["neurons"]] == [("features.7", 3), ("features.7", 9)]
    for n in info["neurons"]:
        assert 0 < len(n["by_activation"]) <= 3 and all(h["receptive_field"] for h in n["by_activation"])
        with Image.open(tmp_path / "dataset" / n["file"]) as im:
            assert im.size[0] > 400 and len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)) > 20
    bad = lrpath("deconv", "mnist-vgg", digits / "digit_5.png", "--layer", "features.7", "--target", "5",
                 "--out", tmp_path / "bad")
    assert bad.returncode == 2 and "--target only applies with --dataset" in bad.stderr


def test_a_layer_deconvolution_cannot_cross_leaves_no_folder(tmp_path):
    """Exit 2 with one line naming the layer, found before anything runs: no --out folder."""
    rng = np.random.default_rng(0)
    model, _ = _affine_cnn(rng)
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    soft = helper.make_node("Softmax", ["r1"], ["s1"], name="mix", axis=1)  # across channels
    model.graph.node.insert(list(model.graph.node).index(relu) + 1, soft)
    next(n for n in model.graph.node if n.name == "scale1").input[0] = "s1"
    path = models.save(model, tmp_path / "soft.onnx")
    np.save(tmp_path / "x.npy", rng.random((3, 9, 9)).astype(np.float32))
    res = lrpath("deconv", path, tmp_path / "x.npy", "--layer", "conv2", "--out", tmp_path / "out")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == ["error: deconvolution through Softmax ('mix') is not defined"]
    assert not (tmp_path / "out").exists()
