"""``lrpath evaluate``: region perturbation, gradients, the randomisation check, the audit check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from PIL import Image

from lrpath_onnx import Analyzer
from lrpath_onnx.evaluate import perturb
from lrpath_onnx.evaluate.sanity import randomized, ssim, weight_groups
from lrpath_onnx.paths.scores import spearman
from tests import models
from tests.canonical import canonical_forward
from tests.test_cli import assert_one_line_error, lrpath

DIGITS = Path(__file__).parent.parent / "models" / "digits"


# ----------------------------------------------------------------------------- perturbation


@pytest.mark.parametrize("h,w,patch", [(10, 7, 4), (8, 8, 4), (9, 9, 2), (5, 6, 1)])
def test_patches_cover_the_image_and_ragged_edges_are_cut(h, w, patch):
    r = perturb.Regions.patches(h, w, patch)
    for y in range(h):
        for x in range(w):
            assert r.labels[y, x] == (y // patch) * -(-w // patch) + x // patch
    assert r.count == -(-h // patch) * -(-w // patch) == len(np.unique(r.labels))


def test_order_breaks_ties_by_patch_index():
    scores = np.array([1.0, 3.0, 3.0, -2.0, 1.0])
    assert perturb.order(scores, "morf").tolist() == [1, 2, 0, 4, 3]
    assert perturb.order(scores, "lerf").tolist() == [3, 0, 4, 1, 2]


@pytest.mark.parametrize("count,steps", [(49, 50), (196, 50), (7, 3), (1, 5)])
def test_step_counts(count, steps):
    c = perturb.step_counts(count, steps)
    assert c[0] == 0 and c[-1] == count and len(c) == min(steps, count) + 1 and (np.diff(c) >= 0).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_perturbed_inputs_equal_a_plain_reference(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 10, 7)).astype(np.float32)
    base = rng.standard_normal(x.shape).astype(np.float32)
    heat = np.round(rng.standard_normal((10, 7)), 1)  # rounded: equal patch scores happen
    regions = perturb.Regions.patches(10, 7, 3)
    scores = regions.scores(heat)
    counts = perturb.step_counts(regions.count, 4)
    for how in ("morf", "lerf"):
        ranked = perturb.order(scores, how)
        got = list(perturb.perturbed(x, base, regions, ranked, counts))
        assert len(got) == len(counts) - 1
        for k, img in enumerate(got, start=1):
            want = x.copy()
            for r in ranked[:counts[k]]:  # plain loops: every pixel of every removed patch
                for yy in range(10):
                    for xx in range(7):
                        if (yy // 3) * 3 + xx // 3 == r:
                            want[:, yy, xx] = base[:, yy, xx]
            np.testing.assert_array_equal(img, want)


def test_baselines():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 12, 9)).astype(np.float32)
    blur = perturb.baseline(x, "blur", 4, rng)
    assert blur.shape == x.shape and blur.std() < x.std()  # detail taken away
    np.testing.assert_allclose(blur.mean(axis=(1, 2)), x.mean(axis=(1, 2)), atol=0.1)  # colour kept
    np.testing.assert_allclose(perturb.baseline(x, "mean", 4, rng), x.mean(axis=(1, 2), keepdims=True) + 0 * x)
    assert not perturb.baseline(x, "zeros", 4, rng).any()
    noise = perturb.baseline(x, "noise", 4, rng)
    assert noise.min() >= x.min() and noise.max() <= x.max() and abs(np.corrcoef(noise.ravel(), x.ravel())[0, 1]) < 0.2


# ----------------------------------------------------------------------------- a linear model, by hand


def _linear_model(rng, c=2, h=8, w=8, classes=3):
    W = rng.standard_normal((c * h * w, classes)).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["X"], ["f"], name="flat"), helper.make_node("MatMul", ["f", "W"], ["Y"], name="fc")]
    return models.make_model(nodes, [models.vi("X", ["N", c, h, w])], [models.vi("Y", None)], {"W": W}), W


def _evaluate_linear(tmp_path, model, x: np.ndarray, methods: str) -> dict:
    """evaluate.json of ``x`` (1, 3, 8, 8) through ``model``: 3-px patches, 5 steps, zero baseline."""
    path = models.save(model, tmp_path / "lin.onnx")
    np.save(tmp_path / "x.npy", x[0])
    res = lrpath("evaluate", path, tmp_path / "x.npy", "--out", tmp_path / "out", "--methods", methods,
                 "--patch", "3", "--steps", "5", "--baseline", "zeros", "--layout", "nchw")
    assert res.returncode == 0, res.stderr
    return json.loads((tmp_path / "out" / "evaluate.json").read_text())


def _linear_curve(W: np.ndarray, x: np.ndarray, t: int, how: str) -> list[float]:
    """The curve of ``f = W·x`` under its exact gradient × input map, by hand: removing a patch
    lowers the logit by exactly the map's sum over it."""
    contrib = (W[:, t].reshape(3, 8, 8) * x[0]).astype(np.float64)
    regions = perturb.Regions.patches(8, 8, 3)
    per_patch = regions.scores(contrib.sum(0))
    ranked = perturb.order(per_patch, how)
    return [1.0 - per_patch[ranked[:c]].sum() / abs(contrib.sum()) for c in perturb.step_counts(regions.count, 5)]


