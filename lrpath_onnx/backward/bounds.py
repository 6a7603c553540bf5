"""z^B box bounds, carried from the model's input to the layer that uses the rule.

The user states the admissible input range in the model's input space (per channel: the
normalised images of 0 and 1, or explicit ``--low/--high``). When the graph itself
normalises (Keras: Sub/Div; tf2onnx: Transpose to NCHW), the first Conv sees a
transformed range; pushing the low and high tensors through those same element-wise and
routing layers gives the exact bounds there (min/max taken again after each step, so a
negative scale cannot swap them).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InputError
from ..graph.layers import PASS, ROUTE, Layer, LayerGraph
from ..plan.planner import Plan


def _chain_to(graph: LayerGraph, layer: Layer) -> list[Layer]:
    """The PASS/ROUTE layers from the model input to ``layer``'s data input, in order."""
    chain = []
    t = layer.inputs[0]
    while t != graph.input:
        prev = graph.producer.get(t)
        if prev is None or prev.kind not in (PASS, ROUTE) or prev.handler.chain_input(prev) is None:
            what = "nothing" if prev is None else f"{prev.op} '{prev.name}'"
            raise InputError(f"rule zbox on layer '{layer.name}' needs the model input behind it "
                             f"through element-wise/reshape layers only, but {what} is in between; "
                             "give explicit bounds with --rule 'LAYER=zbox:LOW,HIGH'")
        chain.append(prev)
        t = prev.inputs[0]
    return chain[::-1]


def _forward(layer: Layer, x: np.ndarray) -> np.ndarray:
    try:
        return layer.handler.forward(layer, [x])
    except NotImplementedError as exc:
        raise InputError(f"cannot carry z^B bounds through '{layer.name}' ({exc})") from None


def box_bounds(graph: LayerGraph, plan: Plan, low: np.ndarray, high: np.ndarray,
               input_shape: tuple[int, ...], act_shapes: dict[str, tuple]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(low, high) arrays shaped like each zbox layer's input activation.

    Parameters
    ----------
    low, high : bounds broadcastable to the model input (e.g. per channel).
    input_shape : the batch's input shape.
    act_shapes : run-time shapes of the zbox layers' input activations.
    """
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for layer in plan.uses("zbox"):
        rule = plan.rule_for(layer)
        shape = act_shapes[layer.inputs[0]]
        lo_p, hi_p = rule.get("low"), rule.get("high")
        if lo_p is not None and not math.isnan(lo_p):
            out[layer.name] = (np.full(shape, lo_p, np.float32), np.full(shape, hi_p, np.float32))
            continue
        lo = np.broadcast_to(np.asarray(low, np.float32), input_shape).astype(np.float32)
        hi = np.broadcast_to(np.asarray(high, np.float32), input_shape).astype(np.float32)
        for step in _chain_to(graph, layer):
            a, b = _forward(step, lo), _forward(step, hi)
            lo, hi = np.minimum(a, b), np.maximum(a, b)
        out[layer.name] = (np.ascontiguousarray(lo, np.float32), np.ascontiguousarray(hi, np.float32))
    return out
