"""``lrpath report``: one self-contained HTML page, checked in a real headless browser.

The browser is Debian's ``chromium`` (``.ci/run`` installs it). Without it the browser test
is skipped with its reason on a developer machine, and fails in CI (``CI`` set), so CI can
never pass without having looked at the page.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_cli import assert_one_line_error, lrpath

DIGIT = Path(__file__).resolve().parents[1] / "models" / "digits" / "digit_3.png"
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    res = lrpath("report", "mnist-vgg", DIGIT, "--out", out, "--k", "4", "--per-layer", "8", "--k-max", "6")
    assert res.returncode == 0, res.stderr
    assert f"report: {out / 'report.html'}" in res.stdout
    return out


def browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.environ.get("CI"):
        pytest.fail("no chromium in CI: .ci/run installs it with apt-get")
    pytest.skip("no chromium here (apt-get install chromium); CI runs this test")


def run_browser(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([browser(), *BROWSER_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
                          capture_output=True, text=True, timeout=120)


def test_report_is_one_self_contained_file(report):
    html = (report / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", html)
    assert "<link" not in html and not re.search(r"<script[^>]+src", html)
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == html.count("<img") >= 9
    sizes = [Image.open(io.BytesIO(base64.b64decode(b))).size for b in images]
    assert all(w >= 100 and h >= 100 for w, h in sizes)
    for section in ("Input and prediction", "Layer-wise relevance propagation", "Neuron graph and the 4 best paths",
                    "Heatmaps from the 4 best paths only", "How many paths suffice", "What the path neurons see"):
        assert section in html
    rec = json.loads((report / "report.json").read_text())
    assert len(rec["top5"]) == 5 and rec["top5"][0]["index"] == rec["target"]["index"] == 3
    assert 0.9 < rec["conservation"]["ratio"] < 1.1
    assert rec["provider"] == "CPUExecutionProvider" and rec["device"] == "cpu"
    assert rec["deconv"] and all(d["layer"].startswith("features.") for d in rec["deconv"])
    assert set(rec["timings_s"]) and all(v > 0 for v in rec["timings_s"].values())


def test_report_renders_in_a_headless_browser(report, tmp_path):
    page = report / "report.html"
    n_img = page.read_text(encoding="utf-8").count("<img")
    dom = run_browser(page, tmp_path / "p1", "--dump-dom", "--virtual-time-budget=5000")
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stderr[-2000:]
    assert f'data-images-total="{n_img}"' in body.group(0) and 'data-broken-images="0"' in body.group(0)
    shot = tmp_path / "shot.png"
    res = run_browser(page, tmp_path / "p2", f"--screenshot={shot}", "--window-size=1280,2400")
    assert shot.exists(), res.stderr[-2000:]
    px = np.asarray(Image.open(shot).convert("RGB"), np.float64)
    assert px.shape == (2400, 1280, 3)
    background = np.array([246, 247, 249])
    content = np.abs(px - background).sum(axis=2) > 30
    assert content.mean() > 0.15  # pictures and text, not a blank page
    red = (px[..., 0] > 180) & (px[..., 1] < 90) & (px[..., 2] < 90)
    assert red.sum() > 500  # the heatmaps and the red paths drew


def test_browser_check_sees_a_broken_picture(report, tmp_path):
    """The page's own check must be able to fail: corrupt one picture, the browser counts it."""
    html = (report / "report.html").read_text(encoding="utf-8")
    broken = tmp_path / "broken.html"
    broken.write_text(html.replace('<img src="data:image/png;base64,', '<img src="data:image/png;base64,AAAA', 1),
                      encoding="utf-8")
    dom = run_browser(broken, tmp_path / "p3", "--dump-dom", "--virtual-time-budget=5000")
    assert 'data-broken-images="1"' in dom.stdout
    assert "picture(s) failed to load" in dom.stdout


def rec_faith(out):
    return json.loads((out / "report.json").read_text())["faithfulness"]["methods"]


def test_report_refuses_two_images_and_a_target(tmp_path):
    out = tmp_path / "out"
    assert_one_line_error(lrpath("report", "mnist-vgg", DIGIT, DIGIT, "--out", out), "one IMAGE", out=out)
    assert_one_line_error(lrpath("report", "mnist-vgg", DIGIT, "--target", "2", "--out", out), "--target", out=out)


def test_report_on_a_residual_model_draws_paths_through_the_join(tmp_path):
    """A residual block gets every section: its sum is a layer of the neuron graph."""
    from onnx import helper

    from tests import models

    rng = np.random.default_rng(4)
    w = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
    nodes = [helper.make_node("Conv", ["X", "W1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "W2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["r1", "c2"], ["s"], name="add"),
             helper.make_node("GlobalAveragePool", ["s"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "W3"], ["Y"], name="fc", transB=1)]
    model = models.save(models.make_model(nodes, [models.vi("X", ["N", 3, 16, 16])], [models.vi("Y", None)],
                                          {"W1": w(4, 3, 3, 3), "W2": w(4, 4, 3, 3), "W3": w(3, 4)}),
                        tmp_path / "res.onnx")
    Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(tmp_path / "x.png")
    out = tmp_path / "out"
    res = lrpath("report", model, tmp_path / "x.png", "--out", out)
    assert res.returncode == 0, res.stderr
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Not drawn for this model" not in html and "4. Neuron graph and the 5 best paths" in html
    assert "Layer-wise relevance propagation" in html and "8. Run" in html
    assert "3. How faithful is this heatmap" in html  # region-perturbation curves: LRP, gradient × input, random
    names = [m["name"] for m in rec_faith(out)]
    assert names == ["LRP (conserving)", "gradient × input", "random"]  # auto: a residual sum
    rec = json.loads((out / "report.json").read_text())
    paths = json.loads((out / "paths" / "paths.json").read_text())
    assert rec["no_paths"] is None and paths["layers"] == ["conv1", "conv2", "add", "fc"]
    assert [n["layer"] for n in paths["paths"][0]["neurons"]][-2:] == ["add", "fc"]
    assert {d["layer"] for d in rec["deconv"]} <= {"conv1", "conv2"} and rec["deconv"]