def test_aopc_of_gradient_x_input_on_a_linear_model_is_what_the_algebra_says(tmp_path):
    """For ``f = W·x`` and a zero baseline, removing a patch lowers the logit by exactly its
    gradient × input sum; the curves and AOPCs follow by hand."""
    rng = np.random.default_rng(5)
    model, W = _linear_model(rng, c=3)
    x = rng.uniform(0, 1, (1, 3, 8, 8)).astype(np.float32)
    doc = _evaluate_linear(tmp_path, model, x, "gradient-x-input,random")
    t = int((x.reshape(1, -1) @ W).argmax())
    rec = next(m for m in doc["methods"] if m["name"] == "gradient-x-input")
    for how in ("morf", "lerf"):
        curve = _linear_curve(W, x, t, how)
        np.testing.assert_allclose(rec[f"{how}_curve"], curve, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(rec[f"{how}_aopc"], np.mean(1 - np.array(curve)), rtol=1e-4, atol=1e-5)
    assert rec["abpc"] == pytest.approx(rec["morf_aopc"] - rec["lerf_aopc"])
    assert doc["methods"][0]["name"] == "gradient-x-input"  # ranked first: it is exact here
    assert doc["images"][0]["target"]["index"] == t


def test_nhwc_models_are_perturbed_in_their_own_layout(tmp_path):
    """An NHWC model (tf2onnx): patches are spatial whatever the layout — the same numbers as
    the NCHW twin of the same linear model."""
    rng = np.random.default_rng(6)
    nchw, W = _linear_model(rng, c=3, h=6, w=6)
    nodes = [helper.make_node("Transpose", ["X"], ["xt"], name="to_nchw", perm=[0, 3, 1, 2]),
             helper.make_node("Flatten", ["xt"], ["f"], name="flat"), helper.make_node("MatMul", ["f", "W"], ["Y"], name="fc")]
    nhwc = models.make_model(nodes, [models.vi("X", ["N", 6, 6, 3])], [models.vi("Y", None)], {"W": W})
    x = rng.uniform(0, 1, (3, 6, 6)).astype(np.float32)
    np.save(tmp_path / "a.npy", x)
    np.save(tmp_path / "b.npy", np.moveaxis(x, 0, -1))
    docs = []
    for name, model, inp, layout in (("nchw", nchw, "a.npy", "nchw"), ("nhwc", nhwc, "b.npy", "nhwc")):
        res = lrpath("evaluate", models.save(model, tmp_path / f"{name}.onnx"), tmp_path / inp, "--out",
                     tmp_path / name, "--methods", "gradient-x-input", "--patch", "2", "--steps", "9",
                     "--baseline", "mean", "--layout", layout)
        assert res.returncode == 0, res.stderr
        docs.append(json.loads((tmp_path / name / "evaluate.json").read_text()))
    a, b = (d["methods"][0] for d in docs)
    np.testing.assert_allclose(a["morf_curve"], b["morf_curve"], rtol=1e-5)
    np.testing.assert_allclose(a["lerf_curve"], b["lerf_curve"], rtol=1e-5)


# ----------------------------------------------------------------------------- gradients


def _gradient_net(kind: str, rng):
    """A small model per layer family, so every handler's gradient step is exercised."""
    n = helper.make_node
    w = lambda *s: (rng.standard_normal(s) * 0.5).astype(np.float32)  # noqa: E731
    head = [n("GlobalAveragePool", ["h"], ["p"], name="gap"), n("Flatten", ["p"], ["f"], name="flat"),
            n("Gemm", ["f", "Wd", "Bd"], ["Y"], name="fc")]
    inits = {"W1": w(4, 3, 3, 3), "B1": w(4), "Wd": w(4, 5), "Bd": w(5)}
    body = [n("Conv", ["X", "W1", "B1"], ["c"], name="conv1", kernel_shape=[3, 3], pads=[1] * 4, strides=[1, 2])]
    if kind == "relu_maxpool":
        body += [n("Relu", ["c"], ["r"], name="relu"), n("MaxPool", ["r"], ["h"], name="pool", kernel_shape=[2, 2],
                                                          strides=[2, 2])]
    elif kind == "silu_avgpool":
        body += [n("Sigmoid", ["c"], ["s"], name="a/Sigmoid"), n("Mul", ["c", "s"], ["m"], name="a/Mul"),
                 n("AveragePool", ["m"], ["h"], name="pool", kernel_shape=[3, 3], pads=[1] * 4)]
    elif kind == "gelu_resize":
        body += [n("Gelu", ["c"], ["g"], name="gelu"),
                 n("Resize", ["g", "", "sc"], ["h"], name="up", mode="linear")]
        inits["sc"] = np.asarray([1, 1, 2, 2], np.float32)
    elif kind == "gate_merge":
        body += [n("Relu", ["c"], ["r"], name="relu"), n("GlobalAveragePool", ["r"], ["q"], name="se/pool"),
                 n("Conv", ["q", "Wse"], ["e"], name="se/conv", kernel_shape=[1, 1]),
                 n("HardSigmoid", ["e"], ["gt"], name="se/gate"), n("Mul", ["r", "gt"], ["m"], name="se/scale"),
                 n("Add", ["m", "c"], ["h"], name="sum")]
        inits["Wse"] = w(4, 4, 1, 1)
    elif kind == "pad_concat_tanh":
        body += [n("Tanh", ["c"], ["t"], name="tanh"),
                 n("Pad", ["t", "pads"], ["pd"], name="pad"),
                 n("Conv", ["pd", "W2"], ["c2"], name="conv2", kernel_shape=[3, 3]),
                 n("Concat", ["c2", "t"], ["h0"], name="cat", axis=1),
                 n("Conv", ["h0", "W3"], ["h"], name="conv3", kernel_shape=[1, 1])]
        inits.update(pads=np.asarray([0, 0, 1, 1, 0, 0, 1, 1], np.int64), W2=w(2, 4, 3, 3), W3=w(4, 6, 1, 1))
    else:
        raise ValueError(kind)
    return models.make_model(body + head, [models.vi("X", ["N", 3, 8, 9])], [models.vi("Y", None)], inits, opset=20)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kind", ["relu_maxpool", "silu_avgpool", "gelu_resize", "gate_merge", "pad_concat_tanh"])
def test_gradient_equals_finite_differences(tmp_path, kind, seed):
    rng = np.random.default_rng(seed)
    an = Analyzer(models.save(_gradient_net(kind, rng), tmp_path / "g.onnx"))
    x = rng.standard_normal((2, 3, 8, 9))
    got = an.gradient(x.astype(np.float32), dtype=np.float64)
    h = 1e-5
    for i in range(2):
        t = got.targets[i]
        for flat in rng.choice(x[i].size, 25, replace=False):  # central differences of the float64 canonical forward
            idx = np.unravel_index(flat, x[i].shape)
            up, dn = x[i:i + 1].copy(), x[i:i + 1].copy()
            up[(0, *idx)] += h
            dn[(0, *idx)] -= h
            fd = (canonical_forward(an.graph, up)[0, t] - canonical_forward(an.graph, dn)[0, t]) / (2 * h)
            assert got.relevance[(i, *idx)] == pytest.approx(fd, rel=1e-4, abs=1e-6)


# ----------------------------------------------------------------------------- the sanity check


def test_randomisation_touches_only_the_layers_it_names(tmp_path):
    rng = np.random.default_rng(1)
    path = models.save(_gradient_net("pad_concat_tanh", rng), tmp_path / "m.onnx")
    an = Analyzer(path)
    groups = weight_groups(an.graph, 3)
    assert [n for g in groups for n in g] == ["fc", "conv3", "conv2", "conv1"]
    before = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    for chosen in (groups[0], groups[0] + groups[1]):
        after = {t.name: numpy_helper.to_array(t) for t in randomized(path, an.graph, chosen, 0).graph.initializer}
        touched = {s for name in chosen for s in an.graph.find(name).sources}
        for name, value in before.items():
            if name in touched:
                assert not np.array_equal(after[name], value) and after[name].shape == value.shape
            else:
                np.testing.assert_array_equal(after[name], value)
    # a cascade keeps what it already randomised
    a = randomized(path, an.graph, ["fc"], 0)
    b = randomized(path, an.graph, ["fc", "conv3"], 0)
    get = lambda m, n: numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == n))  # noqa: E731
    np.testing.assert_array_equal(get(a, "Wd"), get(b, "Wd"))


