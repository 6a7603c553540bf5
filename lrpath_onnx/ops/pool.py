"""Pooling: MaxPool (winner-take-all by switches) and average pools (linear layers)."""

from __future__ import annotations

import numpy as np

from ..graph.layers import LINEAR, WTA
from ..kernels.conv import ConvGeometry
from ..plan.rules import make_rule
from .conv import resolve_pads
from .linear import LinearHandler
from .registry import BackwardContext, OpHandler, ParseContext, new_layer, register, static_dims


def _pool_attrs(node, ctx: ParseContext, kernel=None) -> dict:
    attrs = ctx.attrs(node)
    shape = ctx.shape(node.input[0])
    if shape is not None and len(shape) != 4:
        raise ctx.fail(node, f"input rank {len(shape)} (only 2-D pooling is supported)")
    k = tuple(int(v) for v in (kernel or attrs.get("kernel_shape", [])))
    if len(k) != 2:
        raise ctx.fail(node, f"kernel_shape {list(k)} is not 2-D")
    strides = tuple(int(v) for v in attrs.get("strides", [1, 1]))
    dil = tuple(int(v) for v in attrs.get("dilations", [1, 1]))
    pads = resolve_pads(attrs, None if shape is None else shape[2:], k, strides, dil, node, ctx)
    return {"kernel_shape": list(k), "strides": list(strides), "pads": list(pads),
            "dilations": list(dil), "ceil_mode": int(attrs.get("ceil_mode", 0)),
            "count_include_pad": int(attrs.get("count_include_pad", 0))}


@register
class MaxPoolHandler(OpHandler):
    """MaxPool: all relevance of a pooled value goes to the input element that won it.

    The switches are onnxruntime's own ``Indices`` output (the runtime adds it to the
    node when the model does not already ask for it), so ties and padding are resolved
    exactly as in the forward pass.
    """

    op_types = ("MaxPool",)

    def parse(self, node, ctx: ParseContext):
        attrs = _pool_attrs(node, ctx)
        if int(ctx.attrs(node).get("storage_order", 0)) != 0:
            raise ctx.fail(node, "storage_order=1 (column-major switches)")
        has = len(node.output) > 1 and node.output[1]
        attrs["indices"] = node.output[1] if has else f"{node.output[0]}::lrpath_indices"
        attrs["add_indices_output"] = not has
        return new_layer(node, ctx, WTA, [node.input[0]], attrs=attrs)

    def needs(self, layer, rule, shapes):
        need = {layer.attrs["indices"]}
        if not static_dims(shapes.get(layer.inputs[0])):
            need.add(layer.inputs[0])
        return need

    def relevance(self, layer, rule, r, ctx: BackwardContext):
        shape = ctx.shape_of(layer.inputs[0])
        return [ctx.backend.unpool(r, ctx.fwd[layer.attrs["indices"]], shape)]

    def deconv(self, layer, s, ctx: BackwardContext):
        """Switch unpooling: each value goes back to where its maximum was (the same kernel
        as the relevance pass)."""
        return self.relevance(layer, None, s, ctx)

    def forward(self, layer, inputs):
        """Max over each window (padding never wins), in numpy; for bounds and tests."""
        x = inputs[0]
        at = layer.attrs
        (kh, kw), (sh, sw), (dh, dw), p = at["kernel_shape"], at["strides"], at["dilations"], at["pads"]
        g = ConvGeometry((sh, sw), tuple(p), (dh, dw))
        oh, ow = g.out_size(x.shape[2], x.shape[3], kh, kw, ceil=bool(at["ceil_mode"]))
        padded = np.full(x.shape[:2] + (x.shape[2] + p[0] + p[2] + sh, x.shape[3] + p[1] + p[3] + sw), -np.inf,
                         x.dtype)
        padded[:, :, p[0]:p[0] + x.shape[2], p[1]:p[1] + x.shape[3]] = x
        out = np.full(x.shape[:2] + (oh, ow), -np.inf, x.dtype)
        for i in range(kh):
            for j in range(kw):
                win = padded[:, :, i * dh:i * dh + sh * oh:sh, j * dw:j * dw + sw * ow:sw]
                out = np.maximum(out, win[:, :, :oh, :ow])
        return out


