"""The real ``lrpath`` command: outputs it writes, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import models

FIXTURES = Path(__file__).parent / "fixtures"


def lrpath(*args, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-c", "from lrpath_onnx.cli.main import entry; entry()", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    d = tmp_path_factory.mktemp("cnn")
    model, _ = models.small_cnn(np.random.default_rng(0), softmax=True)
    path = models.save(model, d / "cnn.onnx")
    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((20, 16, 3)) * 255).astype(np.uint8)).save(d / "a.png")
    Image.fromarray((rng.random((12, 12)) * 255).astype(np.uint8), "L").save(d / "gray.jpg")
    np.save(d / "t.npy", rng.standard_normal((3, 12, 12)).astype(np.float32))
    (d / "labels.txt").write_text("\n".join(f"class-{i}" for i in range(5)) + "\n")
    return d, path


def assert_one_line_error(res, *fragments, out: Path | None = None):
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in res.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    if out is not None:
        assert not out.exists() or not any(out.rglob("*")), list(out.rglob("*"))


def test_explain_writes_all_files(cnn, tmp_path):
    d, model = cnn
    out = tmp_path / "out"
    res = lrpath("explain", model, d / "a.png", d / "gray.jpg", d / "t.npy", "--out", out,
                 "--labels", d / "labels.txt", "--mean", "0.5", "--std", "0.25", "--batch-size", "2",
                 "--keep-layers", "conv1,fc2")
    assert res.returncode == 0, res.stderr
    assert "wrote 3 explanation(s)" in res.stdout
    for name in ("a", "gray", "t"):
        folder = out / name
        rel = np.load(folder / "relevance.npy")
        assert rel.shape == (3, 12, 12) and rel.dtype == np.float32 and np.isfinite(rel).all()
        for png in ("heatmap.png", "overlay.png"):
            with Image.open(folder / png) as im:
                assert im.size[0] >= 224 and im.mode == "RGB"
        info = json.loads((folder / "explanation.json").read_text())
        assert info["target"]["label"] == f"class-{info['target']['index']}"
        assert info["top5"][0]["index"] == info["target"]["index"] and len(info["top5"]) == 5
        c = info["conservation"]
        assert c["output_relevance"] == pytest.approx(info["logit"], rel=1e-6)
        assert c["input_relevance"] == pytest.approx(float(rel.astype(np.float64).sum()), rel=1e-4, abs=1e-6)
        assert info["provider"] == "CPUExecutionProvider" and info["timings_s"]["total"] > 0
        assert [r["rule"] for r in info["rules"] if r["op"] == "Conv"] == ["zbox", "gamma"]
        assert info["zbox_bounds"]["low"] == [-2.0] * 3 and info["zbox_bounds"]["high"] == [2.0] * 3
        kept = np.load(folder / "layer_relevance.npz")
        assert set(kept.files) == {"conv1", "fc2"} and kept["conv1"].shape == (6, 12, 12)
    assert not list(out.rglob(".*tmp*"))


def test_explain_target_class_and_neuron(cnn, tmp_path):
    d, model = cnn
    res = lrpath("explain", model, d / "t.npy", "--out", tmp_path / "o", "--target", "3")
    assert res.returncode == 0, res.stderr
    info = json.loads((tmp_path / "o" / "t" / "explanation.json").read_text())
    assert info["target"]["index"] == 3
    res = lrpath("explain", model, d / "t.npy", "--out", tmp_path / "n", "--target", "conv2:1:2:1")
    assert res.returncode == 0, res.stderr
    info = json.loads((tmp_path / "n" / "t" / "explanation.json").read_text())
    assert info["target"] == {"neuron": "conv2:1@(2, 1)"}  # as lrpath prints neurons
    assert info["conservation"]["output_relevance"] != 0


def test_plan_prints_the_table(cnn):
    _, model = cnn
    res = lrpath("plan", model, "--preset", "paper", "--rule", "fc1=epsilon:0.1")
    assert res.returncode == 0, res.stderr
    rows = {l.split()[1]: l.split() for l in res.stdout.splitlines() if l[:1].isdigit()}
    assert rows["conv1"][2:4] == ["Conv", "zbox"]
    assert rows["conv2"][3] == "gamma(gamma=0.25)"
    assert rows["fc1"][3] == "epsilon(epsilon=0.1)*" and rows["fc2"][3] == "zero"
    assert rows["pool1"][3] == "wta"
    assert "stripped: softmax" in res.stdout
    res = lrpath("plan", "--presets")
    assert res.returncode == 0 and "epsilon-gamma-box" in res.stdout and "alphabeta" in res.stdout


def test_plan_lists_every_unsupported_op(tmp_path):
    from onnx import helper
    nodes = [helper.make_node("LRN", ["X"], ["a"], name="norm1", size=3),
             helper.make_node("Relu", ["a"], ["b"], name="relu"),
             helper.make_node("LRN", ["b"], ["Y"], name="norm2", size=3)]
    path = models.save(models.make_model(nodes, [models.vi("X", ["N", 3, 4, 4])], [models.vi("Y", None)]),
                       tmp_path / "lrn.onnx")
    res = lrpath("plan", path)
    assert_one_line_error(res, "2 unsupported op(s)", "LRN at 'norm1'", "LRN at 'norm2'")
    assert "relu" in res.stdout


@pytest.fixture(scope="module")
def bad(tmp_path_factory, cnn):
    d = tmp_path_factory.mktemp("bad")
    good = cnn[1].read_bytes()
    (d / "empty.onnx").write_bytes(b"")
    (d / "random.onnx").write_bytes(np.random.default_rng(0).bytes(3000))
    (d / "truncated.onnx").write_bytes(good[: len(good) // 2])
    (d / "text.png").write_text("not an image")
    (d / "afile").write_text("x")
    from onnx import helper
    nodes = [helper.make_node("LpNormalization", ["X"], ["Y"], name="squash")]
    models.save(models.make_model(nodes, [models.vi("X", ["N", 3, 12, 12])], [models.vi("Y", None)]), d / "sig.onnx")
    np.save(d / "wrong.npy", np.zeros((3, 10, 12), np.float32))
    np.save(d / "rank.npy", np.zeros((12, 12), np.float32))
    return d


CASES = {
    "model missing": (lambda d, m, i: ["explain", d / "nope.onnx", i], "model file not found"),
    "bench model missing": (lambda d, m, i: ["bench", d / "nope.onnx"], "model file not found"),
    "bench zoo name mistyped": (lambda d, m, i: ["bench", "vgg61"], "did you mean the zoo model 'vgg16'"),
    "model is a folder": (lambda d, m, i: ["explain", d, i], "directory"),
    "empty model": (lambda d, m, i: ["explain", d / "empty.onnx", i], "empty"),
    "random bytes": (lambda d, m, i: ["explain", d / "random.onnx", i], "not an ONNX model"),
    "truncated onnx": (lambda d, m, i: ["explain", d / "truncated.onnx", i], "not an ONNX model"),
    "unsupported op": (lambda d, m, i: ["explain", d / "sig.onnx", i], "LpNormalization at node 'squash'"),
    "input missing": (lambda d, m, i: ["explain", m, d / "ghost.png"], "input not found"),
    "unreadable image": (lambda d, m, i: ["explain", m, d / "text.png"], "text.png"),
    "tensor wrong size": (lambda d, m, i: ["explain", m, d / "wrong.npy"], "expected"),
    "tensor wrong rank": (lambda d, m, i: ["explain", m, d / "rank.npy"], "expected"),
    "target out of range": (lambda d, m, i: ["explain", m, i, "--target", "5"], "out of range"),
    "target malformed": (lambda d, m, i: ["explain", m, i, "--target", "conv1:x"], "--target"),
    "target empty": (lambda d, m, i: ["explain", m, i, "--target", " "], "--target is empty"),
    "mean of two values on three channels": (lambda d, m, i: ["explain", m, i, "--mean", "0.5,0.5"],
                                             "mean has 2 values but the model input has 3 channels"),
    "target unknown layer": (lambda d, m, i: ["explain", m, i, "--target", "nolayer:1"], "no layer named"),
    "unknown preset": (lambda d, m, i: ["explain", m, i, "--preset", "magic"], "unknown preset 'magic'"),
    "unknown rule": (lambda d, m, i: ["explain", m, i, "--rule", "conv1=magic"], "unknown rule 'magic'"),
    "alpha-beta not 1 apart": (lambda d, m, i: ["explain", m, i, "--rule", "conv1=alphabeta:3,1"], "α − β = 1"),
    "rule on maxpool": (lambda d, m, i: ["explain", m, i, "--rule", "pool1=gamma"], "cannot take rule"),
    "bad mean": (lambda d, m, i: ["explain", m, i, "--mean", "a,b,c"], "--mean"),
    "batch size 0": (lambda d, m, i: ["explain", m, i, "--batch-size", "0"], "batch-size"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(bad, cnn, tmp_path, case):
    build, fragment = CASES[case]
    out = tmp_path / "out"
    args = build(bad, cnn[1], cnn[0] / "a.png") + ["--out", out]
    assert_one_line_error(lrpath(*args), fragment, out=out)


def test_out_that_is_a_file_or_under_a_file(bad, cnn):
    assert_one_line_error(lrpath("explain", cnn[1], cnn[0] / "a.png", "--out", bad / "afile"), "not a folder")
    assert_one_line_error(lrpath("explain", cnn[1], cnn[0] / "a.png", "--out", bad / "afile" / "sub"), "afile")


def test_demo_runs_offline_on_the_shipped_model(tmp_path):
    res = lrpath("demo", "--out", tmp_path / "demo")
    assert res.returncode == 0, res.stderr
    assert "held-out accuracy" in res.stdout
    for digit in (3, 7):
        folder = tmp_path / "demo" / "explain" / f"digit_{digit}"
        with Image.open(folder / "overlay.png") as im:
            assert im.size == (224, 224)
        info = json.loads((folder / "explanation.json").read_text())
        assert info["target"] == {"index": digit, "label": str(digit)}
        assert 0.8 < info["conservation"]["ratio"] < 1.1
    paths = tmp_path / "demo" / "paths" / "digit_3"
    assert (paths / "graph.png").exists() and len(json.loads((paths / "paths.json").read_text())["paths"]) == 5
    for digit in (3, 7):  # the transformer, by AttnLRP, with its token maps
        folder = tmp_path / "demo" / "vit" / f"digit_{digit}"
        info = json.loads((folder / "explanation.json").read_text())
        assert info["target"]["index"] == digit and info["preset_applied"] == "attnlrp"
        assert np.load(folder / "tokens.npy").shape == (4, 4) and (folder / "tokens.png").exists()


def test_bench_writes_json_with_ratios(cnn, tmp_path):
    _, model = cnn
    res = lrpath("bench", model, "--batch-size", "2", "--runs", "5", "--layers", "2", "--out", tmp_path / "b")
    assert res.returncode == 0, res.stderr
    data = json.loads((tmp_path / "b" / f"bench-{Path(model).stem}-b2.json").read_text())
    stages = {s["stage"]: s for s in data["stages"]}
    assert set(stages) == {"onnxruntime_forward", "forward_with_activations", "backward", "explain_total"}
    assert stages["onnxruntime_forward"]["ratio_to_ort_forward"] == 1.0
    assert all(s["median_s_per_image"] > 0 for s in stages.values())
    assert data["peak_rss_mb_explain"] > 0 and data["batch_size"] == 2 and data["machine"]["cores"] >= 1
    from lrpath_onnx.threads import openblas_core  # the same environment, so the same kernels

    assert data["machine"]["openblas_core"] == openblas_core() and data["machine"]["openblas_core"]
    assert "explain_total" in res.stdout and "its own process" in data["baseline"]
    # every step of the backward pass, by layer: the slowest two printed, the time per op and rule after
    from lrpath_onnx import Analyzer

    an = Analyzer(model)
    rows = data["layers"]
    assert [r["layer"] for r in rows] == [layer.name for layer in reversed(an.graph.layers)]
    assert all(r["rule"] == str(an.plan().rule_for(an.graph.find(r["layer"]))) for r in rows)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    backward_ms = stages["backward"]["median_s_per_image"] * 1e3
    assert 0 < sum(r["ms_per_image"] for r in rows) < 1.5 * backward_ms
    slowest = max(rows, key=lambda r: r["ms_per_image"])
    listed = res.stdout[res.stdout.index("slowest layers"):res.stdout.index("by op and rule")].splitlines()
    assert len(listed) == 3 and listed[1].split()[0] == slowest["layer"]
    assert f"{slowest['op']} {slowest['rule'].split('(')[0]}" in res.stdout.split("by op and rule")[1]


def test_bench_processes_times_whole_runs(cnn, tmp_path):
    _, model = cnn
    from lrpath_onnx.cli.bench_cmd import bench

    assert next(p for p in bench.params if p.name == "process_runs").default == 3
    res = lrpath("bench", model, "--processes", "3", "--process-runs", "2", "--out", tmp_path)
    assert res.returncode == 0, res.stderr
    assert "2 runs each" in res.stdout
    data = json.loads((tmp_path / f"bench-{Path(model).stem}-b1-processes.json").read_text())
    stages = {s["stage"]: s for s in data["stages"]}
    assert set(stages) == {"onnxruntime_process", "explain_process"}
    assert data["processes"]["runs"] == 2 and all(s["runs"] == 2 for s in stages.values())
    secs = data["processes"]["seconds"]
    assert all(len(secs[k][m]) == 2 and min(secs[k][m]) > 0 for k in secs for m in ("1", "3"))
    want = (min(secs["explain"]["3"]) - min(secs["explain"]["1"])) / 2
    assert stages["explain_process"]["s_per_image"] == pytest.approx(want)
    base = (min(secs["onnxruntime"]["3"]) - min(secs["onnxruntime"]["1"])) / 2
    # the tiny model's two extra forwards can vanish in process noise: no ratio then, not a negative one
    assert stages["explain_process"]["ratio_to_ort_forward"] == (pytest.approx(want / base) if base > 0 else None)
    want = (np.median(secs["explain"]["3"]) - np.median(secs["explain"]["1"])) / 2
    assert stages["explain_process"]["median_s_per_image"] == pytest.approx(want)


@pytest.fixture(scope="module")
def two_heads(tmp_path_factory):
    """A net with two outputs: 5 class logits, then a 3-way auxiliary head on the same features."""
    from onnx import helper
    d = tmp_path_factory.mktemp("heads")
    rng = np.random.default_rng(4)
    inits = {"W": rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.4,
             "A": rng.standard_normal((5, 4 * 6 * 6)).astype(np.float32) * 0.1,
             "B": rng.standard_normal((3, 4 * 6 * 6)).astype(np.float32) * 0.1}
    nodes = [helper.make_node("Conv", ["X", "W"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "A"], ["logits"], name="head", transB=1),
             helper.make_node("Gemm", ["f", "B"], ["aux"], name="aux_head", transB=1)]
    model = models.make_model(nodes, [models.vi("X", ["N", 3, 6, 6])],
                              [models.vi("logits", ["N", 5]), models.vi("aux", ["N", 3])], inits)
    path = models.save(model, d / "heads.onnx")
    x = rng.random((3, 6, 6)).astype(np.float32)
    np.save(d / "x.npy", x)
    return d, path, x


def test_model_output_picks_which_output_of_a_model_with_several_is_explained(two_heads, tmp_path):
    from lrpath_onnx import Analyzer
    d, model, x = two_heads
    first, aux = Analyzer(model, rules=["*=zero"]), Analyzer(model, rules=["*=zero"], output="aux")
    assert (first.graph.output, aux.graph.output, Analyzer(model, output="1").graph.output) == ("logits", "aux", "aux")
    e0, e1 = first.explain(x[None]), aux.explain(x[None])
    assert e0.logits.shape == (1, 5) and e1.logits.shape == (1, 3)
    assert e1.start_relevance[0] == pytest.approx(e1.logits[0].max())  # LRP-0, no biases: the aux logit conserves
    assert e1.relevance.sum() == pytest.approx(e1.logits[0].max(), rel=1e-4)
    assert e0.relevance.sum() == pytest.approx(e0.logits[0].max(), rel=1e-4)
    res = lrpath("explain", model, d / "x.npy", "--out", tmp_path / "o", "--model-output", "aux", "--target", "2",
                 "--rule", "*=zero")
    assert res.returncode == 0, res.stderr
    info = json.loads((tmp_path / "o" / "x" / "explanation.json").read_text())
    assert info["target"]["index"] == 2 and info["model_output"] == "aux"
    assert info["conservation"]["output_relevance"] == pytest.approx(float(e1.logits[0, 2]), rel=1e-5)
    res = lrpath("plan", model, "--model-output", "aux", "--json")
    plan_json = json.loads(res.stdout)
    assert res.returncode == 0 and (plan_json["output"], plan_json["model_outputs"]) == ("aux", ["logits", "aux"])
    assert "(outputs 0: logits, 1: aux*; --model-output picks)" in lrpath("plan", model, "--model-output", "1").stdout
    res = lrpath("evaluate", model, d / "x.npy", "--out", tmp_path / "ev", "--model-output", "aux", "--methods",
                 "auto,random", "--steps", "3", "--patch", "2")
    assert res.returncode == 0, res.stderr
    image = json.loads((tmp_path / "ev" / "evaluate.json").read_text())["images"][0]
    assert image["target"]["index"] == int(e1.logits[0].argmax())
    assert image["logit"] == pytest.approx(float(e1.logits[0].max()), rel=1e-5)  # the aux head's, not the first's
    res = lrpath("report", model, d / "x.npy", "--out", tmp_path / "rep", "--model-output", "1")
    assert res.returncode == 0, res.stderr
    page = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert (page["model_output"], page["model_outputs"]) == ("aux", ["logits", "aux"])
    assert "output <code>aux</code> of 2" in (tmp_path / "rep" / "report.html").read_text()
    res = lrpath("compile", model, d / "x.npy", "--out", tmp_path / "aux.lrp.onnx", "--model-output", "aux",
                 "--rule", "*=zero", "--check", "--target", "2")
    assert res.returncode == 0, res.stderr
    from lrpath_onnx.compile.check import run_compiled
    (compiled,) = run_compiled(tmp_path / "aux.lrp.onnx", "X", x[None], 2)
    want = aux.explain(x[None], target=2).relevance
    np.testing.assert_allclose(compiled, want, atol=1e-5 * np.abs(want).max())
    out = tmp_path / "bad"
    assert_one_line_error(lrpath("explain", model, d / "x.npy", "--out", out, "--model-output", "probs"),
                          "--model-output probs", "0: logits, 1: aux", out=out)