def test_spearman_and_ssim():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((12, 10))
    assert spearman(a, a) == pytest.approx(1.0) and spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, np.exp(a)) == pytest.approx(1.0)  # ranks only
    assert spearman([1, 1, 2], [1, 1, 2]) == pytest.approx(1.0)  # ties
    assert ssim(a, a) == pytest.approx(1.0) and ssim(a, rng.standard_normal((12, 10))) < 0.5


# ----------------------------------------------------------------------------- CLI


def test_a_final_softmax_is_left_out_as_explain_leaves_it_out(tmp_path):
    """A model ending in Softmax: the curves perturb the explained logit, not its probability
    (the plain session fetches the tensor before the Softmax), so they are the linear model's."""
    rng = np.random.default_rng(8)
    model, W = _linear_model(rng, c=3)
    model.graph.node.append(helper.make_node("Softmax", ["Y"], ["P"], name="softmax", axis=1))
    model.graph.output[0].name = "P"
    x = rng.uniform(0, 1, (1, 3, 8, 8)).astype(np.float32)
    doc = _evaluate_linear(tmp_path, model, x, "gradient-x-input")
    logits = (x.reshape(1, -1) @ W)[0].astype(np.float64)
    t = int(logits.argmax())
    assert doc["images"][0]["logit"] == pytest.approx(logits[t], rel=1e-5)
    np.testing.assert_allclose(doc["methods"][0]["morf_curve"], _linear_curve(W, x, t, "morf"), rtol=1e-4, atol=1e-5)


