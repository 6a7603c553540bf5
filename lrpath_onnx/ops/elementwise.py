"""Element-wise ops: activations and constant affine maps. Relevance passes unchanged.

One input neuron feeds one output neuron, so the only conservative choice is to hand the
relevance straight through (zennit's "pass" rule). Constant affine maps right after a
Conv/dense layer (BatchNorm, tf2onnx's folded BN as Mul+Add, a MatMul's bias Add) are
folded into that layer by the graph walker before this handler ever sees them; the ones
left (input normalisation, pre-activation BN) stay here.
"""

from __future__ import annotations

import numpy as np

from ..errors import ModelError
from ..graph.layers import PASS
from .registry import BackwardContext, OpHandler, ParseContext, new_layer, register, static_dims, unbroadcast


class PassHandler(OpHandler):
    """Relevance in = relevance out (summed back over any broadcast axes)."""

    def needs(self, layer, rule, shapes):
        return set() if static_dims(shapes.get(layer.inputs[0])) else {layer.inputs[0]}

    def relevance(self, layer, rule, r, ctx: BackwardContext):
        return [unbroadcast(r, ctx.shape_of(layer.inputs[0]))]

    def deconv(self, layer, s, ctx: BackwardContext):
        """Constant affine maps pass the signal on (as in the relevance pass)."""
        return self.relevance(layer, None, s, ctx)


@register
class ActivationHandler(PassHandler):
    """Relu, LeakyRelu, Clip (ReLU6): monotone, one-to-one."""

    op_types = ("Relu", "LeakyRelu", "Clip")

    def parse(self, node, ctx: ParseContext):
        attrs = ctx.attrs(node)
        if node.op_type == "Clip":
            lo = ctx.optional_const(node, 1, "Clip min") if ctx.opset >= 11 else attrs.get("min")
            hi = ctx.optional_const(node, 2, "Clip max") if ctx.opset >= 11 else attrs.get("max")
            attrs = {"min": None if lo is None else float(np.asarray(lo)),
                     "max": None if hi is None else float(np.asarray(hi))}
        if node.op_type == "LeakyRelu":
            attrs.setdefault("alpha", 0.01)
        return new_layer(node, ctx, PASS, [node.input[0]], attrs=attrs)

    def deconv(self, layer, s, ctx: BackwardContext):
        """Zeiler–Fergus: the reconstruction is rectified on its way through a ReLU."""
        return [np.maximum(s, 0)]

    def forward(self, layer, inputs):
        x = inputs[0]
        if layer.op == "Relu":
            return np.maximum(x, 0)
        if layer.op == "LeakyRelu":
            return np.where(x >= 0, x, x * layer.attrs["alpha"])
        lo, hi = layer.attrs["min"], layer.attrs["max"]
        return np.clip(x, -np.inf if lo is None else lo, np.inf if hi is None else hi)


def affine_layer(node, ctx: ParseContext, data: str, scale: np.ndarray, shift: np.ndarray,
                 op: str | None = None):
    """A PASS layer ``y = x·scale + shift`` (arrays broadcastable against the full tensor)."""
    scale = np.asarray(scale, np.float32)
    shift = np.asarray(shift, np.float32)
    if not (np.isfinite(scale).all() and np.isfinite(shift).all()):
        raise ModelError(f"node '{ctx.node_name}' ({node.op_type}) has non-finite constants")
    return new_layer(node, ctx, PASS, [data], params={"scale": scale, "shift": shift}, op=op,
                     attrs={"affine": True})


@register
class AffineHandler(PassHandler):
    """Mul/Sub/Div by a constant, and BatchNormalization in inference mode."""

    op_types = ("Mul", "Sub", "Div", "BatchNormalization")

    def parse(self, node, ctx: ParseContext):
        op = node.op_type
        if op == "BatchNormalization":
            return self._batchnorm(node, ctx)
        dyn = [i for i, n in enumerate(node.input[:2]) if not ctx.is_const(n)]
        if len(dyn) != 1:
            raise ctx.fail(node, f"{op} of two non-constant tensors is not explainable by LRP here")
        d = dyn[0]
        c = np.asarray(ctx.const(node, 1 - d, f"{op} operand"), np.float64)
        one = np.ones_like(c)
        if op == "Mul":
            scale, shift = c, 0 * c
        elif op == "Sub":
            scale, shift = (one, -c) if d == 0 else (-one, c)
        else:  # Div
            if d == 1:
                raise ctx.fail(node, "division of a constant by a tensor is not affine")
            if (c == 0).any():
                raise ModelError(f"node '{ctx.node_name}' divides by a constant that holds 0")
            scale, shift = 1.0 / c, 0 * c
        return affine_layer(node, ctx, node.input[d], scale, shift)

    def _batchnorm(self, node, ctx: ParseContext):
        attrs = ctx.attrs(node)
        if attrs.get("spatial", 1) != 1:
            raise ctx.fail(node, "BatchNormalization with spatial=0")
        gamma = ctx.const(node, 1, "scale").astype(np.float64)
        beta = ctx.const(node, 2, "bias").astype(np.float64)
        mean = ctx.const(node, 3, "mean").astype(np.float64)
        var = ctx.const(node, 4, "variance").astype(np.float64)
        if (var + attrs.get("epsilon", 1e-5) <= 0).any():
            raise ModelError(f"node '{ctx.node_name}': BatchNormalization variance + ε is not positive")
        scale = gamma / np.sqrt(var + attrs.get("epsilon", 1e-5))
        shift = beta - mean * scale
        shape = ctx.shape(node.input[0])
        rank = len(shape) if shape is not None else 4
        bshape = (1, -1) + (1,) * (rank - 2)
        return affine_layer(node, ctx, node.input[0], scale.reshape(bshape), shift.reshape(bshape))

    def forward(self, layer, inputs):
        return inputs[0] * layer.params["scale"].astype(inputs[0].dtype) + \
            layer.params["shift"].astype(inputs[0].dtype)