def window_counts(n: int, k: int, s: int, d: int, p0: int, p1: int, out: int,
                  include_pad: bool) -> np.ndarray:
    """How many taps of each output window fall inside the input (or the padded input)."""
    lo, hi = (-p0, n + p1) if include_pad else (0, n)
    taps = np.arange(out)[:, None] * s - p0 + np.arange(k)[None, :] * d
    return ((taps >= lo) & (taps < hi)).sum(axis=1).astype(np.float64)


class PoolMap:
    """``LinearMap`` of an average pool: window sum times a per-position weight.

    The "weight" a rule modifies is the map ``1/n_k`` of each output position (``n_k`` the
    divisor onnxruntime uses), shaped (1, 1, oh, ow); ρ acts on it element-wise, so γ, z⁺,
    flat and w² mean exactly what they mean for a dense matrix holding those weights.
    """

    def __init__(self, layer, backend, in_shape, out_hw):
        at = layer.attrs
        self.backend = backend
        C, H, W = in_shape[1:]
        kh, kw = at["kernel_shape"] if at.get("kernel_shape") else (H, W)
        self.geom = ConvGeometry(tuple(at["strides"]), tuple(at["pads"]), tuple(at["dilations"]), C)
        self.in_hw, self.out_hw = (H, W), tuple(out_hw)
        p = at["pads"]
        inc = bool(at["count_include_pad"])
        rows = window_counts(H, kh, at["strides"][0], at["dilations"][0], p[0], p[2], out_hw[0], inc)
        cols = window_counts(W, kw, at["strides"][1], at["dilations"][1], p[1], p[3], out_hw[1], inc)
        with np.errstate(divide="ignore"):
            wmap = np.where(np.outer(rows, cols) > 0, 1.0 / np.outer(rows, cols), 0.0)
        self.weight = wmap.reshape(1, 1, *out_hw)
        self.bias = None
        self.ones = np.ones((C, 1, kh, kw), np.float32)

    def forward(self, x, w, b=None, exact=False):
        box = self.backend.conv2d(x, self.ones.astype(x.dtype), self.geom, None, self.out_hw, exact=True)
        return box * w

    def transpose(self, s, w, mul=None, exact=False, ratio=None):
        if ratio is not None:
            s = self.backend.stabilised_divide(s, *ratio)
        return self.backend.conv2d_transpose(s * w, self.ones.astype(s.dtype), self.geom,
                                             self.in_hw, mul, exact=True)


@register
class AveragePoolHandler(LinearHandler):
    """AveragePool (count_include_pad, ceil_mode) and GlobalAveragePool: linear layers."""

    op_types = ("AveragePool", "GlobalAveragePool")
    runtime_terms = False  # its modified forwards are window sums: cheap in the kernels

    def parse(self, node, ctx: ParseContext):
        if node.op_type == "GlobalAveragePool":
            shape = ctx.shape(node.input[0])
            if shape is not None and len(shape) != 4:
                raise ctx.fail(node, f"input rank {len(shape)} (only 2-D pooling is supported)")
            attrs = {"kernel_shape": None, "strides": [1, 1], "pads": [0, 0, 0, 0],
                     "dilations": [1, 1], "ceil_mode": 0, "count_include_pad": 0}
        else:
            attrs = _pool_attrs(node, ctx)
        return new_layer(node, ctx, LINEAR, [node.input[0]], attrs=attrs)

    def default_rule(self, layer):
        return make_rule("epsilon", 1e-6)

    def linear_map(self, layer, a, r, backend) -> PoolMap:
        return PoolMap(layer, backend, a.shape, r.shape[2:])

    def cache_key(self, layer, a):
        return f"{layer.name}@{a.shape[2]}x{a.shape[3]}"

    def forward(self, layer, inputs):
        from ..backend import CpuBackend

        x = inputs[0]
        at = layer.attrs
        H, W = x.shape[2:]
        if at["kernel_shape"] is None:
            out_hw = (1, 1)
        else:
            g = ConvGeometry(tuple(at["strides"]), tuple(at["pads"]), tuple(at["dilations"]))
            out_hw = g.out_size(H, W, *at["kernel_shape"], ceil=bool(at["ceil_mode"]))
        lin = PoolMap(layer, CpuBackend(), x.shape, out_hw)
        return lin.forward(x, lin.weight.astype(x.dtype))
