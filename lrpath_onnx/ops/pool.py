"""Pooling: MaxPool (winner-take-all by switches) and average pools (linear layers).

GlobalAveragePool, AveragePool and a ReduceMean over the spatial axes (``x.mean((2, 3))``,
what many exporters write for adaptive average pooling) are the same linear layer.
"""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from ..graph.layers import AvgPoolLayer, MaxPoolLayer, PoolWindow
from ..kernels.conv import ConvGeometry
from ..kernels.pooling import gather, max_switches
from .conv import resolve_pads
from .linear import LinearHandler
from .registry import (BackwardContext, ChannelKeeping, OpHandler, ParseContext, input_dims, node_layer, register,
                       static_dims, window_boxes)


def _window(node, ctx: ParseContext, kernel=None) -> tuple[PoolWindow, dict]:
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
    window = PoolWindow(k, ConvGeometry(strides, pads, dil), bool(attrs.get("ceil_mode", 0)))
    return window, attrs


def unpool_nodes(b, values: str, indices: str, in_shape) -> str:
    """Scatter-add ``values`` at onnxruntime's MaxPool ``Indices`` (flat over N·C·H·W) into
    zeros of ``in_shape`` (any batch), as nodes of builder ``b`` (``lrpath compile``)."""
    plane = int(np.prod(in_shape[1:]))
    n = b.node("Slice", [b.node("Shape", [values])[0], b.ints([0]), b.ints([1]), b.ints([0])])[0]
    size = b.node("Mul", [n, b.ints([plane], "plane")])[0]
    zeros = b.node("ConstantOfShape", [size], value=numpy_helper.from_array(np.zeros(1, np.float32)))[0]
    flat_v = b.node("Reshape", [values, b.ints([-1])])[0]
    flat_i = b.node("Reshape", [indices, b.ints([-1])])[0]
    out = b.node("ScatterElements", [zeros, flat_i, flat_v], axis=0, reduction="add")[0]
    return b.node("Reshape", [out, b.ints([-1] + [int(d) for d in in_shape[1:]])])[0]


@register
class MaxPoolHandler(ChannelKeeping, OpHandler):
    """MaxPool: all relevance of a pooled value goes to the input element that won it.

    The switches are onnxruntime's ``Indices``: the model's own output where it asks for
    it; else computed from the pool's input after the run exactly as onnxruntime would
    (the first maximum in row-major order, padding never wins), because asking the
    session for them takes the pool off onnxruntime's blocked NCHWc path (VGG16 batch 8 on
    the CI machine type: its MaxPools 81 → 7 ms, and the layout reorders around them). A
    compiled graph (``lrpath compile``) gains the ``Indices`` output instead.
    """

    op_types = ("MaxPool",)
    fixed_rule = "wta"

    def parse(self, node, ctx: ParseContext):
        window, attrs = _window(node, ctx)
        if int(attrs.get("storage_order", 0)) != 0:
            raise ctx.fail(node, "storage_order=1 (column-major switches)")
        has = len(node.output) > 1 and bool(node.output[1])
        return node_layer(MaxPoolLayer, node, ctx, self, [node.input[0]], window=window,
                          indices=node.output[1] if has else f"{node.output[0]}::lrpath_indices",
                          add_indices_output=not has)

    def needs(self, layer, rule, shapes):
        need = {layer.indices}
        if not static_dims(shapes.get(layer.inputs[0])):
            need.add(layer.inputs[0])
        return need

    def input_boxes(self, layer, box, shapes):
        return window_boxes(box, input_dims(layer.inputs[0], shapes), layer.window.kernel, layer.window.geometry,
                            keep_channels=True)

    def session_outputs(self, layer):
        added = {layer.output: layer.indices} if layer.add_indices_output else {}
        return added, {layer.indices}

    def derived_outputs(self, layer):
        if not layer.add_indices_output:  # the model's own output: onnxruntime computes it anyway
            return {}
        w = layer.window

        def switches(x: np.ndarray, first: int = 0) -> np.ndarray:
            g = w.geometry
            return max_switches(x, w.kernel, g.strides, g.pads, g.dilations, w.out_size(x.shape[2], x.shape[3]),
                                first)

        return {layer.indices: (layer.inputs[0], switches)}

    def native_refusal(self, layer, shapes):
        return None

    def native_forward(self, layer, inputs, backend, in_place=False):
        """The switches (``max_switches``, onnxruntime's Indices), then the values they pick."""
        w, g, x = layer.window, layer.window.geometry, inputs[0]
        idx = max_switches(x, w.kernel, g.strides, g.pads, g.dilations, w.out_size(x.shape[2], x.shape[3]))
        return {layer.output: gather(x, idx), layer.indices: idx}

    def native_outputs(self, layer):
        return layer.output, layer.indices

    def relevance(self, layer, rule, r, ctx: BackwardContext):
        shape = ctx.shape_of(layer.inputs[0])
        return [ctx.backend.unpool(r, ctx.fwd[layer.indices], shape)]

    def deconv(self, layer, s, ctx: BackwardContext):
        """Switch unpooling: each value goes back to where its maximum was (the same kernel
        as the relevance pass)."""
        return self.relevance(layer, None, s, ctx)

    def gradient(self, layer, g, ctx: BackwardContext):
        """The gradient of a max goes to the element that won it: switch unpooling again."""
        return self.relevance(layer, None, g, ctx)

    def forward(self, layer, inputs):
        """Max over each window (padding never wins), in numpy; for bounds and tests."""
        x = inputs[0]
        w = layer.window
        (kh, kw), (sh, sw), (dh, dw), p = w.kernel, w.geometry.strides, w.geometry.dilations, w.geometry.pads
        oh, ow = w.out_size(x.shape[2], x.shape[3])
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

    stackable = False

    def __init__(self, layer: AvgPoolLayer, backend, in_shape, out_hw):
        win = layer.window
        self.backend = backend
        C, H, W = in_shape[1:]
        kh, kw = win.kernel if win.kernel is not None else (H, W)
        g = win.geometry
        self.geom = ConvGeometry(g.strides, g.pads, g.dilations, C)
        self.in_hw, self.out_hw = (H, W), tuple(out_hw)
        p, inc = g.pads, layer.count_include_pad
        rows = window_counts(H, kh, g.strides[0], g.dilations[0], p[0], p[2], out_hw[0], inc)
        cols = window_counts(W, kw, g.strides[1], g.dilations[1], p[1], p[3], out_hw[1], inc)
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


