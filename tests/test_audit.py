"""``lrpath audit``: a real Clever Hans model caught, an honest one passed, JUnit XML that CI
systems read, resume, thresholds from TOML, and one-line errors on bad input."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from lrpath_onnx.audit.checks import region_share
from lrpath_onnx.audit.config import AuditConfig, load_config
from lrpath_onnx.errors import InputError
from tests.fixtures import clever_hans
from tests.test_cli import assert_one_line_error, lrpath

DIGITS = Path(__file__).resolve().parents[1] / "models" / "digits"


@pytest.fixture(scope="module")
def hans(tmp_path_factory):
    d = tmp_path_factory.mktemp("hans")
    trained = clever_hans.build_models(d)
    images, masks, expect, labels = clever_hans.write_audit_set(d)
    (d / "audit.toml").write_text("[audit]\nbatch_size = 5\n\n[thresholds]\nregion_min_share = 0.4\n"
                                  "conservation = [0.9, 1.1]\n")
    return d, trained, images, masks, expect, labels


def check_junit(path: Path) -> dict:
    """JUnit XML as Jenkins/GitLab read it: counts on every suite and on the root agree with the
    elements below them; every testcase has a name and classname; every failure a message and type.
    Returns {suite name: {case name: failure message or None}}."""
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    suites, total, failed = {}, 0, 0
    for suite in root.findall("testsuite"):
        cases = suite.findall("testcase")
        fails = [c for c in cases if c.find("failure") is not None]
        assert suite.get("name") and int(suite.get("tests")) == len(cases) > 0
        assert int(suite.get("failures")) == len(fails) and suite.get("errors") == "0"
        float(suite.get("time"))
        suites[suite.get("name")] = {}
        for c in cases:
            assert c.get("name") and c.get("classname") == suite.get("name")
            f = c.find("failure")
            if f is not None:
                assert f.get("message") and f.get("type") and f.text
            suites[suite.get("name")][c.get("name")] = None if f is None else f.get("message")
        total += len(cases)
        failed += len(fails)
    assert int(root.get("tests")) == total and int(root.get("failures")) == failed
    return suites


def test_clever_hans_model_fails_the_region_check_and_the_honest_one_passes(hans, tmp_path):
    d, trained, images, masks, expect, labels = hans
    # the leaky model really is a Clever Hans: right with the marker, chance without it
    assert trained["leaky"]["accuracy_audit_like"] == 1.0
    assert trained["leaky"]["accuracy_without_marker"] < 0.7
    assert trained["honest"]["accuracy_audit_like"] == 1.0
    runs = {}
    for name in ("leaky", "honest"):
        out = tmp_path / name
        res = lrpath("audit", trained[name]["path"], "--images", images, "--masks", masks, "--expect", expect,
                     "--config", d / "audit.toml", "--out", out)
        runs[name] = (res, json.loads((out / "audit.json").read_text()), check_junit(out / "junit.xml"))
    res, doc, junit = runs["leaky"]
    assert res.returncode == 1, res.stderr
    assert "FAIL" in res.stdout and "region" in res.stdout
    class1 = [f"img_{i:02d}_class1" for i in np.nonzero(labels == 1)[0]]
    assert class1 and set(junit) == {"lrpath.audit.prediction", "lrpath.audit.conservation", "lrpath.audit.region"}
    assert all(m is None for m in junit["lrpath.audit.prediction"].values())  # right answers ...
    for name in class1:  # ... for the wrong reason: the relevance sits on the corner marker
        assert junit["lrpath.audit.region"][name] is not None and "below 40%" in junit["lrpath.audit.region"][name]
        rec = next(r for r in doc["images"] if r["image"] == name)
        assert rec["checks"]["region"]["value"] < 0.1
    assert doc["summary"]["passed"] is False and set(class1) <= set(doc["summary"]["failed_images"])
    assert doc["config"]["batch_size"] == 5 and doc["thresholds"]["region"] == 0.4
    res, doc, junit = runs["honest"]
    assert res.returncode == 0, res.stdout + res.stderr
    assert doc["summary"]["passed"] is True and doc["summary"]["images"] == len(labels)
    shares = [r["checks"]["region"]["value"] for r in doc["images"]]
    assert min(shares) > 0.45
    assert all(m is None for suite in junit.values() for m in suite.values())
    assert all(0.9 <= r["checks"]["conservation"]["value"] <= 1.1 for r in doc["images"])


def test_boxes_give_the_same_regions_as_masks(hans, tmp_path):
    d, trained, images, masks, expect, labels = hans
    from PIL import Image

    boxes = {}
    for p in sorted(masks.iterdir()):
        m = np.asarray(Image.open(p)) > 0
        ys, xs = np.nonzero(m)
        boxes[p.name] = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    values = {}
    for kind, arg in (("masks", masks), ("boxes", tmp_path / "boxes.json")):
        out = tmp_path / kind
        res = lrpath("audit", trained["leaky"]["path"], "--images", images, f"--{kind}", arg, "--out", out,
                     "--min-region-share", "0.4")
        assert res.returncode == 1, res.stderr
        doc = json.loads((out / "audit.json").read_text())
        assert doc["checks"] == ["conservation", "region"]
        values[kind] = [r["checks"]["region"]["value"] for r in doc["images"]]
    np.testing.assert_allclose(values["boxes"], values["masks"], rtol=1e-12)


def test_resume_audits_only_new_images_and_keeps_old_records(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        shutil.copy(DIGITS / f"digit_{i}.png", images)
    out = tmp_path / "out"
    res = lrpath("audit", "mnist-vgg", "--images", images, "--out", out, "--batch-size", "3")
    assert res.returncode == 0, res.stderr
    first = json.loads((out / "audit.json").read_text())
    assert first["summary"]["images"] == 4 and first["summary"]["images_this_run"] == 4
    for i in range(4, 10):
        shutil.copy(DIGITS / f"digit_{i}.png", images)
    res = lrpath("audit", "mnist-vgg", "--images", images, "--out", out, "--batch-size", "3", "--resume")
    assert res.returncode == 0, res.stderr
    doc = json.loads((out / "audit.json").read_text())
    assert doc["summary"]["images"] == 10 and doc["summary"]["images_this_run"] == 6
    assert doc["images"][:4] == first["images"]
    assert [r["image"] for r in doc["images"]] == [f"digit_{i}" for i in range(10)]
    assert sum(len(s) for s in check_junit(out / "junit.xml").values()) == 10
    # other thresholds: resuming would mix two audits
    res = lrpath("audit", "mnist-vgg", "--images", images, "--out", out, "--resume", "--conservation-range", "0.5,2")
    assert_one_line_error(res, "--resume", "other thresholds")


def test_path_fidelity_check_runs_when_asked(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in (3, 7):
        shutil.copy(DIGITS / f"digit_{i}.png", images)
    out = tmp_path / "out"
    res = lrpath("audit", "mnist-vgg", "--images", images, "--out", out, "--checks", "path_fidelity",
                 "--k", "2", "--per-layer", "4", "--path-smape-max", "200")
    doc = json.loads((out / "audit.json").read_text())
    assert doc["checks"] == ["path_fidelity"]
    for r in doc["images"]:
        c = r["checks"]["path_fidelity"]
        assert 0.0 <= c["value"] <= 200.0 and c["threshold"] == 200.0
        assert c["passed"] == ("same class" in c["message"])
    assert res.returncode == (0 if all(r["checks"]["path_fidelity"]["passed"] for r in doc["images"]) else 1)


@pytest.mark.parametrize("case", ["no_images", "both_regions", "missing_mask", "bad_box", "bad_toml", "unknown_key",
                                  "bad_label", "reversed_range", "target", "unknown_check", "region_without_masks"])
def test_bad_audit_input_is_one_line_and_writes_nothing(case, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(DIGITS / "digit_3.png", images)
    masks = tmp_path / "masks"
    masks.mkdir()
    out = tmp_path / "out"
    args = {"no_images": (["--images", masks], "no images"),
            "both_regions": (["--masks", masks, "--boxes", tmp_path / "b.json"], "not both"),
            "missing_mask": (["--masks", masks], "no mask for digit_3.png"),
            "bad_box": (["--boxes", tmp_path / "b.json"], "is empty"),
            "bad_toml": (["--config", tmp_path / "bad.toml"], "not valid TOML"),
            "unknown_key": (["--config", tmp_path / "typo.toml"], "unknown key"),
            "bad_label": (["--expect", tmp_path / "e.csv"], "neither a class index nor a class name"),
            "reversed_range": (["--conservation-range", "1.2,0.8"], "reversed"),
            "target": (["--target", "3"], "No such option '--target'"),  # audit explains each top-1
            "unknown_check": (["--checks", "conservation,clever"], "unknown check"),
            "region_without_masks": (["--checks", "region"], "needs --masks")}[case]
    (tmp_path / "b.json").write_text(json.dumps({"digit_3.png": [5, 5, 5, 9]}))
    (tmp_path / "bad.toml").write_text("[thresholds\nregion_min_share = 0.5\n")
    (tmp_path / "typo.toml").write_text("[thresholds]\nregion_min_shar = 0.5\n")
    (tmp_path / "e.csv").write_text("file,label\ndigit_3.png,three\n")
    extra, fragment = args
    base = ["--images", images] if "--images" not in extra else []
    res = lrpath("audit", "mnist-vgg", *base, *extra, "--out", out)
    assert_one_line_error(res, fragment, out=out)


def test_config_layers_and_region_share_arithmetic(tmp_path):
    p = tmp_path / "a.toml"
    p.write_text('[audit]\nk = 3\nchecks = ["conservation", "region"]\n[thresholds]\nconservation = [0.5, 2]\n')
    cfg = load_config(p)
    assert cfg == AuditConfig(k=3, conservation_min=0.5, conservation_max=2.0, checks=("conservation", "region"))
    p.write_text("[audit]\nk = 2.5\n")
    with pytest.raises(InputError, match="integer"):
        load_config(p)
    rel = np.zeros((1, 4, 4))
    rel[0, 0, 0], rel[0, 3, 3], rel[0, 1, 1] = 3.0, 1.0, -5.0  # negative relevance does not count
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    assert region_share(rel, mask, "nchw") == pytest.approx(0.75)
    assert region_share(np.zeros((1, 4, 4)), mask, "nchw") is None
