"""Resize / Upsample of the spatial axes (nearest, linear) as a fixed linear map.

Each output pixel is a weighted sum of input pixels with weights that depend only on the
sizes, so the layer is ``y = A_h · x · A_wᵀ`` per channel, with one interpolation matrix per
axis built from ONNX's coordinate rules. LRP treats it like an average pool (zennit's
``Norm``): ``R_in = x ⊙ A_hᵀ (R / stab(y)) A_w`` — relevance goes to the pixels in proportion
to what they contributed, and is conserved. Cubic interpolation (negative weights) and
cropping modes are refused.
"""

from __future__ import annotations

import math

import numpy as np

from ..graph.layers import ResizeLayer
from .linear import LinearHandler
from .registry import ChannelKeeping, ParseContext, input_dims, node_layer, register

_COORDS = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn")
_NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def _text(v, default: str) -> str:
    if v is None:
        return default
    return v.decode() if isinstance(v, bytes) else str(v)


def interpolation_matrix(n_in: int, n_out: int, scale: float, mode: str, coords: str,
                         nearest: str) -> np.ndarray:
    """(n_out, n_in) weights of one axis, as ONNX Resize defines them."""
    x = np.arange(n_out, dtype=np.float64)
    if coords == "half_pixel":
        src = (x + 0.5) / scale - 0.5
    elif coords == "pytorch_half_pixel":
        src = (x + 0.5) / scale - 0.5 if n_out > 1 else np.zeros_like(x)
    elif coords == "align_corners":
        src = x * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros_like(x)
    elif coords == "asymmetric":
        src = x / scale
    else:  # tf_half_pixel_for_nn
        src = (x + 0.5) / scale
    A = np.zeros((n_out, n_in))
    if mode == "nearest":
        if nearest == "round_prefer_floor":
            idx = np.where(src - np.floor(src) == 0.5, np.floor(src), np.round(src))
        elif nearest == "round_prefer_ceil":
            idx = np.where(src - np.floor(src) == 0.5, np.ceil(src), np.round(src))
        elif nearest == "floor":
            idx = np.floor(src)
        else:
            idx = np.ceil(src)
        A[np.arange(n_out), np.clip(idx, 0, n_in - 1).astype(int)] = 1.0
        return A
    src = np.clip(src, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    frac = src - lo
    hi = np.minimum(lo + 1, n_in - 1)
    np.add.at(A, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(A, (np.arange(n_out), hi), frac)
    return A


def separable_nodes(b, x: str, rows: str, cols_t: str) -> str:
    """``rows · x · colsᵀ`` over the last two axes as nodes of builder ``b`` (``lrpath compile``)."""
    return b.node("MatMul", [b.node("MatMul", [rows, x])[0], cols_t])[0]


class ResizeMap:
    """``LinearMap`` of a resize: ``A_h · x · A_wᵀ`` (its only weight is the map itself)."""

    stackable = False

    def __init__(self, layer: ResizeLayer, backend, in_hw, out_hw):
        self.backend = backend
        self.mats = tuple(interpolation_matrix(n, m, s, layer.mode, layer.coordinate_mode, layer.nearest_mode)
                          for n, m, s in zip(in_hw, out_hw, _scales(layer, in_hw, out_hw)))
        self.weight = np.ones(1, np.float32)  # rules see one plain weight; ρ must be the identity
        self.bias = None

    def forward(self, x, w, b=None, exact=False):
        return self.backend.separable(x, *(m.astype(x.dtype) for m in self.mats))

    def transpose(self, s, w, mul=None, exact=False, ratio=None):
        if ratio is not None:
            s = self.backend.stabilised_divide(s, *ratio)
        c = self.backend.separable(s, *(np.ascontiguousarray(m.T, s.dtype) for m in self.mats))
        return c if mul is None else mul * c


def _scales(layer: ResizeLayer, in_hw, out_hw) -> tuple[float, float]:
    if layer.scales is not None:
        return layer.scales
    return tuple(o / i for o, i in zip(out_hw, in_hw))


@register
class ResizeHandler(ChannelKeeping, LinearHandler):
    """Resize (opset 10+) and Upsample: nearest or linear, over H and W of an NCHW tensor."""

    op_types = ("Resize", "Upsample")
    runtime_terms = False

    def parse(self, node, ctx: ParseContext):
        attrs = ctx.attrs(node)
        mode = _text(attrs.get("mode"), "nearest")
        if mode not in ("nearest", "linear", "bilinear"):
            raise ctx.fail(node, f"mode '{mode}' (nearest and linear interpolation only)")
        mode = "linear" if mode == "bilinear" else mode
        if node.op_type == "Upsample" or ctx.opset < 11:
            coords, nearest = "asymmetric", "floor"
            scales = ctx.const(node, 1, "scales") if len(node.input) > 1 else np.asarray(attrs.get("scales"))
            sizes = None
        else:
            coords = _text(attrs.get("coordinate_transformation_mode"), "half_pixel")
            nearest = _text(attrs.get("nearest_mode"), "round_prefer_floor")
            if coords not in _COORDS:
                raise ctx.fail(node, f"coordinate_transformation_mode '{coords}'")
            if nearest not in _NEAREST:
                raise ctx.fail(node, f"nearest_mode '{nearest}'")
            if _text(attrs.get("keep_aspect_ratio_policy"), "stretch") != "stretch" or attrs.get("axes") is not None:
                raise ctx.fail(node, "keep_aspect_ratio_policy / axes (only a plain resize of H and W)")
            scales = ctx.optional_const(node, 2, "scales")
            run_time = len(node.input) > 3 and node.input[3] and not ctx.is_const(node.input[3]) \
                and not ctx.depends_on_input(node.input[3])  # sizes from the input's shape, not its values
            sizes = None if run_time else ctx.optional_const(node, 3, "sizes")
            if scales is not None and scales.size == 0:
                scales = None
        shape = ctx.shape(node.input[0])
        if shape is not None and len(shape) != 4:
            raise ctx.fail(node, f"input rank {len(shape)} (only NCHW images are resized)")
        if scales is not None:
            scales = [float(v) for v in np.asarray(scales, np.float64).reshape(-1)]
            if len(scales) != 4 or scales[0] != 1 or scales[1] != 1 or min(scales) <= 0:
                raise ctx.fail(node, f"scales {scales} (only H and W may change)")
            return node_layer(ResizeLayer, node, ctx, self, [node.input[0]], mode=mode, coordinate_mode=coords,
                              nearest_mode=nearest, scales=(scales[2], scales[3]))
        if sizes is None:  # computed at run time (F.interpolate(size=…) builds it from x.shape): the output's size
            out = ctx.shape(node.output[0])
            if out is None or len(out) != 4 or out[2] is None or out[3] is None:
                raise ctx.fail(node, "neither scales nor sizes is a constant, and the output's size is not known")
            if shape is not None and None not in (shape[1], out[1]) and shape[1] != out[1]:
                raise ctx.fail(node, f"output shape {out} from input {shape} (only H and W may change)")
            return node_layer(ResizeLayer, node, ctx, self, [node.input[0]], mode=mode, coordinate_mode=coords,
                              nearest_mode=nearest, sizes=(out[2], out[3]))
        sizes = [int(v) for v in np.asarray(sizes).reshape(-1)]
        if len(sizes) != 4 or (shape is not None and (sizes[0], sizes[1]) != (shape[0] or sizes[0], shape[1] or sizes[1])):
            raise ctx.fail(node, f"sizes {sizes} (only H and W may change)")
        return node_layer(ResizeLayer, node, ctx, self, [node.input[0]], mode=mode, coordinate_mode=coords,
                          nearest_mode=nearest, sizes=(sizes[2], sizes[3]))

    def accepts(self, layer, rule):
        return rule.name in ("zero", "epsilon")

    def linear_map(self, layer, a, r, backend) -> ResizeMap:
        return ResizeMap(layer, backend, a.shape[2:], r.shape[2:])

    def cache_key(self, layer, a):
        return f"{layer.name}@{a.shape[2]}x{a.shape[3]}"

    def input_boxes(self, layer, box, shapes):
        """The input rows and columns the box's interpolation weights touch."""
        C, H, W = input_dims(layer.inputs[0], shapes)
        out_hw = tuple(shapes[layer.output][2:])
        spans = []
        for (lo, hi), mat in zip(box[1:], ResizeMap(layer, None, (H, W), out_hw).mats):
            cols = np.nonzero(mat[lo:hi + 1].any(axis=0))[0]
            spans.append((int(cols.min()), int(cols.max())))
        return [(box[0], *spans)]

    def out_size(self, layer, in_hw) -> tuple[int, int]:
        if layer.sizes is not None:
            return layer.sizes
        return tuple(int(math.floor(n * s)) for n, s in zip(in_hw, layer.scales))

    def forward(self, layer, inputs):
        from ..backend import CpuBackend

        x = inputs[0]
        lin = ResizeMap(layer, CpuBackend(), x.shape[2:], self.out_size(layer, x.shape[2:]))
        return lin.forward(x, None)

    def infer_shape(self, layer, in_shapes, readers):
        src = in_shapes[0]
        if src is None or len(src) != 4 or any(d is None for d in src[2:]):
            return None
        return tuple(src[:2]) + self.out_size(layer, src[2:])
