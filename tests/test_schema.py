"""The one output schema: the shipped JSON Schema is valid, names every kind, accepts what lrpath
writes and refuses the old inconsistent shapes (an int target, ``overrides``, ``input``/``output``
conservation keys, prose timing keys)."""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import jsonschema
import pytest

from lrpath_onnx.io.schema import KINDS, kind_of, schema_document, stamp, target_json, validate
from tests.conftest import schema_problems
from tests.test_cli import lrpath

README = Path(__file__).resolve().parent.parent / "README.md"

EXPLANATION = {
    "model": "m.onnx", "model_name": None, "input": "a.png", "target": {"index": 3, "label": "3"}, "logit": 1.5,
    "top5": [], "preset": "auto", "preset_applied": "composite", "rule_overrides": [],
    "rules": [{"index": 0, "name": "conv1", "op": "Conv", "kind": "linear", "rule": "zbox", "source": "preset"}],
    "conservation": {"ratio": 0.98, "output_relevance": 1.5, "input_relevance": 1.47}, "warnings": [],
    "provider": "CPUExecutionProvider", "device": "cpu", "timings_s": {"forward": 0.01, "total": 0.02},
}


def test_schema_is_valid_and_has_one_definition_per_kind():
    doc = schema_document()
    jsonschema.Draft202012Validator.check_schema(doc)
    assert set(KINDS) <= set(doc["$defs"])
    for kind in KINDS:
        assert "schema" in doc["$defs"][kind]["required"], kind


def test_a_well_formed_explanation_passes():
    validate(stamp("explanation", EXPLANATION))
    assert kind_of(stamp("explanation", EXPLANATION)) == "explanation"


@pytest.mark.parametrize("change", [
    lambda d: d.update(target=3),  # an int where every file writes {"index", "label"}
    lambda d: d.update(overrides=d.pop("rule_overrides")),
    lambda d: d.update(conservation={"ratio": 1.0, "input": 1.0, "output": 1.0}),
    lambda d: d.update(timings_s={"explain (LRP)": 0.1}),  # prose keys
    lambda d: d.update(timings_s={"total": -1.0}),
    lambda d: d.pop("model_name"),
])
def test_the_old_inconsistent_shapes_are_refused(change):
    doc = copy.deepcopy(EXPLANATION)
    change(doc)
    with pytest.raises(jsonschema.ValidationError):
        validate(stamp("explanation", doc))


def test_stamp_puts_the_tag_first_and_refuses_unknown_kinds():
    doc = stamp("paths", {"schema": "old", "k": 1})
    assert list(doc) == ["schema", "k"] and doc["schema"] == "lrpath.paths/1"
    with pytest.raises(ValueError, match="unknown output kind"):
        stamp("heatmaps", {})
    with pytest.raises(ValueError, match="not an lrpath output"):
        validate({"model": "m.onnx"})


def test_target_json_for_classes_and_neurons():
    assert target_json(2, ["a", "b", "c"]) == {"index": 2, "label": "c"}
    assert target_json(5, ["a"]) == {"index": 5, "label": None}
    assert target_json("features.7:12") == {"neuron": "features.7:12"}


def test_the_suite_check_flags_untagged_and_misshapen_outputs():
    with tempfile.TemporaryDirectory() as d:  # outside pytest's basetemp: the session check must not see it
        root = Path(d)
        (root / "a").mkdir()
        (root / "a" / "explanation.json").write_text(json.dumps(EXPLANATION))  # no tag
        bad = {**stamp("explanation", EXPLANATION), "target": 3}
        (root / "b.json").write_text(json.dumps(bad))
        (root / "c.json").write_text(json.dumps(stamp("explanation", EXPLANATION)))
        (root / "regions.json").write_text(json.dumps({"x.png": [1, 2, 3, 4]}))  # not an output
        checked, problems = schema_problems(root)
    assert checked == 2 and len(problems) == 2
    assert "no \"schema\" tag" in problems[0] and "ValidationError" in problems[1]


def test_plan_and_models_json_fit_the_schema():
    res = lrpath("plan", "mnist-vgg", "--json", "--rule", "0=epsilon")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    validate(doc)
    assert doc["schema"] == "lrpath.plan/1" and doc["model_name"] == "mnist-vgg"
    assert doc["rule_overrides"] == ["0=epsilon"] and doc["rules"][0]["source"] == "override"
    res = lrpath("models", "--json")
    validate(json.loads(res.stdout))


def test_readme_documents_every_kind():
    text = README.read_text(encoding="utf-8")
    for kind in KINDS:
        assert f"`lrpath.{kind}/1`" in text, kind
