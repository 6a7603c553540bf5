"""``lrpath compile --web``: the static page explains a picture in headless Chromium with
onnxruntime-web, and its relevance is the analyzer's on the tensor the page built.

onnxruntime-web comes from the npm registry (``npm pack onnxruntime-web@1.30.0`` into
``~/.cache/lrpath-onnx``, as ``.ci/run`` does); without it, or without Chromium, the module
is skipped here and fails in CI.
"""

from __future__ import annotations

import base64
import contextlib
import html
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lrpath_onnx import Analyzer
from lrpath_onnx.compile.check import relative_l2
from lrpath_onnx.compile.web import ORT_FILES, ort_web_candidates
from lrpath_onnx.models import registry
from tests.test_cli import assert_one_line_error, lrpath
from tests.test_report import BROWSER_FLAGS, browser

DIGITS = Path(registry.HERE) / "digits"


def ort_web() -> Path:
    found = [c for c in ort_web_candidates(None) if c.exists()]
    if found:
        return found[0]
    how = "npm pack onnxruntime-web@1.30.0 --pack-destination ~/.cache/lrpath-onnx"
    if os.environ.get("CI"):
        pytest.fail(f"onnxruntime-web is missing in CI ({how}): .ci/run fetches it")
    pytest.skip(f"onnxruntime-web is not here ({how}); CI runs these tests")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    res = lrpath("compile", "mnist-vgg", "--out", root / "m.lrp.onnx", "--web", root / "site", "--ort-web", ort_web())
    assert res.returncode == 0, res.stderr
    assert "serve it: python -m http.server -d" in res.stdout
    for d in (3, 7):
        shutil.copyfile(DIGITS / f"digit_{d}.png", root / "site" / f"digit_{d}.png")
    with serving(root / "site") as url:
        yield root, url


@contextlib.contextmanager
def serving(folder: Path):
    """``folder`` on a local HTTP server (browsers load WebAssembly only over HTTP); its page's URL."""
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/index.html"
    finally:
        server.shutdown()