def test_the_logit_copy_of_a_softmax_model_leaves_external_weights_where_they_are(tmp_path, monkeypatch):
    """The plain session that fetches the logit before a final Softmax runs a copy of the
    model with one more output; weights stored beside the model (as every model past
    protobuf's 2 GB stores them) stay in their file, not copied into it."""
    import onnx
    import onnxruntime as ort

    from lrpath_onnx.cli.evaluate_cmd import plain_forward

    rng = np.random.default_rng(9)
    model, W = _linear_model(rng, c=3)
    model.graph.node.append(helper.make_node("Softmax", ["Y"], ["P"], name="softmax", axis=1))
    model.graph.output[0].name = "P"
    (tmp_path / "m").mkdir()
    onnx.save_model(model, str(tmp_path / "m" / "lin.onnx"), save_as_external_data=True, location="lin.weights",
                    size_threshold=0)
    weights = (tmp_path / "m" / "lin.weights").stat().st_size
    sizes = []
    real = ort.InferenceSession

    def recording(data, *args, **kwargs):
        sizes.append(len(data) if isinstance(data, bytes) else None)
        return real(data, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", recording)
    x = rng.uniform(0, 1, (2, 3, 8, 8)).astype(np.float32)
    got = plain_forward(tmp_path / "m" / "lin.onnx", "cpu", None, inner="Y")(x)
    np.testing.assert_allclose(got, x.reshape(2, -1) @ W, rtol=1e-5, atol=1e-6)
    assert sizes and sizes[0] < weights / 4  # the graph alone


def test_an_image_whose_explained_logit_is_near_zero_is_named(tmp_path):
    """The curves divide by the explained logit: an image whose logit is almost 0 gets AOPCs far
    beyond the ±2 a sign flip gives and swamps the means, so evaluate names it (stderr, JSON)."""
    from lrpath_onnx.evaluate.run import near_zero_logit

    clear = {"name": "a", "logit": 3.0, "methods": {"auto": {"morf_aopc": 0.7, "lerf_aopc": -0.1}}}
    tiny = {"name": "b", "logit": 7e-4, "methods": {"auto": {"morf_aopc": 0.4, "lerf_aopc": -74.6},
                                                    "random": {"morf_aopc": 1.0, "lerf_aopc": 1.0}}}
    assert near_zero_logit(clear) == []
    assert near_zero_logit(tiny) == ["b: the explained logit 0.0007 is small against how far perturbing moves it "
                                     "(curves divided by it reach an AOPC of 74.6), so it dominates the means: "
                                     "explain a class it clearly scores (--target) or leave it out"]
    flat = {"name": "c", "logit": 0.0, "methods": {"auto": {"morf_aopc": 0.0, "lerf_aopc": 0.0}}}
    assert near_zero_logit(flat) == ["c: the explained logit is exactly 0, so its curves are flat and score "
                                     "nothing: explain a class it scores (--target) or leave it out"]
    rng = np.random.default_rng(2)
    model, W = _linear_model(rng, c=3)
    path = models.save(model, tmp_path / "lin.onnx")
    x = rng.uniform(0, 1, (3, 8, 8)).astype(np.float32)
    t = int((x.reshape(1, -1) @ W).argmin())
    x -= (W[:, t] * (x.reshape(-1) @ W[:, t] - 1e-4) / (W[:, t] @ W[:, t])).reshape(3, 8, 8)  # logit t now 1e-4
    np.save(tmp_path / "x.npy", x)
    res = lrpath("evaluate", path, tmp_path / "x.npy", "--out", tmp_path / "out", "--methods", "gradient-x-input",
                 "--patch", "3", "--steps", "5", "--baseline", "zeros", "--layout", "nchw", "--target", t)
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "out" / "evaluate.json").read_text())
    assert doc["images"][0]["logit"] == pytest.approx(1e-4, abs=2e-6)
    assert len(doc["warnings"]) == 1 and doc["warnings"][0].startswith("x: the explained logit 0.0001")
    assert "is small against how far perturbing moves it" in doc["warnings"][0]
    assert f"warning: {doc['warnings'][0]}" in res.stderr