def _spatial_mean(node, ctx: ParseContext, shape: tuple | None) -> bool:
    """Whether a ReduceMean averages an NCHW map's spatial axes (a global average pool)."""
    axes = ctx.attrs(node).get("axes")
    if axes is None and len(node.input) > 1 and node.input[1] and ctx.is_const(node.input[1]):
        axes = ctx.consts[node.input[1]].reshape(-1).tolist()
    rank = 4 if shape is None else len(shape)
    return rank == 4 and axes is not None and sorted(int(a) % 4 for a in axes) == [2, 3]


@register
class AveragePoolHandler(ChannelKeeping, LinearHandler):
    """AveragePool (count_include_pad, ceil_mode), GlobalAveragePool and a spatial ReduceMean:
    linear layers over each channel's window."""

    op_types = ("AveragePool", "GlobalAveragePool", "ReduceMean")
    runtime_terms = False  # its modified forwards are window sums: cheap in the kernels

    def parse(self, node, ctx: ParseContext):
        if node.op_type == "AveragePool":
            window, attrs = _window(node, ctx)
            return node_layer(AvgPoolLayer, node, ctx, self, [node.input[0]], window=window,
                              count_include_pad=bool(attrs.get("count_include_pad", 0)))
        shape = ctx.shape(node.input[0])
        if node.op_type == "ReduceMean" and not _spatial_mean(node, ctx, shape):
            from .reduce import REDUCE

            return REDUCE.parse(node, ctx)
        if shape is not None and len(shape) != 4:
            raise ctx.fail(node, f"input rank {len(shape)} (only 2-D pooling is supported)")
        keepdims = True
        if node.op_type == "ReduceMean":
            attrs = ctx.attrs(node)
            axes = attrs.get("axes")
            if axes is None and len(node.input) > 1 and node.input[1]:
                axes = ctx.const(node, 1, "axes").reshape(-1).tolist()
            if axes is None or sorted(int(a) % 4 for a in axes) != [2, 3]:
                raise ctx.fail(node, f"ReduceMean over axes {axes} (only the spatial axes 2, 3 of an "
                                     "NCHW tensor are a global average pool)")
            keepdims = bool(attrs.get("keepdims", 1))
        return node_layer(AvgPoolLayer, node, ctx, self, [node.input[0]], window=PoolWindow(None),
                          keepdims=keepdims)

    def input_boxes(self, layer, box, shapes):
        """Each channel's window; a global pool (or spatial mean) reads its whole map."""
        box = box if len(box) == 3 else (box[0], (0, 0), (0, 0))
        return window_boxes(box, input_dims(layer.inputs[0], shapes), layer.window.kernel, layer.window.geometry,
                            keep_channels=True)

    def linear_map(self, layer, a, r, backend) -> PoolMap:
        return PoolMap(layer, backend, a.shape, layer.window.out_size(*a.shape[2:]))

    def output_view(self, layer, t):
        return t if layer.keepdims else t.reshape(t.shape + (1, 1))

    def relevance(self, layer, rule, r, ctx):
        if not layer.keepdims:
            r = r.reshape(tuple(r.shape) + (1, 1))
        return super().relevance(layer, rule, r, ctx)

    def gradient(self, layer, g, ctx, exact: bool = False):
        if not layer.keepdims:
            g = g.reshape(tuple(g.shape) + (1, 1))
        return super().gradient(layer, g, ctx, exact)

    def cache_key(self, layer, a):
        return f"{layer.name}@{a.shape[2]}x{a.shape[3]}"

    def forward(self, layer, inputs, backend=None):
        from ..backend import CpuBackend

        x = inputs[0]
        lin = PoolMap(layer, backend or CpuBackend(), x.shape, layer.window.out_size(*x.shape[2:]))
        out = lin.forward(x, lin.weight.astype(x.dtype))
        return out if layer.keepdims else out.reshape(out.shape[:2])

    def native_refusal(self, layer, shapes):
        return None if layer.op in ("GlobalAveragePool", "AveragePool") else layer.op

    def native_forward(self, layer, inputs, backend, in_place=False):
        """A global pool as the mean over each map; windows through the backend's kernels."""
        if layer.op == "GlobalAveragePool":
            return {layer.output: inputs[0].mean(axis=(2, 3), keepdims=True, dtype=np.float32)}
        return {layer.output: self.forward(layer, inputs, backend)}

    def infer_shape(self, layer, in_shapes, readers):
        src = in_shapes[0]
        if src is None or len(src) != 4 or any(d is None for d in src[2:]):
            return None
        return tuple(src[:2]) + tuple(layer.window.out_size(*src[2:])) if layer.keepdims else tuple(src[:2])
