"""Arithmetic nodes: constant affine maps, residual sums and products of two tensors.

``Add/Sub/Mul/Div/Sum`` and inference-mode ``BatchNormalization`` are read here and become
the layer their operands make them:

- one non-constant operand: a constant affine map ``x·scale + shift`` (relevance passes
  through). Right after a Conv/dense layer (BatchNorm, tf2onnx's folded BN as Mul+Add, a
  MatMul's bias Add) it is folded into that layer by ``graph.passes.fold_affine``;
- several non-constant operands of Add/Sum: a merge (``ops.merge``);
- two non-constant operands of Mul: a product, which the canonical passes turn into an
  activation (``x·sigmoid(x)``) or a gate (squeeze-excitation), or refuse.
"""

from __future__ import annotations

import numpy as np

from ..errors import ModelError
from ..graph.layers import AffineLayer, MergeLayer, ProductLayer
from .arrays import absolute
from .registry import OpHandler, ParseContext, node_layer, register, unbroadcast


class AffineHandler(OpHandler):
    """``y = x·scale + shift``: relevance (and a deconvolution signal) passes through, or, under
    the ``shift`` rule (the transformer presets, for a position embedding; ``auto``'s
    ``epsilon-gamma-box``, for a BatchNorm no layer takes in), crosses it as a linear layer
    whose shift is a bias: ``R_in = x·scale·R / stab(y)``; under ``ratio``, by the shares of
    the absolute terms: ``R_in = |x·scale| / (|x·scale| + |shift|) · R``. ``zero`` and
    ``epsilon`` (``--rule '*=zero'``: LRP-0 everywhere) are ``shift`` with their ε: the map is
    a linear layer with a diagonal weight."""

    def accepts(self, layer, rule):
        return rule.name in ("pass", "shift", "ratio", "zero", "epsilon")

    def needs(self, layer, rule, shapes):
        if rule.name == "pass":
            return super().needs(layer, rule, shapes)
        return {layer.inputs[0]}

    def relevance(self, layer, rule, r, ctx):
        if rule.name == "pass":
            return super().relevance(layer, rule, r, ctx)
        x = ctx.fwd[layer.inputs[0]]
        scale = ctx.backend.asarray(np.asarray(layer.scale, x.dtype))
        shift = ctx.backend.asarray(np.asarray(layer.shift, x.dtype))
        if rule.name == "ratio":  # never amplified, none where x is 0
            part = absolute(x * scale)
            s = ctx.backend.stabilised_divide(r, part + absolute(shift), 0.0)
            return [unbroadcast(part * s, ctx.shape_of(layer.inputs[0]))]
        s = ctx.backend.stabilised_divide(r, x * scale + shift, rule.get("epsilon", 0.0))
        return [unbroadcast(x * scale * s, ctx.shape_of(layer.inputs[0]))]

    def deconv(self, layer, s, ctx):
        """The map's transpose, ``s·scale``: what the signal would get had the map been folded
        into the convolution next to it (as BatchNorm after a conv is), so an input
        normalisation or a BatchNorm after a concatenation weighs the channels as the
        network does. The shift is a constant and has no transpose."""
        return self.gradient(layer, s, ctx)

    def forward(self, layer, inputs):
        x = inputs[0]
        return x * layer.scale.astype(x.dtype) + layer.shift.astype(x.dtype)

    def native_refusal(self, layer, shapes):
        return None

    def tangent(self, layer, ins):
        v, dv = ins[0]
        return self.forward(layer, [v]), dv * layer.scale.astype(v.dtype)

    def gradient(self, layer, g, ctx):
        scale = ctx.backend.asarray(np.asarray(layer.scale, g.dtype))
        return [unbroadcast(g * scale, ctx.shape_of(layer.inputs[0]))]

    def nonneg_output(self, layer, nonneg_inputs):
        return all(nonneg_inputs) and bool((layer.scale >= 0).all() and (layer.shift >= 0).all())

    def infer_shape(self, layer, in_shapes, readers):
        src = in_shapes[0]
        if src is None:
            return None
        try:
            full = np.broadcast_shapes(tuple(1 if d is None else d for d in src), layer.scale.shape, layer.shift.shape)
        except ValueError:
            return None
        return src if len(full) == len(src) and all(f == (d or 1) for f, d in zip(full, src)) else None


AFFINE = AffineHandler()


def affine_layer(node, ctx: ParseContext, data: str, scale: np.ndarray, shift: np.ndarray,
                 op: str | None = None) -> AffineLayer:
    """A layer ``y = x·scale + shift`` (arrays broadcastable against the full tensor)."""
    scale = np.asarray(scale, np.float32)
    shift = np.asarray(shift, np.float32)
    if not (np.isfinite(scale).all() and np.isfinite(shift).all()):
        raise ModelError(f"node '{ctx.node_name}' ({node.op_type}) has non-finite constants")
    return node_layer(AffineLayer, node, ctx, AFFINE, [data], op=op, scale=scale, shift=shift)


@register
class BatchNormHandler(AffineHandler):
    """BatchNormalization in inference mode: a per-channel affine map."""

    op_types = ("BatchNormalization",)

    def parse(self, node, ctx: ParseContext):
        attrs = ctx.attrs(node)
        if attrs.get("spatial", 1) != 1:
            raise ctx.fail(node, "BatchNormalization with spatial=0")
        ctx.data_input(node)
        gamma = ctx.const(node, 1, "scale").astype(np.float64)
        beta = ctx.const(node, 2, "bias").astype(np.float64)
        mean = ctx.const(node, 3, "mean").astype(np.float64)
        var = ctx.const(node, 4, "variance").astype(np.float64)
        eps = attrs.get("epsilon", 1e-5)
        if (var + eps <= 0).any():
            raise ModelError(f"node '{ctx.node_name}': BatchNormalization variance + ε is not positive")
        scale = gamma / np.sqrt(var + eps)
        shift = beta - mean * scale
        shape = ctx.shape(node.input[0])
        rank = len(shape) if shape is not None else 4
        bshape = (1, -1) + (1,) * (rank - 2)
        return affine_layer(node, ctx, node.input[0], scale.reshape(bshape), shift.reshape(bshape))


@register
class ArithmeticHandler(OpHandler):
    """Add, Sub, Mul, Div, Sum: read into an affine map, a merge or a product (see module)."""

    op_types = ("Add", "Sub", "Mul", "Div", "Sum")

    def parse(self, node, ctx: ParseContext):
        from .gate import PRODUCT
        from .merge import MERGE_HANDLER

        op = node.op_type
        names = [n for n in node.input if n]
        dyn = [n for n in names if not ctx.is_const(n)]
        consts = [np.asarray(ctx.consts[n], np.float64) for n in names if ctx.is_const(n)]
        if not dyn:
            raise ctx.fail(node, "every operand is constant")
        if op in ("Add", "Sum"):
            if len(dyn) == 1:
                shift = sum(consts[1:], consts[0]) if consts else np.zeros(())
                return affine_layer(node, ctx, dyn[0], np.ones_like(shift), shift)
            const = sum(consts[1:], consts[0]) if consts else None
            return node_layer(MergeLayer, node, ctx, MERGE_HANDLER, dyn, const=const)
        if len(dyn) != 1:
            if op == "Mul":
                return node_layer(ProductLayer, node, ctx, PRODUCT, dyn)
            raise ctx.fail(node, f"{op} of two non-constant tensors is not explainable by LRP here")
        d = list(node.input).index(dyn[0])
        c = consts[0]
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
        return affine_layer(node, ctx, dyn[0], scale, shift)