def test_a_method_whose_maps_do_not_conserve_is_named():
    from lrpath_onnx.evaluate.run import not_conserving

    assert not_conserving("auto", [0.9, 1.1, 0.99]) == [] and not_conserving("gradient", None) == []
    assert not_conserving("auto", [None]) == [] and not_conserving("auto", [0.5, 2.0]) == []
    assert not_conserving("epsilon-gamma-box", [0.01, 0.03, None, 0.02]) == [
        "epsilon-gamma-box: its heatmaps hold a median 0.02 of the explained logit (conservation ratio, 0.01 to 0.03 "
        "over 3 image(s)); the rest went to biases and stabilisers, so its scores rank the order of its patches, "
        "not the amounts: the `conserving` preset keeps the ratio near 1"]
    assert "median 2.75 of the explained logit (conservation ratio, 2.5 to 3 over 2 image(s)); more than the " \
        "logit: relevance was created on the way" in not_conserving("auto", [2.5, 3.0])[0]
    assert "median -0.05 " in not_conserving("auto", [-0.4, 0.3])[0]
    assert "the opposite sign to the logit, so" in not_conserving("auto", [-0.4, 0.3])[0]
    assert "median 0 of the explained logit" in not_conserving("auto", [0.0])[0]
    assert "the rest went to biases and stabilisers" in not_conserving("auto", [0.0])[0]


def test_conservation_ratios_of_a_biased_linear_model(tmp_path):
    """f = W·x + b with a large b: LRP-ε's map holds W·x of the logit W·x + b, per image; the
    gradient's map has no ratio."""
    rng = np.random.default_rng(7)
    W = rng.uniform(0, 1, (3 * 8 * 8, 3)).astype(np.float32)
    b = np.full(3, 200.0, np.float32)
    nodes = [helper.make_node("Flatten", ["X"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "W", "B"], ["Y"], name="fc")]
    path = models.save(models.make_model(nodes, [models.vi("X", ["N", 3, 8, 8])], [models.vi("Y", None)],
                                         {"W": W, "B": b}), tmp_path / "biased.onnx")
    xs = rng.uniform(0, 1, (2, 3, 8, 8)).astype(np.float32)
    for i, x in enumerate(xs):
        np.save(tmp_path / f"x{i}.npy", x)
    res = lrpath("evaluate", path, tmp_path / "x0.npy", tmp_path / "x1.npy", "--out", tmp_path / "out", "--methods",
                 "epsilon-plus,gradient", "--patch", "4", "--steps", "4", "--baseline", "zeros", "--layout", "nchw")
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "out" / "evaluate.json").read_text())
    want = []
    for i, x in enumerate(xs):
        wx = x.reshape(-1).astype(np.float64) @ W
        t = int(wx.argmax())
        want.append(wx[t] / (wx[t] + 200.0))
        rec = doc["images"][i]["methods"]
        assert rec["epsilon-plus"]["conservation_ratio"] == pytest.approx(want[-1], rel=1e-4)
        assert rec["gradient"]["conservation_ratio"] is None
    by = {m["name"]: m for m in doc["methods"]}
    assert by["epsilon-plus"]["conservation_ratio_median"] == pytest.approx(np.median(want), rel=1e-4)
    assert by["gradient"]["conservation_ratio_median"] is None
    assert len(doc["warnings"]) == 1 and doc["warnings"][0].startswith("epsilon-plus: its heatmaps hold a median 0.1")
    assert f"warning: {doc['warnings'][0]}" in res.stderr
    row = next(line for line in res.stdout.splitlines() if line.startswith("epsilon-plus"))
    assert row.split()[-1] == f"{np.median(want):.3g}"


