"""Suite-wide checks: every JSON file the tests make lrpath write fits the shipped JSON Schema."""

from __future__ import annotations

import json

import pytest

from lrpath_onnx.io.schema import validate

#: files lrpath writes; one of these without a "schema" tag is a defect, not a stray JSON
OUTPUT_NAMES = {"explanation.json", "paths.json", "graph.json", "optimize.json", "deconv.json", "report.json",
                "audit.json", "evaluate.json", "sanity.json"}


def schema_problems(root) -> tuple[int, list[str]]:
    """(outputs checked, one line per file that does not fit) for every lrpath JSON under ``root``."""
    checked, bad = 0, []
    for path in sorted(root.rglob("*.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # tests write broken files on purpose (resume, hardening)
        tag = doc.get("schema") if isinstance(doc, dict) else None
        if not (isinstance(tag, str) and tag.startswith("lrpath.")):
            if path.name in OUTPUT_NAMES or path.name.startswith("bench-"):
                bad.append(f"{path}: no \"schema\" tag")
            continue
        checked += 1
        try:
            validate(doc)
        except Exception as e:  # jsonschema.ValidationError: report them all at once
            bad.append(f"{path}: {type(e).__name__}: {str(e).splitlines()[0]}")
    return checked, bad


@pytest.fixture(autouse=True, scope="session")
def every_output_fits_the_schema(tmp_path_factory):
    yield
    checked, bad = schema_problems(tmp_path_factory.getbasetemp())
    assert not bad, (f"{len(bad)} of {checked + len(bad)} lrpath JSON files do not fit lrpath.schema.json:\n"
                     + "\n".join(bad[:20]))
