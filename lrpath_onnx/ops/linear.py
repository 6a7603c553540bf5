"""Shared relevance step of every linear layer (Conv, dense, average pools).

Subclasses only say how to read the node (``parse``) and how to build the layer's
``LinearMap`` for a batch; the rule arithmetic is ``backward.linear_rules``.
"""

from __future__ import annotations

import numpy as np

from ..backward import linear_rules
from ..backward.linear_rules import Term
from ..runtime.terms import term_tensor
from .registry import BackwardContext, OpHandler


class LinearHandler(OpHandler):
    """A layer ``z = a ⋆ W + b`` explained by its plan rule."""

    #: whether onnxruntime may compute this op's rule forward terms as extra nodes
    runtime_terms = True

    def linear_map(self, layer, a: np.ndarray, r: np.ndarray, backend):
        raise NotImplementedError

    def terms(self, layer, rule) -> list[Term]:
        """Input-dependent forward terms of ``rule`` (computed by onnxruntime when enabled)."""
        if not self.runtime_terms:
            return []
        return linear_rules.forward_terms(rule, bool(layer.attrs.get("nonneg_input")))

    def needs(self, layer, rule, shapes):
        need = {layer.inputs[0]}
        if linear_rules.is_identity(rule):
            need.add(layer.output)
        return need

    def input_activation(self, layer, ctx: BackwardContext) -> np.ndarray:
        return ctx.fwd[layer.inputs[0]]

    def _setup(self, layer, rule, r, ctx: BackwardContext):
        a = self.input_activation(layer, ctx)
        lin = self.linear_map(layer, a, r, ctx.backend)
        z, terms = None, {}
        if ctx.reuse_forward:  # onnxruntime's float32 products; a float64 run recomputes them
            z = ctx.fwd.get(layer.output) if linear_rules.is_identity(rule) else None
            for term in self.terms(layer, rule):
                t = ctx.fwd.get(term_tensor(layer, term))
                if t is not None:
                    terms[term] = t
        return dict(lin=lin, a=a, r=r, backend=ctx.backend, cache=ctx.cache, layer_name=self.cache_key(layer, a),
                    z=z, bounds=ctx.bounds.get(layer.name), nonneg=bool(layer.attrs.get("nonneg_input")),
                    terms=terms)

    def relevance(self, layer, rule, r, ctx: BackwardContext):
        setup = self._setup(layer, rule, r, ctx)
        prods = linear_rules.products(rule, **setup)
        if ctx.reuse_forward and ctx.keep_products:  # forward terms serve later passes (reexplain)
            for term, value in setup["terms"].items():
                ctx.fwd.setdefault(term_tensor(layer, term), value)
        if layer.name in ctx.keep_products:  # the neuron graph's flows reuse them
            ctx.products[layer.name] = (setup["lin"], prods)
        return [linear_rules.combine(rule, setup["lin"], prods, setup["a"].dtype, ctx.cache, setup["layer_name"])]

    def flows(self, layer, rule, r, ctx: BackwardContext, rows, cols, kept=None) -> np.ndarray:
        """F[n, i, j]: relevance from output channel ``cols[j]`` to input channel ``rows[i]``.

        ``kept``: the (linear map, products) stored by the backward pass, if it kept them.
        """
        if kept is None:
            setup = self._setup(layer, rule, r, ctx)
            kept = (setup["lin"], linear_rules.products(rule, **setup))
        return linear_rules.channel_flows(kept[0], kept[1], ctx.backend, rows, cols)

    def deconv(self, layer, s, ctx: BackwardContext):
        """The transposed layer with its own (forward) weights, as the paper initialises its
        deconvolution layers from the conv layers."""
        a = self.input_activation(layer, ctx)
        lin = self.linear_map(layer, a, s, ctx.backend)
        w = np.asarray(lin.weight, s.dtype)
        return [lin.transpose(s, w)]

    def cache_key(self, layer, a: np.ndarray) -> str:
        return layer.name