def test_evaluate_cli_on_the_shipped_digits(tmp_path):
    out = tmp_path / "out"
    res = lrpath("evaluate", "mnist-vgg", *sorted(DIGITS.glob("digit_*.png")), "--out", out,
                 "--methods", "auto,gradient,gradient-x-input,random", "--sanity", "--sanity-steps", "3")
    assert res.returncode == 0, res.stderr
    doc = json.loads((out / "evaluate.json").read_text())
    names = [m["name"] for m in doc["methods"]]
    assert sorted(names) == ["auto", "gradient", "gradient-x-input", "random"] and len(doc["images"]) == 10
    by = {m["name"]: m for m in doc["methods"]}
    assert by["auto"]["abpc"] > by["random"]["abpc"] + 0.3 and by["auto"]["morf_aopc"] > by["gradient"]["morf_aopc"]
    for m in doc["methods"]:
        assert m["abpc_ci"][0] <= m["abpc"] <= m["abpc_ci"][1]
        assert len(m["morf_curve"]) == 50 and m["morf_curve"][0] == 1.0
    assert doc["settings"]["patch"] == 4 and doc["throughput"]["perturbed_inputs"] == 10 * 4 * 2 * 49
    assert Image.open(out / "curves.png").size == (1000, 1040)
    assert "auto" in res.stdout and "ABPC" in res.stdout
    assert doc["warnings"] == [] and "warning" not in res.stderr  # every digit's logit is clear of 0, auto conserves
    assert 0.9 < by["auto"]["conservation_ratio_median"] < 1.1 and by["gradient"]["conservation_ratio_median"] is None
    sanity = json.loads((out / "sanity.json").read_text())
    assert [m["name"] for m in sanity["methods"]] == ["auto", "gradient", "gradient-x-input"]
    assert len(sanity["steps"]) == 3 and sanity["steps"][-1]["randomized"][-1] == "features.0"
    assert all(-1 <= v["spearman_abs"] <= 1 for s in sanity["steps"] for v in s["methods"].values())
    assert Image.open(out / "sanity.png").size[0] > 600
    assert sum("sanity " in line for line in res.stdout.splitlines()) == 3


@pytest.mark.parametrize("args,fragment", [
    (["--methods", "lrp-magic"], "unknown method 'lrp-magic'"),
    (["--methods", "auto,auto"], "names a method twice"),
    (["--patch", "0"], "--patch"),
])
def test_evaluate_bad_input_is_one_line(tmp_path, args, fragment):
    out = tmp_path / "out"
    assert_one_line_error(lrpath("evaluate", "mnist-vgg", DIGITS / "digit_3.png", "--out", out, *args), fragment, out=out)


def test_audit_faithfulness_check(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for d in (1, 3, 7):
        shutil.copy(DIGITS / f"digit_{d}.png", images)
    out = tmp_path / "out"
    res = lrpath("audit", "mnist-vgg", "--images", images, "--out", out, "--checks", "faithfulness")
    assert res.returncode == 0, res.stderr
    doc = json.loads((out / "audit.json").read_text())
    for r in doc["images"]:
        c = r["checks"]["faithfulness"]
        assert c["passed"] and c["value"] > 0.05 and "for a random heatmap" in c["message"]
    junit = (out / "junit.xml").read_text()
    assert 'name="lrpath.audit.faithfulness"' in junit
    # an impossible threshold fails every image: exit 1
    res = lrpath("audit", "mnist-vgg", "--images", images, "--out", tmp_path / "o2", "--checks", "faithfulness",
                 "--faithfulness-min-gain", "5")
    assert res.returncode == 1
