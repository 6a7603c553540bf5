"""Presets: ``auto`` chooses by structure and says why; ``conserving`` conserves on residual,
MobileNet-style and smooth-activation networks; explanations that do not conserve warn."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lrpath_onnx import Analyzer
from lrpath_onnx.diagnose import conservation_warnings
from lrpath_onnx.graph.layers import DenseLayer
from tests import zennit_models as zm

torch = pytest.importorskip("torch", reason="the torch fixtures need torch (pip install -e '.[test]')")
FIXTURES = Path(__file__).parent / "fixtures"
MNIST = Path(__file__).parent.parent / "models" / "mnist_vgg.onnx"


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    d = tmp_path_factory.mktemp("presets")
    return {name: zm.export(zm.build(name, 0), d / f"{name}.onnx") for name in zm.MODELS}


@pytest.mark.parametrize("name,applied,why", [
    ("vgg", "epsilon-gamma-box", "plain chain"),
    ("resnet", "conserving", "residual sum"),
    ("mobilenet", "conserving", "reading signed values"),
    ("smooth", "conserving", "residual sum"),
])
def test_auto_chooses_by_structure(nets, name, applied, why):
    plan = Analyzer(nets[name]).plan()
    assert plan.preset == "auto" and plan.applied == applied and why in plan.reason
    assert plan.describe().startswith(f"auto → {applied} (")


def test_auto_keeps_the_shipped_vgg_on_epsilon_gamma_box():
    plan = Analyzer(MNIST).plan()
    assert plan.applied == "epsilon-gamma-box"
    assert [e.rule.name for e in plan.entries if e.layer.kind == "linear"][:2] == ["zbox", "gamma"]


@pytest.mark.parametrize("name", zm.MODELS)
def test_conserving_preset_conserves(nets, name):
    an = Analyzer(nets[name], preset="conserving", low=-1.0, high=1.0)
    exp = an.explain(zm.inputs(7, n=4))
    for i in range(4):
        c = exp.conservation(i)
        assert c["ratio"] == pytest.approx(1.0, abs=2e-3)
        assert conservation_warnings(c, "conserving") == []
    with_bias = [e for e in an.plan().entries if getattr(e.layer, "bias", None) is not None]
    assert with_bias and all(not e.rule.bias for e in with_bias if e.rule.name != "zbox")


def test_conserving_uses_zplus_on_depthwise_convs(nets):
    plan = Analyzer(nets["mobilenet"], preset="conserving").plan()
    by = {e.layer.name: e.rule for e in plan.entries}
    depthwise = [l for l in plan.graph.layers if getattr(l, "geometry", None) is not None and l.geometry.groups > 1]
    assert depthwise and all(by[l.name].name == "zplus" for l in depthwise)


def test_non_conserving_explanations_warn(nets, tmp_path):
    an = Analyzer(nets["resnet"], preset="epsilon-gamma-box", low=-1.0, high=1.0)
    exp = an.explain(zm.inputs(7, n=1))
    (w,) = conservation_warnings(exp.conservation(0), "epsilon-gamma-box")
    assert "outside [0.5, 2]" in w and "most at" in w and "--preset conserving" in w
    # and the CLI says it on one line, and writes it into explanation.json
    np.save(tmp_path / "x.npy", zm.inputs(7, n=1)[0])
    res = subprocess.run([sys.executable, "-c", "from lrpath_onnx.cli.main import entry; entry()", "explain",
                          str(nets["resnet"]), str(tmp_path / "x.npy"), "--out", str(tmp_path / "out"),
                          "--preset", "epsilon-gamma-box", "--low", "-1", "--high", "1"],  # the inputs' range
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    lines = [l for l in res.stderr.splitlines() if l.startswith("warning:")]
    assert len(lines) == 1 and "x: only" in lines[0] or "x: conservation" in lines[0]
    doc = json.loads((tmp_path / "out" / "x" / "explanation.json").read_text())
    assert doc["warnings"] == [lines[0].split("warning: x: ", 1)[1]]
    assert doc["preset"] == "epsilon-gamma-box" and doc["preset_applied"] == "epsilon-gamma-box"


def test_conserving_default_writes_no_warning(nets, tmp_path):
    np.save(tmp_path / "x.npy", zm.inputs(7, n=1)[0])
    res = subprocess.run([sys.executable, "-c", "from lrpath_onnx.cli.main import entry; entry()", "explain",
                          str(nets["mobilenet"]), str(tmp_path / "x.npy"), "--out", str(tmp_path / "out"),
                          "--low", "-1", "--high", "1"], capture_output=True, text=True)  # the inputs' range
    assert res.returncode == 0 and "warning" not in res.stderr, res.stderr
    doc = json.loads((tmp_path / "out" / "x" / "explanation.json").read_text())
    assert doc["warnings"] == [] and doc["preset"] == "auto" and doc["preset_applied"] == "conserving"
    assert "residual sum" in doc["preset_reason"]
    assert doc["conservation"]["ratio"] == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conserving_divides_zplus_without_a_stabiliser(tmp_path, seed):
    """z⁺'s denominators are sums of terms ≥ 0, so ``conserving`` divides them zero-safe: a
    depthwise layer whose denominators are about 10⁻⁶ (tiny weights, its output scaled back up
    behind the ReLU) conserves, where zennit's ε = 10⁻⁶ takes a large share."""
    from onnx import helper

    from tests import models

    rng = np.random.default_rng(seed)
    inits = {"W1": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
             "W2": (1e-6 * rng.random((4, 1, 3, 3))).astype(np.float32),
             "W3": rng.standard_normal((3, 4)).astype(np.float32), "up": np.array(1e6, np.float32)}
    nodes = [helper.make_node("Conv", ["X", "W1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "W2"], ["c2"], name="dw", pads=[1, 1, 1, 1], group=4),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Mul", ["r2", "up"], ["u"], name="rescale"),  # later layers see values of 1
             helper.make_node("GlobalAveragePool", ["u"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "W3"], ["logits"], name="fc", transB=1)]
    path = models.save(models.make_model(nodes, [models.vi("X", ["N", 3, 8, 8])], [models.vi("logits", ["N", 3])],
                                         inits), tmp_path / "dw.onnx")
    x = rng.random((2, 3, 8, 8)).astype(np.float32)
    an = Analyzer(path, preset="conserving")
    rule = an.plan().rule_for(an.graph.find("dw"))
    assert (rule.name, rule.get("stabilizer"), rule.bias) == ("zplus", 0.0, False)
    exp = an.explain(x, target=[0, 1])
    ratios = [exp.conservation(i)["ratio"] for i in range(2)]
    np.testing.assert_allclose(ratios, 1.0, atol=1e-4)
    eps = Analyzer(path, preset="conserving", rules=["dw=zplus:stabilizer=1e-6,nobias"]).explain(x, target=[0, 1])
    assert max(abs(eps.conservation(i)["ratio"] - 1) for i in range(2)) > 0.05


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conserving_keeps_a_convnext_bounded(tmp_path, seed):
    """A ConvNeXt's pointwise Linear layers (1×1 convolutions, channels last) read a
    LayerNorm's signed output. Under ε without their bias single ratios grew without bound
    and the LayerNorm's bias took the difference (conservation ratios 2.9, −26.5, 311 on these
    seeds); ``conserving`` gives them γ as the convolutions, so every linear layer conserves and
    only the LayerNorms' biases take a share."""
    path = zm.export(zm.build("convnext", seed), tmp_path / "convnext.onnx")
    an = Analyzer(path, low=-1.0, high=1.0)
    plan = an.plan()
    assert plan.applied == "conserving" and "LayerNorm" in plan.reason
    rules = {e.layer.name: e.rule for e in plan.entries}
    pointwise = [l for l in an.graph.layers if isinstance(l, DenseLayer) and l.rank == 4]
    assert len(pointwise) == 6 and all((rules[l.name].name, rules[l.name].bias) == ("gamma", False) for l in pointwise)
    head = an.graph.find("fc")
    assert isinstance(head, DenseLayer) and head.rank == 2 and rules["fc"].name == "epsilon"
    exp = an.explain(zm.inputs(7, n=4))
    for i in range(4):
        c = exp.conservation(i)
        assert 0.75 < c["ratio"] < 1.3 and conservation_warnings(c, "conserving") == []
        for layer in c["per_layer"]:
            if layer["rule"].startswith(("gamma", "zplus")) and layer["relevance_out"]:
                assert layer["ratio"] == pytest.approx(1.0, abs=1e-3), layer


def test_the_low_conservation_warning_names_what_took_the_relevance():
    """Attention's softmax, a conserving preset's non-conserving layers, or biases: whichever
    the worst layers and the preset point at (a ViT under `conserving` lost it in its softmaxes)."""
    def record(op):
        return {"ratio": 0.3, "per_layer": [{"layer": "fc", "op": "Gemm", "ratio": 0.9},
                                            {"layer": "attn", "op": op, "ratio": 0.35}]}
    (w,) = conservation_warnings(record("Softmax"), "conserving")
    assert "softmax rule's dropped terms" in w and "most at attn ×0.35, fc ×0.9" in w
    (w,) = conservation_warnings(record("Mul"), "conserving")
    assert "biases take none here" in w and "--preset conserving" not in w
    (w,) = conservation_warnings(record("Mul"), "epsilon-gamma-box")
    assert "biases and stabilisers absorb the rest" in w and "--preset conserving keeps relevance" in w
    (w,) = conservation_warnings(record("Mul"), "attnlrp")
    assert "class token" in w