def open_url(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([browser(), *BROWSER_FLAGS, f"--user-data-dir={profile}", *args,
                           "--virtual-time-budget=60000", url], capture_output=True, text=True, timeout=180)


def page_result(url: str, profile: Path) -> dict:
    return result_of(open_url(url, profile, "--dump-dom").stdout)


def result_of(dom: str) -> dict:
    """The JSON the page writes into ``<pre id="result">`` once it has explained its picture."""
    found = re.search(r'<pre id="result">(.*?)</pre>', dom, re.DOTALL)
    assert found and found.group(1), dom[-2000:]
    return json.loads(html.unescape(found.group(1)))


def decode(res: dict, key: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(res[key]), np.float32).reshape(res["dims"])


def test_site_holds_the_page_the_model_and_onnxruntime_web(site):
    root, _ = site
    assert sorted(p.name for p in (root / "site" / "ort").iterdir()) == sorted(ORT_FILES)
    page = (root / "site" / "index.html").read_text(encoding="utf-8")
    config = json.loads(re.search(r"const CONFIG = (\{.*?\});\n", page).group(1))
    assert config["model"] == "model.lrp.onnx" and config["size"] == [28, 28] and config["channels"] == 1
    import onnx

    web, full = onnx.load(str(root / "site" / "model.lrp.onnx")), onnx.load(str(root / "m.lrp.onnx"))
    assert [t.name for t in full.graph.initializer if t.name not in {i.name for i in web.graph.initializer}] == ["target"]
    assert web.graph.node == full.graph.node  # the same computation; target has no default on the page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)  # nothing fetched from elsewhere


@pytest.mark.parametrize("digit, target", [(3, None), (7, 2)])
def test_page_explains_like_the_analyzer(site, tmp_path, digit, target):
    """The page's input tensor is the CLI's preprocessing of the picture, and the relevance
    onnxruntime-web computes from it is explain's (top-1, or the class asked for)."""
    _, url = site
    res = page_result(f"{url}?image=digit_{digit}.png" + (f"&target={target}" if target is not None else ""),
                      tmp_path / "profile")
    assert res["status"] == "done", res
    # onnxruntime-web runs the compiled graph's own forward: compared with onnxruntime's
    an = Analyzer(registry.get("mnist-vgg").path(), low=0.0, high=1.0, forward_engine="onnxruntime")
    x = decode(res, "input")
    np.testing.assert_array_equal(x, an.preprocess(DIGITS / f"digit_{digit}.png"))
    exp = an.explain(x, target=target)
    assert res["target"] == exp.targets[0] == (digit if target is None else target)
    assert relative_l2(decode(res, "relevance")[0], exp.relevance[0]) < 1e-5


def test_page_draws_the_heatmap(site, tmp_path):
    _, url = site
    shot = tmp_path / "shot.png"
    open_url(f"{url}?image=digit_3.png", tmp_path / "p", f"--screenshot={shot}", "--window-size=1000,900")
    img = np.asarray(Image.open(shot).convert("RGB"), np.int16)
    red = (img[..., 0] > 200) & (img[..., 1] < 80) & (img[..., 2] < 80)
    assert red.sum() > 200  # the digit's strokes in the heatmap's red


def test_a_model_ending_in_softmax_and_labels_with_markup(tmp_path):
    """The page reads the model's own output (the analyzer explains the logits under a final
    Softmax, which the compiled file does not output by that name); labels are data, never
    markup or the end of the page's script."""
    model = Path(__file__).parent / "fixtures" / "torch_mlp_softmax.onnx"
    labels = tmp_path / "labels.txt"
    labels.write_text("</script><script>document.title='owned'</script>\n<b>two</b>\nthree\nfour\nfive\nsix\n")
    res = lrpath("compile", model, "--out", tmp_path / "m.lrp.onnx", "--web", tmp_path / "site",
                 "--ort-web", ort_web(), "--labels", labels)
    assert res.returncode == 0, res.stderr
    page = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert page.count("</script>") == 2  # the two script elements' own ends
    config = json.loads(re.search(r"const CONFIG = (\{.*?\});\n", page).group(1))
    assert config["output"] == "logits" and config["labels"][0].startswith("</script>")
    rng = np.random.default_rng(4)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "site" / "x.png")
    with serving(tmp_path / "site") as url:
        dom = open_url(f"{url}?image=x.png", tmp_path / "profile", "--dump-dom").stdout
    assert "<title>lrpath: explain a picture in the browser</title>" in dom  # no script ran from a label
    res = result_of(dom)
    assert res["status"] == "done", res
    an = Analyzer(model)
    x = decode(res, "input")
    exp = an.explain(x)
    assert res["target"] == exp.targets[0]
    assert relative_l2(decode(res, "relevance")[0], exp.relevance[0]) < 1e-5
    assert "&lt;/script&gt;" in dom or "&lt;b&gt;two" in dom  # drawn as text in the class table


def test_web_refuses_without_onnxruntime_web_or_into_a_used_folder(tmp_path):
    res = lrpath("compile", "mnist-vgg", "--out", tmp_path / "m.onnx", "--web", tmp_path / "site",
                 "--ort-web", tmp_path / "nowhere")
    assert_one_line_error(res, "--web needs onnxruntime-web")
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "site").exists()
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    res = lrpath("compile", "mnist-vgg", "--out", tmp_path / "m.onnx", "--web", tmp_path / "used")
    assert_one_line_error(res, "give a new or empty folder")
    assert (tmp_path / "used" / "notes.txt").read_text() == "mine"
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(b"not a tarball")
    res = lrpath("compile", "mnist-vgg", "--out", tmp_path / "m.onnx", "--web", tmp_path / "s2", "--ort-web", bad)
    assert_one_line_error(res, "cannot read it as an npm package")
    assert not (tmp_path / "s2").exists()
    res = lrpath("compile", "mnist-vgg", "--out", tmp_path / "s3" / "m.onnx", "--web", tmp_path / "s3")
    assert_one_line_error(res, "lies inside it")
    assert not (tmp_path / "s3").exists()
