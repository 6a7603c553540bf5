"""LayerNormalization and InstanceNormalization: AttnLRP's identity rule for normalisation.

``y = (x − μ)/σ · w + b`` over the normalised axes. With σ held constant for the backward
pass (AttnLRP; LXT stops the gradient through the variance), the layer is a linear map per
sample, ``y = A x + b`` with ``A = diag(w/σ)(I − 11ᵀ/D)``, and LRP-ε applies to it:
``s = R / stab(y)``, ``R_in = x ⊙ Aᵀ s = x ⊙ (w⊙s − mean(w⊙s)) / σ``. The bias ``b`` absorbs
its share, as any bias; the centring moves relevance between features but conserves it. A rule
without its bias (``nobias``, asked for with ``--rule``) divides by ``A x = y − b`` instead:
``Σ R_in = Σ R`` (but for the stabiliser), but the relevance reaching y is about proportional to
y, so where y ≈ b single values grow without bound; no preset uses it. InstanceNormalization
(and torch's GroupNorm, exported as one over groups) is the same map over the spatial axes,
with a scale and bias per channel.
"""

from __future__ import annotations

import numpy as np

from ..graph.layers import InstanceNormLayer, LayerNormLayer
from .registry import (
    BackwardContext,
    OpHandler,
    OwnLinearMap,
    ParseContext,
    node_layer,
    register,
)


@register
class LayerNormHandler(OwnLinearMap, OpHandler):
    """LayerNormalization (opset 17) with constant scale and bias."""

    op_types = ("LayerNormalization",)
    def parse(self, node, ctx: ParseContext):
        ctx.data_input(node)
        attrs = ctx.attrs(node)
        weight = np.asarray(ctx.const(node, 1, "scale"), np.float32)
        bias = ctx.optional_const(node, 2, "bias")
        return node_layer(LayerNormLayer, node, ctx, self, [node.input[0]], axis=int(attrs.get("axis", -1)),
                          epsilon=float(attrs.get("epsilon", 1e-5)), weight=weight,
                          bias=None if bias is None else np.asarray(bias, np.float32))

    def needs(self, layer, rule, shapes):
        return {layer.inputs[0], layer.output}

    @staticmethod
    def _axes(layer, x) -> tuple[int, ...]:
        return tuple(range(layer.axis % x.ndim, x.ndim))

    @staticmethod
    def _param(layer, v, x):
        """``weight`` or ``bias`` as it broadcasts against ``x`` (over the normalised axes)."""
        return v.astype(x.dtype)

    def _stats(self, layer, x):
        """(μ, σ) over the normalised axes, in ``x``'s precision."""
        axes = self._axes(layer, x)
        mu = x.mean(axis=axes, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
        return mu, np.sqrt(var + np.asarray(layer.epsilon, x.dtype))

    def forward(self, layer, inputs):
        x = inputs[0]
        mu, sigma = self._stats(layer, x)
        y = (x - mu) / sigma * self._param(layer, layer.weight, x)
        return y if layer.bias is None else y + self._param(layer, layer.bias, x)

    def relevance(self, layer, rule, r, ctx: BackwardContext):
        x = ctx.fwd[layer.inputs[0]]
        y = ctx.fwd[layer.output] if ctx.reuse_forward else self.forward(layer, [x])
        if not rule.bias and layer.bias is not None:
            y = y - self._param(layer, layer.bias, y)
        _, sigma = self._stats(layer, x)
        t = ctx.backend.stabilised_divide(r, y, rule.get("epsilon", 0.0)) * self._param(layer, layer.weight, x)
        return [x * ((t - t.mean(axis=self._axes(layer, x), keepdims=True)) / sigma)]

    def gradient(self, layer, g, ctx: BackwardContext):
        """The true derivative (σ depends on x): ``(t − mean(t) − x̂·mean(t·x̂)) / σ``, t = g⊙w."""
        x = ctx.fwd[layer.inputs[0]]
        mu, sigma = self._stats(layer, x)
        axes = self._axes(layer, x)
        xhat = (x - mu) / sigma
        t = g * self._param(layer, layer.weight, g)
        return [(t - t.mean(axis=axes, keepdims=True) - xhat * (t * xhat).mean(axis=axes, keepdims=True)) / sigma]

    def infer_shape(self, layer, in_shapes, readers):
        return in_shapes[0]

    def chain_input(self, layer):
        return None


@register
class InstanceNormHandler(LayerNormHandler):
    """InstanceNormalization (per sample and channel over the spatial axes) with constant
    scale and bias per channel."""

    op_types = ("InstanceNormalization",)

    def parse(self, node, ctx: ParseContext):
        ctx.data_input(node)
        attrs = ctx.attrs(node)
        shape = ctx.shape(node.input[0])
        if shape is not None and len(shape) < 3:
            raise ctx.fail(node, f"input rank {len(shape)} (instance normalisation needs N, C and a spatial axis)")
        weight = np.asarray(ctx.const(node, 1, "scale"), np.float32).reshape(-1)
        bias = np.asarray(ctx.const(node, 2, "B"), np.float32).reshape(-1)
        return node_layer(InstanceNormLayer, node, ctx, self, [node.input[0]], axis=2,
                          epsilon=float(attrs.get("epsilon", 1e-5)), weight=weight, bias=bias)

    @staticmethod
    def _param(layer, v, x):
        return v.astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 2))
