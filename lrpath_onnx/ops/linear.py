"""Shared relevance step of every linear layer (Conv, dense, average pools, resize).

Subclasses only say how to read the node (``parse``) and how to build the layer's
``LinearMap`` for a batch; the rule arithmetic is ``backward.linear_rules``.
"""

from __future__ import annotations

import numpy as np

from ..backward import linear_rules
from ..backward.linear_rules import Part
from ..plan.rules import Rule, make_rule
from .registry import BackwardContext, OpHandler, full_box, input_dims


def term_tensor(layer, part: Part, bounds_key: str = "") -> str:
    """Name of the tensor holding the forward of ``part`` of ``layer`` (computed by onnxruntime,
    or kept from an earlier pass over the same batch). z^B's parts depend on the bounds too:
    theirs carry ``bounds_key``, so a pass under other bounds does not take them."""
    key = f"@{bounds_key}" if bounds_key and part.inp in ("above", "below") else ""
    return f"{layer.output}::z[{part.tag()}{key}]"


class LinearHandler(OpHandler):
    """A layer ``z = a ⋆ W + b`` explained by its plan rule."""

    fixed_rule = None
    #: whether onnxruntime may compute this op's rule forward terms as extra nodes
    runtime_terms = True

    def linear_map(self, layer, a: np.ndarray, r: np.ndarray, backend):
        raise NotImplementedError

    def default_rule(self, layer) -> Rule:
        return make_rule("epsilon", 1e-6)

    def terms(self, layer, rule) -> list[Part]:
        """Input-dependent forward terms of ``rule`` (computed by onnxruntime when enabled)."""
        if not self.runtime_terms:
            return []
        return linear_rules.forward_terms(rule, layer.nonneg_input)

    def needs(self, layer, rule, shapes):
        need = {layer.inputs[0]}
        if linear_rules.is_identity(rule):
            need.add(layer.output)
        elif linear_rules.needs_sign(rule, layer.nonneg_input):
            need.add(self._sign_source(layer, rule))
        return need

    def needs_when_quiet(self, layer, rule, shapes):
        """Where the relevance is already 0 wherever the ReLU after the layer is off and the rule
        keeps the bias: γ's sign (that ReLU) is not read, the negative group being left out and
        the positive one ungated (``linear_rules.products``); and LRP-0/ε divide by that ReLU's
        output instead of the layer's own, equal wherever the relevance is not 0 (a ReLU's, not
        ReLU6's, which caps it), so onnxruntime keeps the layer fused with its ReLU."""
        need = self.needs(layer, rule, shapes)
        if not (rule.bias and layer.sign_tensor):
            return need
        if linear_rules.is_identity(rule):  # only where the ReLU's output is z (not ReLU6's)
            return need - {layer.output} | {layer.sign_tensor} if layer.sign_is_z else need
        if linear_rules.needs_sign(rule, layer.nonneg_input):
            return need - {layer.sign_tensor}
        return need

    @staticmethod
    def _divides_by_relu(layer, rule, ctx: BackwardContext) -> bool:
        """Whether the ReLU's output may stand for the layer's own (``needs_when_quiet``)."""
        return bool(rule.bias and layer.sign_tensor and layer.sign_is_z and layer.name in ctx.quiet_negatives)

    @staticmethod
    def _sign_source(layer, rule) -> str:
        """The tensor γ reads the outputs' signs from: the ReLU after the layer when the sign is
        that of the full output, the output itself when the bias is left out (z − b)."""
        return (layer.sign_tensor or layer.output) if rule.bias else layer.output

    def input_activation(self, layer, ctx: BackwardContext) -> np.ndarray:
        return ctx.fwd[layer.inputs[0]]

    def _setup(self, layer, rule, r, ctx: BackwardContext):
        a = self.input_activation(layer, ctx)
        lin = self.linear_map(layer, a, r, ctx.backend)
        z, terms, sign = None, {}, None
        if ctx.reuse_forward:  # onnxruntime's float32 products; a float64 run recomputes them
            z = ctx.fwd.get(layer.output) if linear_rules.is_identity(rule) else None
            if z is None and linear_rules.is_identity(rule) and self._divides_by_relu(layer, rule, ctx):
                z = ctx.fwd.get(layer.sign_tensor)
            z = None if z is None else self.output_view(layer, z)
            for term in linear_rules.all_parts(rule, layer.nonneg_input):
                t = ctx.fwd.get(term_tensor(layer, term, ctx.bounds_key))
                if t is not None:
                    terms[term] = t
        if ctx.reuse_forward and linear_rules.needs_sign(rule, layer.nonneg_input):  # a float64 run recomputes it
            tensor = self._sign_source(layer, rule)
            if tensor in ctx.fwd:
                t = self.output_view(layer, ctx.fwd[tensor])
                if not rule.bias and lin.bias is not None:
                    t = t - linear_rules.bias_like(ctx.backend.asarray(lin.bias, t.dtype), t)
                sign = (t, tensor != layer.output)
        return dict(lin=lin, a=a, r=r, backend=ctx.backend, cache=ctx.cache, layer_name=self.cache_key(layer, a),
                    z=z, bounds=ctx.bounds.get(layer.name), nonneg=layer.nonneg_input, terms=terms, sign=sign,
                    quiet_negatives=layer.name in ctx.quiet_negatives)

    def _keeps_terms(self, layer, ctx: BackwardContext) -> bool:
        """Whether this pass's forward terms may be kept for later passes: only where they are
        laid out as the layer's output (which ``replicate_forward`` slices by sample) and the
        forward tensors are the caller's own (a GPU backend works on a copy of them)."""
        return type(self).output_view is LinearHandler.output_view and ctx.backend.host_arrays

    def output_view(self, layer, t):
        """A fetched output-shaped tensor as the linear map's output layout."""
        return t

    def relevance(self, layer, rule, r, ctx: BackwardContext):
        setup = self._setup(layer, rule, r, ctx)
        keep = bool(ctx.reuse_forward and ctx.keep_products and self._keeps_terms(layer, ctx))
        prods = linear_rules.products(rule, **setup, keep_terms=keep)
        if keep:
            shape = ctx.shapes.get(layer.output)
            for term, value in setup["terms"].items():  # forward terms serve later passes (reexplain, relevance_below)
                if shape and value.shape[0] == ctx.batch and tuple(value.shape[1:]) == tuple(shape[1:]):
                    ctx.fwd.setdefault(term_tensor(layer, term, ctx.bounds_key), value)
        if layer.name in ctx.keep_products:  # the neuron graph's flows reuse them
            ctx.products[layer.name] = (setup["lin"], prods)
        return [linear_rules.combine(setup["lin"], prods, setup["a"], ctx.cache, setup["layer_name"])]

    def flows(self, layer, rule, r, ctx: BackwardContext, rows, cols, kept=None) -> np.ndarray:
        """F[n, i, j]: relevance from output channel ``cols[j]`` to input channel ``rows[i]``.

        ``kept``: the (linear map, products) stored by the backward pass, if it kept them.
        """
        if kept is None:
            setup = self._setup(layer, rule, r, ctx)
            kept = (setup["lin"], linear_rules.products(rule, **setup))
        return linear_rules.channel_flows(kept[0], kept[1], ctx.backend, rows, cols)

    def own_weights(self, layer, g, ctx: BackwardContext):
        """(linear map, the layer's own weights in ``g``'s dtype) for a step back with ``g``."""
        a = self.input_activation(layer, ctx)
        lin = self.linear_map(layer, a, g, ctx.backend)
        return lin, ctx.cache.get(self.cache_key(layer, a), lin, "id", 0.0, g.dtype)[0]

    def gradient(self, layer, g, ctx: BackwardContext, exact: bool = False):
        """The transposed layer with its own weights (the bias has no gradient path)."""
        lin, w = self.own_weights(layer, g, ctx)
        return [lin.transpose(g, w, exact=exact)]

    def deconv(self, layer, s, ctx: BackwardContext):
        """The transposed layer with its own (forward) weights, as the paper initialises its
        deconvolution layers from the conv layers: the gradient's step, with exact products
        over the whole map (a single neuron's signal is sparse; Winograd's rounding would
        leak past the pixels it reads; ``ConvHandler.deconv`` crops to the signal first)."""
        return self.gradient(layer, s, ctx, exact=True)

    def cache_key(self, layer, a: np.ndarray) -> str:
        return layer.name

    def input_boxes(self, layer, box, shapes):
        """A dense layer reads every input feature."""
        return [full_box(input_dims(layer.inputs[0], shapes))]

    def nonneg_output(self, layer, nonneg_inputs):
        return False

    def channel_map(self, layer, ids, out_shape):
        raise ValueError("a linear layer mixes channels")

    def chain_input(self, layer):
        return None
