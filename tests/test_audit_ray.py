"""``lrpath audit --engine ray`` on a real local Ray cluster (loopback, 2 worker processes):
the same audit.json as the local engine, a worker killed with SIGKILL mid-run without losing
or doubling an image, and --resume across engines."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_cli import assert_one_line_error, lrpath

ROOT = Path(__file__).resolve().parents[1]
try:
    import ray  # noqa: F401
except ImportError:  # pragma: no cover
    if os.environ.get("CI"):
        raise RuntimeError("Ray is missing in CI: the test extra installs lrpath-onnx[ray]") from None
    pytest.skip("Ray is not installed here (pip install -e '.[ray]'); CI runs these tests", allow_module_level=True)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """48 held-out MNIST digits as PNGs with their labels."""
    d = tmp_path_factory.mktemp("digits")
    data = np.load(ROOT / "models" / "mnist_vgg_heldout.npz")
    images = d / "images"
    images.mkdir()
    rows = ["file,label"]
    for i in range(48):
        name = f"h{i:02d}.png"
        Image.fromarray(data["images"][i]).save(images / name)
        rows.append(f"{name},{int(data['labels'][i])}")
    (d / "expect.csv").write_text("\n".join(rows) + "\n")
    return d


def audit(digits, out, *extra):
    return lrpath("audit", "mnist-vgg", "--images", digits / "images", "--expect", digits / "expect.csv",
                  "--out", out, "--batch-size", "4", *extra)


def same_verdicts(a: dict, b: dict) -> None:
    """Same images in the same order, same verdicts, figures equal to float32 rounding."""
    assert [r["image"] for r in a["images"]] == [r["image"] for r in b["images"]]
    for ra, rb in zip(a["images"], b["images"]):
        assert ra["predicted"] == rb["predicted"] and ra["source"] == rb["source"]
        assert set(ra["checks"]) == set(rb["checks"])
        for c in ra["checks"]:
            assert ra["checks"][c]["passed"] == rb["checks"][c]["passed"]
            va, vb = ra["checks"][c]["value"], rb["checks"][c]["value"]
            assert va == vb if isinstance(va, int) else va == pytest.approx(vb, rel=1e-5, abs=1e-6)
    assert a["summary"]["checks"] == b["summary"]["checks"]


@pytest.fixture(scope="module")
def local(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    res = audit(digits, out)
    assert res.returncode in (0, 1), res.stderr
    return json.loads((out / "audit.json").read_text())


def test_ray_audit_equals_the_local_one(digits, local, tmp_path):
    res = audit(digits, tmp_path / "ray", "--engine", "ray", "--num-workers", "2")
    assert res.returncode in (0, 1), res.stderr
    assert "on 2 Ray worker(s), 0 retried" in res.stdout
    doc = json.loads((tmp_path / "ray" / "audit.json").read_text())
    assert doc["engine"] == "ray" and doc["workers"] == 2 and doc["retries"] == 0 and local["engine"] == "local"
    same_verdicts(doc, local)
    assert doc["summary"]["images"] == 48 and doc["summary"]["images_this_run"] == 48


def _busy_ray_workers() -> list[int]:
    """Ray actors retitle their process while a method runs: ``ray::_Worker.audit`` has a batch."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if (p / "cmdline").read_bytes().startswith(b"ray::_Worker.audit"):
                    pids.append(int(p.name))
            except OSError:
                pass
    return pids


def _audit_killing_a_busy_worker(digits, out) -> tuple[dict, str]:
    """Run a Ray audit, SIGKILL the first worker seen with a batch; audit.json and stdout."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-c", "from lrpath_onnx.cli.main import entry; entry()", "audit",
                             "mnist-vgg", "--images", str(digits / "images"), "--expect", str(digits / "expect.csv"),
                             "--out", str(out), "--batch-size", "6", "--engine", "ray", "--num-workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    killed = None
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None and killed is None:
            busy = _busy_ray_workers()
            if busy:  # a batch in flight dies with it
                killed = busy[0]
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.005)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed is not None, "no worker was killed: the run ended too early"
    assert proc.returncode in (0, 1), stderr
    return json.loads((out / "audit.json").read_text()), stdout


def test_a_killed_worker_loses_and_doubles_nothing(digits, local, tmp_path):
    """A worker killed mid-batch: its batch is retried, every image audited once. A worker's
    title stays ``audit`` a moment after its batch returns, and a kill in that moment costs
    no batch (nothing to retry; the audit must be whole all the same): then the run is
    repeated, up to three times, until a kill catches a batch in flight."""
    retried = []
    for attempt in range(3):
        doc, stdout = _audit_killing_a_busy_worker(digits, tmp_path / f"ray{attempt}")
        same_verdicts(doc, local)  # every image once, in order, with the local verdicts
        assert f"{doc['retries']} retried" in stdout
        retried.append(doc["retries"])
        if doc["retries"] >= 1:
            break
    assert retried[-1] >= 1, f"no killed batch was retried in {len(retried)} runs: retries {retried}"


def test_resume_crosses_engines(digits, local, tmp_path):
    part = tmp_path / "part"
    part.mkdir()
    for p in sorted((digits / "images").iterdir())[:20]:
        shutil.copy(p, part)
    out = tmp_path / "out"
    first = lrpath("audit", "mnist-vgg", "--images", part, "--expect", digits / "expect.csv", "--out", out,
                   "--batch-size", "4")
    assert first.returncode in (0, 1), first.stderr
    for p in sorted((digits / "images").iterdir())[20:]:
        shutil.copy(p, part)
    res = lrpath("audit", "mnist-vgg", "--images", part, "--expect", digits / "expect.csv", "--out", out,
                 "--batch-size", "4", "--engine", "ray", "--num-workers", "2", "--resume")
    assert res.returncode in (0, 1), res.stderr
    doc = json.loads((out / "audit.json").read_text())
    assert doc["summary"]["images_this_run"] == 28 and doc["summary"]["images"] == 48
    same_verdicts(doc, {**local, "images": [{**r, "source": r["source"].replace(str(digits / "images"), str(part))}
                                            for r in local["images"]]})


def test_engine_ray_without_ray_is_one_line(digits, tmp_path):
    fake = tmp_path / "noray"
    fake.mkdir()
    (fake / "ray.py").write_text("raise ImportError('no ray here')\n")
    env = {**os.environ, "PYTHONPATH": f"{fake}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "PYTHONWARNINGS": "ignore"}
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-c", "from lrpath_onnx.cli.main import entry; entry()", "audit",
                          "mnist-vgg", "--images", str(digits / "images"), "--out", str(out), "--engine", "ray"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert_one_line_error(res, "pip install 'lrpath-onnx[ray]'", out=out)
