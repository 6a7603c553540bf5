"""Conv: a linear layer; every LRP rule applies through ``backward.linear_rules``."""

from __future__ import annotations

import numpy as np
from onnx import helper

from ..graph.layers import ConvLayer
from ..kernels import winograd as _wino
from ..kernels.conv import ConvGeometry
from .linear import LinearHandler
from .registry import ParseContext, input_dims, node_layer, register, window_boxes


def resolve_pads(attrs: dict, in_hw: tuple | None, kernel: tuple[int, int], strides, dilations,
                 node, ctx: ParseContext) -> tuple[int, int, int, int]:
    """Explicit (top, left, bottom, right) pads, resolving ``auto_pad`` from the input size."""
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("NOTSET", ""):
        p = list(attrs.get("pads", [0, 0, 0, 0]))
        if len(p) != 4:
            raise ctx.fail(node, f"pads {p} are not 2-D")
        return tuple(int(v) for v in p)
    if auto == "VALID":
        return (0, 0, 0, 0)
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise ctx.fail(node, f"auto_pad={auto}")
    if in_hw is None or any(d is None for d in in_hw):
        raise ctx.fail(node, f"auto_pad={auto} needs a static input size")
    begin, end = [], []
    for n, k, s, d in zip(in_hw, kernel, strides, dilations):
        out = -(-n // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
        small, big = total // 2, total - total // 2
        b, e = (small, big) if auto == "SAME_UPPER" else (big, small)
        begin.append(b)
        end.append(e)
    return (begin[0], begin[1], end[0], end[1])


def conv_attrs(kernel, geom: ConvGeometry, pads=None) -> dict:
    """A Conv/ConvTranspose node's attributes for this geometry."""
    return dict(kernel_shape=list(kernel), strides=list(geom.strides), pads=list(pads or geom.pads),
                dilations=list(geom.dilations), group=geom.groups)


def conv_nodes(b, inputs: list[str], kernel, geom: ConvGeometry) -> str:
    """A convolution as a node of builder ``b`` (``lrpath compile``); its output's name."""
    return b.node("Conv", inputs, **conv_attrs(kernel, geom))[0]


def conv_transpose_nodes(b, s: str, w: str, kernel, geom: ConvGeometry, s_hw, in_hw) -> str:
    """The transposed convolution of ``s`` back to ``in_hw``: ConvTranspose cropped at the end
    to the input, then zero rows past the windows' reach (rows no window reads)."""
    begin, end, extra = list(geom.pads[:2]), [], []
    for i, (o, k) in enumerate(zip(s_hw, kernel)):
        reach = geom.strides[i] * (o - 1) + geom.dilations[i] * (k - 1) + 1
        end.append(max(0, reach - begin[i] - int(in_hw[i])))
        extra.append(max(0, int(in_hw[i]) - (reach - begin[i])))
    name = b.node("ConvTranspose", [s, w], **conv_attrs(kernel, geom, begin + end))[0]
    if max(extra) > 0:
        name = b.node("Pad", [name, b.ints([0, 0, 0, 0, 0, 0, extra[0], extra[1]], "pads")])[0]
    return name


def nonzero_box(s: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Inclusive (rows, cols) spans of the nonzero positions of a (C, H, W) map, or None."""
    hit = (s != 0).any(axis=0)
    rows, cols = np.flatnonzero(hit.any(axis=1)), np.flatnonzero(hit.any(axis=0))
    if rows.size == 0:
        return None
    return (int(rows[0]), int(rows[-1])), (int(cols[0]), int(cols[-1]))


def window_transpose(geom: ConvGeometry, box, kernel, in_hw):
    """The transposed convolution of the output ``box`` alone: (size of the input span it
    reaches, the geometry that maps the cropped signal onto that span, the row span, the
    column span). Input i receives output o through tap t where i = o·s − p + t·d; cropping
    o to start at o0 and i to start at i0 = max(0, o0·s − p) leaves p' = p + i0 − o0·s ≥ 0."""
    spans, begin, end = [], [], []
    for ax, ((o0, o1), k, n) in enumerate(zip(box, kernel, in_hw)):
        s, d, p = geom.strides[ax], geom.dilations[ax], geom.pads[ax]
        i0, i1 = max(0, o0 * s - p), min(int(n) - 1, o1 * s - p + d * (k - 1))
        top = p + i0 - o0 * s
        spans.append((i0, i1))
        begin.append(top)
        end.append(max(0, (o1 - o0) * s + d * (k - 1) + 1 - top - (i1 - i0 + 1)))
    sub = (spans[0][1] - spans[0][0] + 1, spans[1][1] - spans[1][0] + 1)
    cropped = ConvGeometry(geom.strides, (begin[0], begin[1], end[0], end[1]), geom.dilations, geom.groups)
    return sub, cropped, spans[0], spans[1]


class ConvMap:
    """``linear_rules.LinearMap`` of a Conv layer for one batch (sizes fixed by the tensors)."""

    def __init__(self, layer: ConvLayer, backend, in_hw, out_hw):
        self.weight = layer.weight
        self.bias = layer.bias
        self.geom: ConvGeometry = layer.geometry
        self.backend, self.in_hw, self.out_hw = backend, in_hw, out_hw
        self.stackable = self.geom.groups == 1  # weights may be stacked along input channels

    def forward(self, x, w, b=None, exact=False):
        return self.backend.conv2d(x, w, self.geom, b, self.out_hw, exact=exact)

    def transpose(self, s, w, mul=None, exact=False, ratio=None):
        return self.backend.conv2d_transpose(s, w, self.geom, self.in_hw, mul, exact=exact, ratio=ratio)

    def flow(self, s, w, mul, rows, cols):
        """Channel-pair flows (see ``kernels.flow``) between input ``rows`` and output ``cols``."""
        return self.backend.conv_flow(mul, s, w, self.geom, (s.shape[0], self.weight.shape[1] * self.geom.groups,
                                                             *self.in_hw), rows, cols)


@register
class ConvHandler(LinearHandler):
    """2-D Conv with pads (incl. auto_pad), strides, dilations and groups (depthwise too)."""

    op_types = ("Conv",)

    def parse(self, node, ctx: ParseContext):
        ctx.data_input(node)
        w = ctx.const(node, 1, "weight")
        if w.ndim != 4:
            raise ctx.fail(node, f"only 2-D convolutions are supported (weight rank {w.ndim})")
        b = ctx.optional_const(node, 2, "bias")
        attrs = ctx.attrs(node)
        group = int(attrs.get("group", 1))
        K, Cg, kh, kw = w.shape
        if group < 1 or K % group:
            raise ctx.fail(node, f"{K} output channels do not split into {group} groups")
        shape = ctx.shape(node.input[0])
        if shape is not None and len(shape) != 4:
            raise ctx.fail(node, f"input rank {len(shape)} (need N, C, H, W)")
        if shape is not None and shape[1] is not None and shape[1] != Cg * group:
            raise ctx.fail(node, f"weight expects {Cg * group} input channels, input has {shape[1]}")
        strides = tuple(int(v) for v in attrs.get("strides", [1, 1]))
        dil = tuple(int(v) for v in attrs.get("dilations", [1, 1]))
        pads = resolve_pads(attrs, None if shape is None else shape[2:], (kh, kw), strides, dil, node, ctx)
        return node_layer(ConvLayer, node, ctx, self, [node.input[0]],
                          weight=np.ascontiguousarray(w, np.float32),
                          bias=None if b is None else np.ascontiguousarray(b.reshape(-1), np.float32),
                          geometry=ConvGeometry(strides, pads, dil, group), sources=tuple(i for i in node.input[1:3] if i))

    def linear_map(self, layer, a, r, backend) -> ConvMap:
        return ConvMap(layer, backend, a.shape[2:], r.shape[2:])

    def forward(self, layer, inputs):
        from ..backend import CpuBackend

        x = inputs[0]
        w = layer.weight.astype(x.dtype)
        b = layer.bias
        return CpuBackend().conv2d(x, w, layer.geometry, None if b is None else b.astype(x.dtype))

    def native_refusal(self, layer, shapes):
        return None

    def native_forward(self, layer, inputs, backend, in_place=False):
        """The backend's convolution (Winograd for 3x3 stride-1 layers)."""
        return {layer.output: backend.conv2d(inputs[0], layer.weight, layer.geometry, layer.bias)}

    def multiply_adds(self, layer, shapes):
        out = shapes.get(layer.output)
        if not out or any(d is None for d in out[1:]):
            return None
        _, c, kh, kw = layer.weight.shape
        macs = float(np.prod(out[1:])) * c * kh * kw
        g = layer.geometry
        return macs, macs if _wino.applies(kh, kw, g.strides, g.dilations, g.groups) else 0.0

    def neurons(self, layer):
        return layer.in_channels, layer.out_channels

    def channel_axis(self, layer, in_axes, shapes):
        return 1

    def input_boxes(self, layer, box, shapes):
        """Its window over H and W; the input channels of the output channels' groups."""
        dims = input_dims(layer.inputs[0], shapes)
        (boxed,) = window_boxes(box, dims, layer.kernel, layer.geometry, keep_channels=False)
        if boxed is None:
            return [None]
        per_out, per_in = layer.out_channels // layer.geometry.groups, layer.weight.shape[1]
        lo, hi = box[0]
        return [(((lo // per_out) * per_in, (hi // per_out + 1) * per_in - 1), *boxed[1:])]

    def deconv(self, layer, s, ctx):
        """The transposed convolution of each sample's signal over its nonzero box only.

        A neuron's reconstruction is confined to its receptive field, so the products outside
        it (most of a deep neuron's early layers) are zeros not worth computing. Inside the
        box the backend's fast (Winograd) products run: their rounding cannot reach past the
        pixels the box's windows read. Where arrays are the host's; other backends transpose
        the whole map with exact products."""
        if not ctx.backend.host_arrays:
            return super().deconv(layer, s, ctx)
        lin, w = self.own_weights(layer, s, ctx)
        out = np.zeros((s.shape[0], layer.in_channels) + tuple(lin.in_hw), s.dtype)
        for n in range(s.shape[0]):
            box = nonzero_box(s[n])
            if box is None:
                continue
            sub, geom, (r0, r1), (c0, c1) = window_transpose(layer.geometry, box, layer.kernel, lin.in_hw)
            if min(sub) < 1:  # the box's windows lie in the padding
                continue
            crop = s[n:n + 1, :, box[0][0]:box[0][1] + 1, box[1][0]:box[1][1] + 1]
            out[n:n + 1, :, r0:r1 + 1, c0:c1 + 1] = ctx.backend.conv2d_transpose(crop, w, geom, sub)
        return [out]

    def modified_forward_node(self, layer, inputs: list[str], output: str):
        """This layer's convolution over other inputs/weights, as one ONNX node."""
        return helper.make_node("Conv", inputs, [output], name=output, **conv_attrs(layer.kernel, layer.geometry))
