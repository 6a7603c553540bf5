"""``lrpath plan MODEL``: the rule for every layer, and every op that cannot be explained."""

from __future__ import annotations

import json

import click

from ..errors import UnsupportedOpError
from ..graph.canonical import build_layer_graph
from ..graph.loader import load_model
from ..io.schema import model_json, stamp
from ..plan.planner import make_plan
from ..plan.presets import AUTO_DOC, PRESETS
from ..plan.rules import SPECS
from .options import model_file, model_options, output_option, zoo_name


def _fmt(shape) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")" if shape else "?"


def presets_text() -> str:
    lines = ["presets:", f"  {'auto':22s} {AUTO_DOC}"] + [f"  {name:22s} {doc}" for name, (_, doc) in sorted(PRESETS.items())]
    lines += ["rules (for --rule PATTERN=RULE[:ITEMS]; items: numbers in order, name=number, or the flag nobias):"]
    for s in SPECS.values():
        if s.kinds == ("linear",) or "merge" in s.kinds:
            params = ",".join(f"{p}={d:g}" for p, d in zip(s.params, s.defaults) if d == d)
            lines.append(f"  {s.name + (':' + params if params else ''):22s} {s.doc}")
    return "\n".join(lines)


def _other_outputs(names: tuple[str, ...], chosen: str) -> str:
    """Where the model has several outputs, which ones ``--model-output`` could pick instead."""
    if len(names) < 2:
        return ""
    return "   (outputs " + ", ".join(f"{i}: {n}" + ("*" if n == chosen else "") for i, n in enumerate(names)) \
        + "; --model-output picks)"


@click.command()
@click.argument("model", required=False)
@model_options
@output_option
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--presets", "list_presets", is_flag=True, help="List presets and rules, then exit.")
def plan(model, preset, rules, device, forward_engine, output, as_json, list_presets):
    """Print the LRP rule plan of MODEL (a .onnx file or a zoo name): index, layer, op, rule, parameters."""
    if list_presets:
        click.echo(presets_text())
        return 0
    if model is None:
        raise click.UsageError("missing MODEL (or use --presets)")
    name, model = zoo_name(model), model_file(model)
    loaded = load_model(model)
    unsupported: list[UnsupportedOpError] = []
    graph = build_layer_graph(loaded, collect=unsupported, output=output)
    p = make_plan(graph, preset, rules)
    if as_json:
        click.echo(json.dumps(stamp("plan", {
                               **model_json(model, name), "input": graph.input, "input_shape": graph.input_shape,
                               "output": graph.output, "model_output": graph.model_output,
                               "model_outputs": list(graph.model_outputs),
                               "stripped": graph.stripped, "preset": preset,
                               "preset_applied": p.applied, "preset_reason": p.reason, "rule_overrides": list(rules),
                               "rules": p.to_json(),
                               "unsupported": [{"op": e.op_type, "node": e.node, "detail": e.detail}
                                               for e in unsupported]}), indent=2, default=str))
    else:
        click.echo(f"model  {model}  (opset {loaded.opset}" + ("; float16, analysed in float32)" if loaded.widened else ")"))
        click.echo(f"input  {graph.input} {_fmt(graph.input_shape)}   explained output  {graph.output} "
                   f"{_fmt(graph.output_shape)}" + (f"   (stripped: {', '.join(graph.stripped)})" if graph.stripped else "")
                   + _other_outputs(graph.model_outputs, graph.model_output))
        click.echo(f"preset {p.describe()}" + (f"   overrides: {' '.join(rules)}" if rules else "") + "   (* = override)")
        click.echo(p.table())
    if unsupported:
        listed = "; ".join(f"{e.op_type} at '{e.node}'" + (f" ({e.detail})" if e.detail else "") for e in unsupported)
        raise UnsupportedOpError(unsupported[0].op_type, unsupported[0].node,
                                 f"{len(unsupported)} unsupported op(s) in all: {listed}")
    return 0
