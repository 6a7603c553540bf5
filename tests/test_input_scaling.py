"""A model that rescales its pixels itself (a Keras ``Rescaling(1/255)``) gets them as 0–255;
one that normalises 0–1 values (by a std, ×4.4) or subtracts a caffe mean (×1) does not."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import helper
from PIL import Image

from lrpath_onnx import Analyzer
from lrpath_onnx.graph.input_scaling import input_scaling
from tests import models
from tests.test_cli import lrpath


def scaled_model(path, steps, seed=0, nchw=False):
    """NHWC input → the element-wise ``steps`` ((op, constant) pairs) → Transpose → Conv →
    Relu → GlobalAveragePool → Flatten → Gemm (3 classes), as tf2onnx exports a Keras model;
    ``nchw``: an NCHW input and no Transpose, so a pure scaling is folded into the Conv."""
    rng = np.random.default_rng(seed)
    nodes, inits, t = [], {}, "input"
    for i, (op, value) in enumerate(steps):
        inits[f"c{i}"] = np.asarray(value, np.float32)
        nodes.append(helper.make_node(op, [t, f"c{i}"], [f"s{i}"], name=f"model/step{i}/{op}"))
        t = f"s{i}"
    inits["W"] = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    inits["D"] = rng.standard_normal((4, 3)).astype(np.float32)
    if nchw:
        nodes.append(helper.make_node("Identity", [t], ["nchw"], name="same"))
    else:
        nodes.append(helper.make_node("Transpose", [t], ["nchw"], name="to_nchw", perm=[0, 3, 1, 2]))
    nodes += [helper.make_node("Conv", ["nchw", "W"], ["c"], name="model/conv/Conv2D", kernel_shape=[3, 3]),
              helper.make_node("Relu", ["c"], ["r"], name="model/conv/Relu"),
              helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
              helper.make_node("Flatten", ["g"], ["f"], name="flat"),
              helper.make_node("Gemm", ["f", "D"], ["logits"], name="model/dense/MatMul")]
    shape = ["N", 3, 16, 16] if nchw else ["N", 16, 16, 3]
    return models.save(models.make_model(nodes, [models.vi("input", shape)],
                                         [models.vi("logits", None)], inits), path)


@pytest.mark.parametrize("steps,nchw,layer", [
    ([("Mul", 1 / 255)], False, "step0"),                                   # Rescaling(1/255)
    ([("Mul", 1 / 127.5), ("Add", -1.0)], False, "step0"),                  # Rescaling(1/127.5, offset=-1)
    ([("Mul", 1 / 255), ("Sub", [0.485, 0.456, 0.406]), ("Div", [0.229, 0.224, 0.225])], False, "step0"),
    ([("Sub", [123.7, 116.3, 103.5]), ("Div", [58.4, 57.1, 57.4])], False, "step1"),  # raw pixels, std in pixels
    ([("Mul", 1 / 255)], True, "conv"),                                     # x / 255 folded into the first conv
    ([("Sub", [0.485, 0.456, 0.406]), ("Div", [0.229, 0.224, 0.225])], False, None),  # 0–1 values normalised
    ([("Sub", [103.9, 116.8, 123.7])], False, None),                        # caffe: the mean only
    ([], False, None),
])
def test_which_models_rescale_their_pixels(tmp_path, steps, nchw, layer):
    an = Analyzer(scaled_model(tmp_path / "m.onnx", steps, nchw=nchw))
    found = input_scaling(an.graph)
    assert (found and found.layer) == layer
    if layer:
        assert found.scale == pytest.approx(
            np.prod([abs(np.max(v)) if op == "Mul" else 1 / abs(np.min(v)) if op == "Div" else 1.0
                     for op, v in steps]), rel=1e-6)
    assert an.preprocessing().scale == (1.0 if layer else 1 / 255)
    assert an.preprocessing(scale=0.5).scale == 0.5  # asked for: kept


def test_explain_feeds_raw_pixels_and_says_so(tmp_path):
    """The explanation of a photo through a Rescaling(1/255) model is that of the photo: the
    same logits as the model without it fed 0–1 values; the z^B box is the 0–255 pixels."""
    rng = np.random.default_rng(3)
    photo = tmp_path / "p.png"
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(photo)
    with_rescaling = scaled_model(tmp_path / "r.onnx", [("Mul", 1 / 255)])
    without = scaled_model(tmp_path / "n.onnx", [])
    res = lrpath("explain", with_rescaling, photo, "--out", tmp_path / "r")
    assert res.returncode == 0, res.stderr
    assert "note: the model rescales its input itself (x0.00392, from 'step0'), so pixels go in as 0-255" in res.stderr
    assert lrpath("explain", without, photo, "--out", tmp_path / "n").returncode == 0
    r = json.loads((tmp_path / "r" / "p" / "explanation.json").read_text())
    n = json.loads((tmp_path / "n" / "p" / "explanation.json").read_text())
    assert r["logit"] == pytest.approx(n["logit"], rel=1e-5)
    assert r["zbox_bounds"]["high"] == [255.0] * 3 and n["zbox_bounds"]["high"] == [1.0] * 3
    heat_r, heat_n = np.load(tmp_path / "r" / "p" / "relevance.npy"), np.load(tmp_path / "n" / "p" / "relevance.npy")
    np.testing.assert_allclose(heat_r.sum(), heat_n.sum(), rtol=1e-4)
    res = lrpath("explain", with_rescaling, photo, "--out", tmp_path / "s", "--scale", str(1 / 255))
    assert res.returncode == 0 and "rescales its input itself" not in res.stderr
