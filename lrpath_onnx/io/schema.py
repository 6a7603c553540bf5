"""One output schema: every JSON the CLI writes names its kind and version and shares field
names and shapes (target, model, preset, rules, conservation, timings_s, provider).

The JSON Schema of every kind ships in ``lrpath_onnx/schemas/lrpath.schema.json`` (its ``$defs``
hold one entry per kind and the shared pieces); ``validate`` checks a document against it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

VERSION = 1
KINDS = ("explanation", "paths", "graph", "optimize", "deconv", "top_images", "report", "audit", "evaluate",
         "sanity", "bench", "plan", "models")
SCHEMA_FILE = Path(__file__).resolve().parent.parent / "schemas" / "lrpath.schema.json"


def stamp(kind: str, doc: dict) -> dict:
    """``doc`` with ``"schema": "lrpath.<kind>/<version>"`` first."""
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}")
    return {"schema": f"lrpath.{kind}/{VERSION}", **{k: v for k, v in doc.items() if k != "schema"}}


def target_json(target, labels=None, neuron=None) -> dict:
    """The explained target as every file writes it: a class ``{"index", "label"}``, or a neuron
    ``{"neuron": "layer:channel@(y, x)"}`` (with ``index``, its flat index, when it is an output
    neuron of a feature-map model such as a backbone: pass ``neuron``)."""
    if isinstance(target, (int, np.integer)):
        i = int(target)
        if neuron is not None:
            return {"neuron": str(neuron), "index": i}
        return {"index": i, "label": labels[i] if labels and 0 <= i < len(labels) else None}
    return {"neuron": str(target)}


def model_json(path, name: str | None) -> dict:
    """``model`` (the file) and ``model_name`` (the zoo name, or null)."""
    return {"model": str(path), "model_name": name}


@lru_cache(maxsize=1)
def schema_document() -> dict:
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def kind_of(doc: dict) -> str:
    tag = doc.get("schema", "")
    if not isinstance(tag, str) or not tag.startswith("lrpath.") or "/" not in tag:
        raise ValueError(f"not an lrpath output (schema {tag!r})")
    return tag[len("lrpath."):].split("/")[0]


def validate(doc: dict) -> None:
    """Raise ``jsonschema.ValidationError`` when ``doc`` does not fit its kind's schema
    (``jsonschema`` is a test dependency; the analyzer itself never needs it)."""
    import jsonschema

    full = schema_document()
    kind = kind_of(doc)
    jsonschema.validate(doc, {"$ref": f"#/$defs/{kind}", "$defs": full["$defs"]})
