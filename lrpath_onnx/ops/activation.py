"""Element-wise activations: relevance passes through unchanged, as zennit's ``Pass`` rule.

One input neuron feeds one output neuron, so the only conservative choice is to hand the
relevance straight through. That holds for ReLU and its relatives and for smooth
activations (SiLU, GELU, Hardswish, Mish, ELU …) alike; what differs between them is
their forward (z^B bounds, tests), their derivative (gradient methods), whether their
output is ≥ 0, whether it keeps the sign of its input, and whether deconvolution
rectifies there. Patterns exporters write instead of one op (``x·sigmoid(x)``, the Erf
GELU) are fused into one activation by ``graph.passes.fuse_elementwise``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..graph.layers import ActivationLayer
from ..kernels import elementwise as _ew
from .registry import BackwardContext, OpHandler, ParseContext, node_layer, register

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _softplus(x):
    return np.logaddexp(0.0, x)


def _gelu(x, p):
    if p.get("approximate") == "tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _gelu_grad(x, p):
    if p.get("approximate") == "tanh":
        k = math.sqrt(2.0 / math.pi)
        u = k * (x + 0.044715 * x ** 3)
        t = np.tanh(u)
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3 * 0.044715 * x * x)
    return 0.5 * (1.0 + _erf(x / math.sqrt(2.0))) + x * np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _clip(x, p):
    return np.clip(x, -np.inf if p["min"] is None else p["min"], np.inf if p["max"] is None else p["max"])


def _clip_grad(x, p):
    lo = -np.inf if p["min"] is None else p["min"]
    hi = np.inf if p["max"] is None else p["max"]
    return ((x > lo) & (x < hi)).astype(x.dtype)


def _hardsigmoid(x, p):
    return np.clip(p["alpha"] * x + p["beta"], 0.0, 1.0)


def _mish(x):
    return x * np.tanh(_softplus(x))


def _mish_grad(x):
    sp = _softplus(x)
    t = np.tanh(sp)
    return t + x * (1.0 - t * t) * _sigmoid(x)


@dataclass(frozen=True)
class Function:
    """An element-wise function: forward, derivative, and the facts the analyses use.

    ``sign``: ``exact`` when the output has the sign of the input (SiLU, tanh …),
    ``positive`` when it is positive exactly where the input is and ≤ 0 elsewhere (ReLU,
    Hardswish), None otherwise. ``nonneg``: the output is ≥ 0 for any input. ``rectifies``:
    a ReLU-like unit (deconvolution rectifies there; a conv's neurons are seen after it).
    """

    forward: Callable
    derivative: Callable
    sign: str | None = None
    nonneg: bool | Callable = False
    rectifies: bool = False


def _fn(f, d, **kw) -> Function:
    return Function(f, d, **kw)


#: every activation by its function name (the ONNX op lower-cased, or a fused pattern's name)
FUNCTIONS: dict[str, Function] = {
    "relu": _fn(lambda x, p: np.maximum(x, 0), lambda x, p: (x > 0).astype(x.dtype),
                sign="positive", nonneg=True, rectifies=True),
    "leakyrelu": _fn(lambda x, p: np.where(x >= 0, x, x * p["alpha"]),
                     lambda x, p: np.where(x >= 0, 1.0, p["alpha"]).astype(x.dtype),
                     sign="exact", rectifies=True),
    "clip": _fn(_clip, _clip_grad, rectifies=True,
                sign=None, nonneg=lambda p: p["min"] is not None and p["min"] >= 0),
    "prelu": _fn(lambda x, p: np.where(x >= 0, x, x * p["slope"]),
                 lambda x, p: np.where(x >= 0, 1.0, p["slope"]).astype(x.dtype), rectifies=True),
    "thresholdedrelu": _fn(lambda x, p: np.where(x > p["alpha"], x, 0.0),
                           lambda x, p: (x > p["alpha"]).astype(x.dtype), nonneg=lambda p: p["alpha"] >= 0),
    "sigmoid": _fn(lambda x, p: _sigmoid(x), lambda x, p: _sigmoid(x) * (1 - _sigmoid(x)), nonneg=True),
    "hardsigmoid": _fn(_hardsigmoid, lambda x, p: np.where((p["alpha"] * x + p["beta"] > 0) &
                                                           (p["alpha"] * x + p["beta"] < 1), p["alpha"], 0.0),
                       nonneg=True),
    "silu": _fn(lambda x, p: x * _sigmoid(x), lambda x, p: _sigmoid(x) * (1 + x * (1 - _sigmoid(x))),
                sign="exact", rectifies=True),
    "hardswish": _fn(lambda x, p: x * np.clip(x + 3, 0, 6) / 6,
                     lambda x, p: np.where(x < -3, 0.0, np.where(x > 3, 1.0, (2 * x + 3) / 6)),
                     sign="positive", rectifies=True),
    "gelu": _fn(_gelu, _gelu_grad, sign="exact", rectifies=True),
    "mish": _fn(lambda x, p: _mish(x), lambda x, p: _mish_grad(x), sign="exact", rectifies=True),
    "elu": _fn(lambda x, p: np.where(x > 0, x, p["alpha"] * np.expm1(np.minimum(x, 0))),
               lambda x, p: np.where(x > 0, 1.0, p["alpha"] * np.exp(np.minimum(x, 0))),
               sign="exact", rectifies=True),
    "celu": _fn(lambda x, p: np.maximum(x, 0) + np.minimum(0, p["alpha"] * np.expm1(np.minimum(x, 0) / p["alpha"])),
                lambda x, p: np.where(x > 0, 1.0, np.exp(np.minimum(x, 0) / p["alpha"])),
                sign="exact", rectifies=True),
    "selu": _fn(lambda x, p: p["gamma"] * np.where(x > 0, x, p["alpha"] * np.expm1(np.minimum(x, 0))),
                lambda x, p: p["gamma"] * np.where(x > 0, 1.0, p["alpha"] * np.exp(np.minimum(x, 0))),
                sign="exact", rectifies=True),
    "softplus": _fn(lambda x, p: _softplus(x), lambda x, p: _sigmoid(x), nonneg=True),
    "softsign": _fn(lambda x, p: x / (1 + np.abs(x)), lambda x, p: 1 / (1 + np.abs(x)) ** 2, sign="exact"),
    "tanh": _fn(lambda x, p: np.tanh(x), lambda x, p: 1 - np.tanh(x) ** 2, sign="exact"),
    "erf": _fn(lambda x, p: _erf(x), lambda x, p: 2 / math.sqrt(math.pi) * np.exp(-x * x), sign="exact"),
    "neg": _fn(lambda x, p: -x, lambda x, p: -np.ones_like(x)),
    "abs": _fn(lambda x, p: np.abs(x), lambda x, p: np.sign(x), nonneg=True),
    "exp": _fn(lambda x, p: np.exp(x), lambda x, p: np.exp(x), nonneg=True),
    "log": _fn(lambda x, p: np.log(x), lambda x, p: 1 / x),
    "sqrt": _fn(lambda x, p: np.sqrt(x), lambda x, p: 0.5 / np.sqrt(x), nonneg=True),
    "reciprocal": _fn(lambda x, p: 1 / x, lambda x, p: -1 / (x * x)),
    "pow": _fn(lambda x, p: np.power(x, p["exponent"]),
               lambda x, p: p["exponent"] * np.power(x, p["exponent"] - 1)),
    # a fused pattern nothing here recognises: forward and derivative come from its parts
    "elementwise": _fn(None, None),
}

#: ONNX op → function name, for single-op activations
OPS = {"Relu": "relu", "LeakyRelu": "leakyrelu", "Clip": "clip", "PRelu": "prelu",
       "ThresholdedRelu": "thresholdedrelu", "Sigmoid": "sigmoid", "HardSigmoid": "hardsigmoid",
       "HardSwish": "hardswish", "Gelu": "gelu", "Mish": "mish", "Elu": "elu", "Celu": "celu",
       "Selu": "selu", "Softplus": "softplus", "Softsign": "softsign", "Tanh": "tanh", "Erf": "erf",
       "Neg": "neg", "Abs": "abs", "Exp": "exp", "Log": "log", "Sqrt": "sqrt", "Reciprocal": "reciprocal",
       "Pow": "pow"}

_DEFAULTS = {"leakyrelu": {"alpha": 0.01}, "hardsigmoid": {"alpha": 0.2, "beta": 0.5}, "elu": {"alpha": 1.0},
             "celu": {"alpha": 1.0}, "thresholdedrelu": {"alpha": 1.0},
             "selu": {"alpha": 1.6732632423543772, "gamma": 1.0507009873554805}}


def function(layer: ActivationLayer) -> Function:
    return FUNCTIONS[layer.fn]


@register
class ActivationHandler(OpHandler):
    """Every single-op activation, and the fused patterns (``layer.parts``)."""

    op_types = tuple(OPS)

    def parse(self, node, ctx: ParseContext):
        fn = OPS[node.op_type]
        attrs = ctx.attrs(node)
        params = {k: attrs.get(k, v) for k, v in _DEFAULTS.get(fn, {}).items()}
        if fn == "clip":
            lo = ctx.optional_const(node, 1, "Clip min") if ctx.opset >= 11 else attrs.get("min")
            hi = ctx.optional_const(node, 2, "Clip max") if ctx.opset >= 11 else attrs.get("max")
            params = {"min": None if lo is None else float(np.asarray(lo)),
                      "max": None if hi is None else float(np.asarray(hi))}
        elif fn == "gelu":
            approx = attrs.get("approximate", b"none")
            params = {"approximate": approx.decode() if isinstance(approx, bytes) else approx}
        elif fn == "prelu":
            slope = np.asarray(ctx.const(node, 1, "PRelu slope"), np.float64)
            params = {"slope": slope if slope.size > 1 else float(slope.reshape(-1)[0])}
        elif fn == "pow":
            e = np.asarray(ctx.const(node, 1, "Pow exponent"), np.float64)
            if e.size != 1:
                raise ctx.fail(node, "Pow with a non-scalar exponent")
            params = {"exponent": float(e.reshape(-1)[0])}
        ctx.data_input(node)
        return node_layer(ActivationLayer, node, ctx, self, [node.input[0]], fn=fn, params=params)

    native_in_place = True

    def native_refusal(self, layer, shapes):
        return None if layer.fn in ("relu", "clip") and not layer.parts else f"activation {layer.fn}"

    def native_forward(self, layer, inputs, backend, in_place=False):
        """ReLU and Clip (ReLU6) as one parallel clamp, in place where the input is the layer's own."""
        p = layer.params
        lo = 0.0 if layer.fn == "relu" else (-np.inf if p.get("min") is None else float(p["min"]))
        hi = np.inf if layer.fn == "relu" or p.get("max") is None else float(p["max"])
        x = inputs[0]
        return {layer.output: _ew.clamp(x, lo, hi, out=x if in_place else None)}

    def forward(self, layer, inputs):
        x = inputs[0]
        if layer.parts:
            return _run_parts(layer, x, lambda part, ins: part.handler.forward(part, ins))
        return function(layer).forward(x, layer.params).astype(x.dtype, copy=False)

    def derivative(self, layer, x: np.ndarray) -> np.ndarray:
        """f'(x) element-wise (host arrays), through the fused parts by the chain rule."""
        if not layer.parts:
            return function(layer).derivative(x, layer.params).astype(x.dtype, copy=False)
        return _part_derivative(layer, x)

    def gradient(self, layer, g, ctx: BackwardContext):
        """``g ⊙ f'(x)``; the derivative is evaluated on the host (a GPU backend's copy goes
        there and back: activations are a small share of the work)."""
        be = ctx.backend
        x = np.asarray(be.to_host(ctx.fwd[layer.inputs[0]]))
        d = self.derivative(layer, x.astype(np.float64) if x.dtype != np.float32 else x)
        return [g * be.upload(np.ascontiguousarray(d, dtype=x.dtype))]

    def tangent(self, layer, ins):
        """(value, derivative w.r.t. a fused pattern's input) from its input's (value, derivative)."""
        v, dv = ins[0]
        return self.forward(layer, [v]), self.derivative(layer, v) * dv

    def deconv(self, layer, s, ctx: BackwardContext):
        """Zeiler–Fergus: the reconstruction is rectified on its way through a ReLU-like unit;
        other activations pass it on."""
        return [np.maximum(s, 0) if self.rectifies(layer) else s]

    def nonneg_output(self, layer, nonneg_inputs):
        nn = function(layer).nonneg
        return nn(layer.params) if callable(nn) else bool(nn)

    def rectifies(self, layer) -> bool:
        return function(layer).rectifies

    def sign_kind(self, layer) -> str | None:
        """How the output's sign follows the input's (see ``Function.sign``)."""
        f = function(layer)
        if layer.fn == "clip":
            lo, hi = layer.params["min"], layer.params["max"]
            if lo is not None and lo == 0 and (hi is None or hi > 0):
                return "positive"
            if lo is not None and lo < 0 and (hi is None or hi > 0):
                return "exact"
            return None
        if layer.fn == "leakyrelu":
            return "exact" if layer.params["alpha"] > 0 else "positive" if layer.params["alpha"] == 0 else None
        return f.sign

    def keeps_positive(self, layer) -> bool:
        """Whether the output equals the input wherever the output is positive (ReLU, a Clip
        at 0 with no upper bound; not ReLU6, which caps it at 6)."""
        if layer.fn == "clip":
            lo, hi = layer.params["min"], layer.params["max"]
            return lo is not None and lo == 0 and (hi is None or hi == float("inf"))
        if layer.fn == "leakyrelu":
            return layer.params["alpha"] == 0
        return layer.fn == "relu"

    def infer_shape(self, layer, in_shapes, readers):
        return in_shapes[0]


def _run_parts(layer: ActivationLayer, x: np.ndarray, step) -> np.ndarray:
    """Evaluate a fused pattern's layers in order from its one input."""
    vals = {layer.inputs[0]: x}
    for part in layer.parts:
        vals[part.output] = step(part, [vals[i] for i in part.inputs])
    return vals[layer.parts[-1].output]


def _part_derivative(layer: ActivationLayer, x: np.ndarray) -> np.ndarray:
    """Forward-mode derivative of a fused pattern: each part carries (value, d value / dx)."""
    vals = {layer.inputs[0]: (x, np.ones_like(x))}
    for part in layer.parts:
        ins = [vals[i] for i in part.inputs]
        vals[part.output] = part.handler.tangent(part, ins)
    return vals[layer.parts[-1].output][1]
