"""What a new user trips over, through the real CLI and the API: images the right way up,
names as people type them, classes by name, notices, pictures with a scale."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lrpath_onnx import Analyzer
from lrpath_onnx.names import class_names, did_you_mean, resolve_class
from tests.test_cli import assert_one_line_error, lrpath

DIGITS = Path(__file__).parent.parent / "models" / "digits"


def _rotated_jpeg(path: Path, digit: int) -> Path:
    """The digit as a phone stores it: pixels turned 90° clockwise, EXIF orientation 6 to undo it."""
    img = Image.open(DIGITS / f"digit_{digit}.png").convert("RGB").resize((112, 112))
    stored = img.transpose(Image.Transpose.ROTATE_90)  # on its side; orientation 6 turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, "JPEG", exif=exif, quality=98)
    return path


def test_exif_orientation_is_applied_before_anything_else(tmp_path):
    photo = _rotated_jpeg(tmp_path / "seven.jpg", 7)
    res = lrpath("explain", "mnist-vgg", photo, "--out", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "out" / "seven" / "explanation.json").read_text())
    assert doc["target"]["index"] == 7  # as stored (on its side) it is not a 7
    an = Analyzer("mnist-vgg")
    upright = an.preprocess(photo)
    as_stored = an.preprocess(Image.fromarray(np.asarray(Image.open(photo))))  # the pixels without their EXIF
    assert an.forward(upright)[an.graph.output].argmax() == 7
    assert np.abs(upright - an.preprocess(DIGITS / "digit_7.png")).mean() < 0.05
    assert np.abs(as_stored - upright).mean() > 0.05


def test_api_takes_zoo_names_and_layer_names():
    an = Analyzer("mnist-vgg")
    x = an.preprocess(DIGITS / "digit_3.png")
    assert x.shape == (1, 1, 28, 28) and float(an.low.max()) == 0.0 and float(an.high.min()) == 1.0
    exp = an.explain(x, keep=["features.7"])
    again = an.relevance_from(x, "features.7", exp.kept["features.7"])  # a layer name, as keep= takes it
    np.testing.assert_allclose(again.relevance, exp.relevance, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("args,fragment", [
    (["explain", "mnist-vg", "x.png"], "did you mean the zoo model 'mnist-vgg'"),
    (["explain", "mnist-vgg", "x.png", "--target", "features.77:1"], "did you mean 'features.7'"),
    (["explain", "mnist-vgg", "x.png", "--preset", "conserve"], "did you mean 'conserving'"),
    (["explain", "mnist-vgg", "x.png", "--rule", "features.0=gama"], "did you mean 'gamma'"),
    (["explain", "mnist-vgg", "x.png", "--target", "seven"], "is not a class name"),
])
def test_typos_get_a_close_name(tmp_path, args, fragment):
    shutil.copy(DIGITS / "digit_3.png", tmp_path / "x.png")
    out = tmp_path / "out"
    res = lrpath(*args, "--out", out, cwd=tmp_path)
    assert_one_line_error(res, fragment, out=out)


def test_classes_by_name_and_synonym():
    labels = ["tench, Tinca tinca", "tiger cat", "bobsled, bobsleigh, bob", "Egyptian cat"]
    assert resolve_class("tiger cat", labels, 4, "--target") == 1
    assert resolve_class("bobsleigh", labels, 4, "--target") == 2
    assert resolve_class("BOB", labels, 4, "--target") == 2
    assert resolve_class("3", labels, 4, "--target") == 3
    assert class_names(["a, x", "b, x"]).get("x") is None  # a synonym two classes share names neither
    with pytest.raises(Exception, match="did you mean 'Egyptian cat'"):
        resolve_class("egyptain cat", labels, 4, "--target")
    assert did_you_mean("zzz", ["abc"]) == ""


def test_target_and_expect_take_class_names(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(["zero, nought", "one", "two", "three, trio", "four", "five", "six", "seven",
                                 "eight", "nine"]) + "\n")
    res = lrpath("explain", "mnist-vgg", DIGITS / "digit_3.png", "--out", tmp_path / "o", "--labels", labels,
                 "--target", "trio")
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "o" / "digit_3" / "explanation.json").read_text())["target"]["index"] == 3
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(DIGITS / "digit_0.png", images)
    shutil.copy(DIGITS / "digit_3.png", images)
    (tmp_path / "expect.csv").write_text("file,label\ndigit_0.png,nought\ndigit_3.png,Three\n")
    res = lrpath("audit", "mnist-vgg", "--images", images, "--out", tmp_path / "a", "--labels", labels,
                 "--expect", tmp_path / "expect.csv")
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert [r["checks"]["prediction"]["passed"] for r in doc["images"]] == [True, True]


def test_a_two_axis_npy_gets_its_channel_axis(tmp_path):
    img = np.asarray(Image.open(DIGITS / "digit_5.png"), np.float32) / 255
    np.save(tmp_path / "five.npy", img)  # (28, 28) for a (1, 1, 28, 28) model
    res = lrpath("explain", "mnist-vgg", tmp_path / "five.npy", "--out", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    assert np.load(tmp_path / "out" / "five" / "relevance.npy").shape == (1, 28, 28)


def test_audit_says_what_it_skipped_and_recurses_on_request(tmp_path):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    shutil.copy(DIGITS / "digit_1.png", images)
    shutil.copy(DIGITS / "digit_2.png", images / "sub")
    (images / "notes.txt").write_text("not an image")
    res = lrpath("audit", "mnist-vgg", "--images", images, "--out", tmp_path / "a")
    assert res.returncode == 0 and "skipped 2 entries" in res.stderr and "--recursive" in res.stderr
    assert json.loads((tmp_path / "a" / "audit.json").read_text())["summary"]["images"] == 1
    res = lrpath("audit", "mnist-vgg", "--images", images, "--out", tmp_path / "b", "--recursive")
    assert res.returncode == 0 and "skipped 1 entry" in res.stderr
    assert json.loads((tmp_path / "b" / "audit.json").read_text())["summary"]["images"] == 2


def test_heatmaps_have_a_scale_and_overlays_show_negative_relevance(tmp_path):
    res = lrpath("explain", "mnist-vgg", DIGITS / "digit_8.png", "--out", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    folder = tmp_path / "out" / "digit_8"
    rel = np.load(folder / "relevance.npy")[0]
    heat = np.asarray(Image.open(folder / "heatmap.png").convert("RGB")).astype(int)
    assert heat.shape[0] > heat.shape[1] >= 224  # the colour bar and its labels under the map
    bar = heat[230:236, 10:-10]
    assert (bar[:, :20, 2] > 200).all() and (bar[:, :20, 0] < 80).all()  # full blue on the left
    assert (bar[:, -20:, 0] > 200).all() and (bar[:, -20:, 2] < 80).all()  # full red on the right
    over = np.asarray(Image.open(folder / "overlay.png").convert("RGB")).astype(int)
    neg = np.kron(rel < -0.25 * np.abs(rel).max(), np.ones((8, 8), bool))  # 28 → 224
    assert neg.any()
    bluish = over[..., 2] - over[..., 0]
    assert (bluish[neg] > 20).mean() > 0.5  # negative relevance is visible as blue on the overlay


def test_building_a_zoo_model_says_so(tmp_path, monkeypatch):
    from lrpath_onnx.models import registry

    built = tmp_path / "m.onnx"
    shutil.copy(Path(registry.__file__).parent / "mnist_vgg.onnx", built)
    entry = registry.ZooEntry(name="demo-built", description="", source="", license="", preprocessing={},
                              locate=lambda: built if built.exists() and built.stat().st_size and flag else None,
                              build=lambda: (flag.append(1), built)[1])
    flag: list = []
    import io
    import sys

    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert entry.path() == built
    assert "note: building 'demo-built'" in err.getvalue()


def test_nearly_flat_curves_get_an_axis_that_shows_they_are_flat():
    from lrpath_onnx.viz.curve import y_range

    lo, hi = y_range([196.525, 196.527, 196.53])
    assert hi - lo >= 19.6 and lo <= 196.525 and hi >= 196.53
    assert y_range([0.0, 0.5, 1.0]) == (0.0, 1.0)  # a real change keeps its own span
    lo, hi = y_range([0.0, 0.0001, 0.0002, 1e-5])
    assert lo == 0.0 and hi >= 0.0002  # non-negative values do not get a negative axis


def test_help_matches_behaviour():
    for cmd, absent in (("audit", "--target"), ("report", "--target"), ("deconv", "--preset"),
                        ("deconv", "--rule")):
        res = lrpath(cmd, "--help")
        assert res.returncode == 0 and absent not in res.stdout, (cmd, absent)
    assert "[MODEL] INPUT..." not in lrpath("audit", "--help").stdout
    assert "[MODEL] IMAGE" in lrpath("report", "--help").stdout
    assert "%%" not in lrpath("audit", "--help").stdout


def test_every_rule_text_lrpath_prints_can_be_typed_back(tmp_path):
    """`plan --presets` lists rules as NAME:ITEMS, the plan table as NAME(ITEMS): both go into --rule."""
    listed = lrpath("plan", "--presets").stdout.split("rules (for --rule")[1].splitlines()[1:]
    texts = [line.split()[0] for line in listed if line.strip()]
    assert "gamma:gamma=0.25,stabilizer=1e-06" in texts and len(texts) >= 9
    table = lrpath("plan", "mnist-vgg", "--rule", "features.2=zplus:nobias", "--rule", "features.5=gamma:gamma=0.5")
    row = {l.split()[1]: l.split()[3] for l in table.stdout.splitlines() if l[:1].isdigit()}
    assert row["features.2"] == "zplus(nobias)*" and row["features.5"] == "gamma(gamma=0.5)*"
    for text in [t for t in texts if t.split(":")[0] not in ("zbox", "ratio")] + [row["features.5"][:-1]]:
        res = lrpath("plan", "mnist-vgg", "--rule", f"features.2={text}", "--json")
        assert res.returncode == 0, (text, res.stderr)
        rule = json.loads(res.stdout)["rules"][2]
        assert rule["source"] == "override" and rule["rule"] == text.split(":")[0].split("(")[0].replace(
            "alpha2beta1", "alphabeta"), text


def test_neurons_are_named_layer_channel_at_position(tmp_path):
    """A backbone's outputs are neurons: its target and top-5 say layer:channel@(y, x), also
    through a trailing NHWC transpose, and that form is accepted back as a --target."""
    from onnx import helper, numpy_helper

    from lrpath_onnx.api import NeuronTarget, parse_target
    from tests import models

    assert str(NeuronTarget("block5_pool", 53, 2, 2)) == "block5_pool:53@(2, 2)"
    assert parse_target("block5_pool:53@(2, 2)") == parse_target("block5_pool:53:2:2") == NeuronTarget("block5_pool", 53, 2, 2)
    rng = np.random.default_rng(0)
    model, _, _ = models.conv_model(rng, (1, 2, 5, 6), 3)
    nhwc = models.make_model(list(model.graph.node) + [helper.make_node("Transpose", ["Y"], ["Z"], name="to_nhwc",
                                                                        perm=[0, 2, 3, 1])],
                             [models.vi("X", ["N", 2, 5, 6])], [models.vi("Z", None)],
                             {i.name: numpy_helper.to_array(i) for i in model.graph.initializer})
    plain, trans = (Analyzer(models.save(m, tmp_path / f"{n}.onnx")) for m, n in ((model, "plain"), (nhwc, "nhwc")))
    c, y, x = 2, 3, 4
    assert plain.output_neuron(int(np.ravel_multi_index((c, y, x), (3, 5, 6)))) == NeuronTarget("conv", c, y, x)
    assert trans.output_neuron(int(np.ravel_multi_index((y, x, c), (5, 6, 3)))) == NeuronTarget("conv", c, y, x)
    np.save(tmp_path / "x.npy", rng.standard_normal((1, 2, 5, 6)).astype(np.float32))
    res = lrpath("explain", tmp_path / "nhwc.onnx", tmp_path / "x.npy", "--out", tmp_path / "o")  # 2 channels: .npy only
    assert res.returncode == 0, res.stderr
    info = json.loads((tmp_path / "o" / "x" / "explanation.json").read_text())
    z = trans.forward(np.load(tmp_path / "x.npy"))[trans.graph.output].reshape(-1)
    best = int(z.argmax())
    assert info["target"] == {"neuron": str(trans.output_neuron(best)), "index": best}
    assert [t["index"] for t in info["top5"]] == list(np.argsort(-z, kind="stable")[:5])
    assert all(t["neuron"].startswith("conv:") and "@(" in t["neuron"] for t in info["top5"])
    assert info["target"]["neuron"] in res.stdout
