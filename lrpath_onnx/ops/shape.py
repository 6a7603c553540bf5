"""Ops that only move data: relevance moves back the same way, unchanged in value."""

from __future__ import annotations

import numpy as np
import onnx

from ..graph.layers import (
    GatherLayer,
    PadLayer,
    ReshapeLayer,
    SliceLayer,
    TransposeLayer,
)
from .arrays import contiguous
from .registry import (
    Alias,
    BackwardContext,
    OpHandler,
    ParseContext,
    clip_span,
    full_box,
    input_dims,
    node_layer,
    register,
    static_dims,
)


class RouteHandler(OpHandler):
    """Data moves without arithmetic: relevance and deconvolution signals move back alike."""

    fixed_rule = "route"

    def deconv(self, layer, s, ctx):
        return self.relevance(layer, None, s, ctx)

    def gradient(self, layer, g, ctx):
        return self.relevance(layer, None, g, ctx)

    def nonneg_output(self, layer, nonneg_inputs):
        return all(nonneg_inputs)


def _batch_led(shapes: dict[str, tuple], *names: str) -> bool:
    """Whether every one of these tensors has its open batch axis first (static shapes)."""
    return all((shapes.get(n) or (0,))[0] is None for n in names)


def _keeps_batch(layer: ReshapeLayer, shapes: dict[str, tuple]) -> bool:
    """Whether a Reshape keeps each sample apart, batch first. A constant shape operand must
    copy the batch dim (0) or infer it (-1) from the other dims, which then hold exactly one
    sample's values (not a Reshape to (1, …), as an export for one sample bakes in). One
    computed at run time (``x.view(x.size(0), -1)``: Shape → Gather → Concat) is taken as
    shape inference saw it: the batch open and first on both sides, one sample's size kept."""
    t, src = layer.target, shapes.get(layer.inputs[0])
    if not src or any(d is None for d in src[1:]) or layer.out_shape is None:
        return False
    if t is None:
        return (_batch_led(shapes, layer.inputs[0], layer.output)
                and int(np.prod(layer.out_shape)) == int(np.prod(src[1:])))
    if not t or t[0] not in (0, -1):
        return False
    if t[0] == 0:  # the batch copied: the other dims hold one sample's values
        return True
    rest = [src[i] if d == 0 else d for i, d in enumerate(t) if i > 0]
    return all(d > 0 for d in rest) and int(np.prod(rest)) == int(np.prod(src[1:]))


@register
class ReshapeHandler(RouteHandler):
    """Flatten, Reshape, Squeeze, Unsqueeze: relevance is reshaped back to the input's shape."""

    op_types = ("Flatten", "Reshape", "Squeeze", "Unsqueeze")

    def parse(self, node, ctx: ParseContext):
        attrs = ctx.attrs(node)
        static = ctx.shape(node.output[0])
        target = None
        if node.op_type == "Reshape" and len(node.input) > 1 and ctx.is_const(node.input[1]):
            target = tuple(int(d) for d in np.asarray(ctx.consts[node.input[1]]).reshape(-1))
            if attrs.get("allowzero", 0) and 0 in target:
                target = None
        return node_layer(ReshapeLayer, node, ctx, self, [node.input[0]], axis=int(attrs.get("axis", 1)),
                          out_shape=tuple(static[1:]) if static_dims(static) else None, target=target)

    def needs(self, layer, rule, shapes):
        """The input's run-time shape, unless its static shape is batch-first with every other
        dim known (exporters that bake a batch of 1 into inner shapes leave no open dim)."""
        s = shapes.get(layer.inputs[0])
        return set() if s is not None and s[0] is None and static_dims(s) else {layer.inputs[0]}

    def batch_axis(self, layer, in_axes, shapes):
        """A batch-first tensor reshaped to a batch-first one (the open leading dim, or the same
        fixed one): the batch leads, merged batch-major at worst; any other reshape of it is not
        known here."""
        out, src = shapes.get(layer.output), shapes.get(layer.inputs[0])
        if in_axes[0] == 0 and (out is None or out[0] is None or (src is not None and out[0] == src[0])):
            return 0  # (a model with a fixed batch keeps its leading dim)
        return None

    def relevance(self, layer, rule, r, ctx: BackwardContext):
        name = layer.inputs[0]
        static = ctx.shapes.get(name)
        if name not in ctx.fwd and static is not None and sum(d is None for d in static) == 1:
            # the open dim holds the batch, maybe merged with another axis (attention's
            # batch × heads): the sizes say how big it is
            return [r.reshape(tuple(-1 if d is None else d for d in static))]
        return [r.reshape(ctx.shape_of(name))]

    def forward(self, layer, inputs):
        x = inputs[0]
        if layer.op == "Flatten":
            ax = layer.axis % max(x.ndim, 1)
            return x.reshape(int(np.prod(x.shape[:ax])), -1)
        if layer.out_shape is None:
            raise NotImplementedError(f"'{layer.name}' has no static output shape")
        return x.reshape((x.shape[0],) + tuple(layer.out_shape))

    def native_refusal(self, layer, shapes):
        """Flatten at axis 1, and a Reshape that keeps the batch first (``_keeps_batch``)."""
        if layer.op == "Flatten":
            return None if layer.axis == 1 else f"Flatten (axis {layer.axis})"
        ok = layer.op == "Reshape" and _keeps_batch(layer, shapes)
        return None if ok else f"{layer.op} not keeping an open batch axis first"

    def infer_shape(self, layer, in_shapes, readers):
        """A flatten into a dense layer has that layer's input features (tf2onnx computes the
        target shape at run time, leaving every later shape open)."""
        src = in_shapes[0]
        if len(readers) == 1 and readers[0].handler.neurons(readers[0]) is not None and src is not None:
            features = readers[0].handler.neurons(readers[0])[0]
            if int(np.prod(src[1:])) == features:
                return (src[0], features)
        return None

    def channel_map(self, layer, ids, out_shape):
        return ids.reshape(tuple(out_shape[1:]))

    def input_boxes(self, layer, box, shapes):
        """The axes both shapes end with (a channel shuffle's height and width, an unsqueeze's)
        keep their spans; the leading axes they regroup read the bounding box of the elements
        the box holds there (all of it where that is too many to list)."""
        dims = input_dims(layer.inputs[0], shapes)
        out = shapes.get(layer.output)
        if not static_dims(out):
            return [full_box(dims)]
        out = tuple(out[1:])
        tail = 0
        while tail < min(len(dims), len(out)) and dims[len(dims) - 1 - tail] == out[len(out) - 1 - tail]:
            tail += 1
        head_in, head_out = dims[:len(dims) - tail], out[:len(out) - tail]
        kept = tuple(box[len(head_out):])
        picked = int(np.prod([hi - lo + 1 for lo, hi in box[:len(head_out)]]))
        if not head_in:
            return [kept]
        if not head_out or picked > 1 << 20:
            return [tuple((0, n - 1) for n in head_in) + kept]
        grid = np.meshgrid(*[np.arange(lo, hi + 1) for lo, hi in box[:len(head_out)]], indexing="ij")
        flat = np.ravel_multi_index([g.reshape(-1) for g in grid], head_out)
        where = np.unravel_index(flat, head_in)
        return [tuple((int(w.min()), int(w.max())) for w in where) + kept]


@register
class TransposeHandler(RouteHandler):
    """Transpose (tf2onnx's NHWC↔NCHW): relevance takes the inverse permutation."""

    op_types = ("Transpose",)

    def parse(self, node, ctx: ParseContext):
        perm = ctx.attrs(node).get("perm")
        if perm is None:
            shape = ctx.shape(node.input[0])
            if shape is None:
                raise ctx.fail(node, "Transpose without perm on a tensor of unknown rank")
            perm = list(range(len(shape)))[::-1]
        return node_layer(TransposeLayer, node, ctx, self, [node.input[0]], perm=tuple(int(p) for p in perm))

    def relevance(self, layer, rule, r, ctx):
        return [contiguous(np.transpose(r, np.argsort(layer.perm)))]

    def batch_axis(self, layer, in_axes, shapes):
        return None if in_axes[0] is None else list(layer.perm).index(in_axes[0])

    def channel_axis(self, layer, in_axes, shapes):
        return self.batch_axis(layer, in_axes, shapes)

    def forward(self, layer, inputs):
        return np.transpose(inputs[0], layer.perm)

    def native_refusal(self, layer, shapes):
        ok = layer.perm[:1] == (0,) and _batch_led(shapes, layer.inputs[0], layer.output)
        return None if ok else f"Transpose {list(layer.perm)}"

    def native_forward(self, layer, inputs, backend, in_place=False):
        return {layer.output: np.ascontiguousarray(np.transpose(inputs[0], layer.perm))}

    def infer_shape(self, layer, in_shapes, readers):
        src = in_shapes[0]
        return None if src is None else tuple(src[p] for p in layer.perm)

    def input_boxes(self, layer, box, shapes):
        """The box's spans move back to the axes they came from."""
        spans = [None] * len(box)
        for out_axis, in_axis in enumerate(layer.perm[1:]):
            spans[in_axis - 1] = box[out_axis]
        return [tuple(spans)]

    def channel_map(self, layer, ids, out_shape):
        # ids carry no batch axis: the permutation's batch entry (0) stays in front
        return np.transpose(ids[None], layer.perm)[0]


@register
class IdentityHandler(OpHandler):
    """Identity and inference-mode Dropout: the output is the input."""

    op_types = ("Identity", "Dropout")

    def parse(self, node, ctx):
        return Alias(node.output[0], node.input[0])


@register
class CastHandler(OpHandler):
    """Cast to a floating type on the data path (Hugging Face's ``softmax(dtype=float32).to(dtype)``):
    an identity for relevance; casts to integers or booleans carry no relevance and are refused."""

    op_types = ("Cast",)
    FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)

    def parse(self, node, ctx):
        to = ctx.attrs(node).get("to")
        if to not in self.FLOATS:
            raise ctx.fail(node, f"a Cast to {onnx.TensorProto.DataType.Name(to) if to else 'nothing'} on the data "
                                 "path (only casts between float types pass relevance)")
        return Alias(node.output[0], node.input[0])


@register
class PadHandler(RouteHandler):
    """Pad. Constant zero padding (PyTorch's ZeroPad2d for TF-style "SAME"): relevance of the
    padded border goes nowhere (those inputs are constant zeros), the rest is cropped back.
    ``reflect``, ``edge`` and ``wrap`` (a Conv2d with ``padding_mode="reflect"``) copy input
    elements into the border: each copy's relevance goes back to the element it copies.
    A zero Pad feeding only a Conv is folded into the Conv's own pads by ``graph.passes.fold_pads``."""

    op_types = ("Pad",)
    MODES = ("constant", "reflect", "edge", "wrap")

    def parse(self, node, ctx: ParseContext):
        attrs = ctx.attrs(node)
        mode = attrs.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode not in self.MODES:
            raise ctx.fail(node, f"Pad mode '{mode}' (ONNX's are {', '.join(self.MODES)})")
        if ctx.opset >= 11:
            pads = ctx.const(node, 1, "pads")
            value = ctx.optional_const(node, 2, "constant value") if mode == "constant" else None
            axes = ctx.optional_const(node, 3, "axes")
        else:
            pads, value, axes = np.asarray(attrs.get("pads", [])), attrs.get("value", 0.0), None
        if mode == "constant" and value is not None \
                and float(np.asarray(value).reshape(-1)[0] if np.size(value) else 0.0) != 0.0:
            raise ctx.fail(node, "Pad with a non-zero constant")
        shape = ctx.shape(node.input[0])
        rank = len(shape) if shape is not None else len(pads) // 2
        pads = [int(p) for p in np.asarray(pads).reshape(-1)]
        if axes is not None:
            full = [0] * (2 * rank)
            ax = [int(a) % rank for a in np.asarray(axes).reshape(-1)]
            for i, a in enumerate(ax):
                full[a], full[rank + a] = pads[i], pads[len(ax) + i]
            pads = full
        if len(pads) != 2 * rank or min(pads) < 0:
            raise ctx.fail(node, f"pads {pads} (negative pads crop; not supported)")
        if mode != "constant" and (pads[0] or pads[rank]):
            raise ctx.fail(node, f"a {mode} Pad of the batch axis")
        return node_layer(PadLayer, node, ctx, self, [node.input[0]], pads=tuple(pads), mode=mode)

    @staticmethod
    def sources(layer, axis: int, n: int) -> np.ndarray:
        """For each position along ``axis`` of the output, the input position it copies (an
        input of ``n`` there; ``reflect``, ``edge`` and ``wrap`` only)."""
        rank = len(layer.pads) // 2
        return np.pad(np.arange(n), (layer.pads[axis], layer.pads[rank + axis]), mode=layer.mode)

    def relevance(self, layer, rule, r, ctx):
        pads = layer.pads
        rank = len(pads) // 2
        if layer.mode == "constant":
            index = tuple(slice(pads[i], r.shape[i] - pads[rank + i]) for i in range(rank))
            return [contiguous(r[index])]
        be = ctx.backend  # a GPU's relevance comes over for numpy's sums and goes back
        r = be.to_host(r)
        for a in range(rank):  # along each padded axis, the copies add up on what they copy
            if pads[a] or pads[rank + a]:
                r = self._gather_back(layer, r, a) if isinstance(r, np.ndarray) else self._onehot_back(layer, r, a)
        return [be.upload(r)]

    def _gather_back(self, layer, r: np.ndarray, a: int) -> np.ndarray:
        """Axis ``a`` of an array: its interior as it is, plus the border's few copies added on
        the elements they copy (one pass; a product with the one-hot matrix of ``sources``
        costs 0.7 G multiply-adds per axis on a 64-channel 224x224 map)."""
        lo, hi = layer.pads[a], layer.pads[len(layer.pads) // 2 + a]
        n = r.shape[a] - lo - hi
        src = self.sources(layer, a, n)
        moved = np.moveaxis(r, a, -1)
        out = moved[..., lo:lo + n].copy()
        for j in (*range(lo), *range(lo + n, lo + n + hi)):
            out[..., src[j]] += moved[..., j]
        return np.moveaxis(out, -1, a)

    def _onehot_back(self, layer, r, a: int):
        """Axis ``a`` as a product with the one-hot matrix of ``sources``: what a compiled
        graph (``lrpath compile``'s symbolic tensors) can write."""
        lo, hi = layer.pads[a], layer.pads[len(layer.pads) // 2 + a]
        src = self.sources(layer, a, r.shape[a] - lo - hi)
        onehot = np.zeros((src.size, src.size - lo - hi), np.float64 if r.dtype == np.float64 else np.float32)
        onehot[np.arange(src.size), src] = 1.0
        return np.moveaxis(np.moveaxis(r, a, -1) @ onehot, -1, a)

    def input_boxes(self, layer, box, shapes):
        """Spans shifted back by the leading pads; a box inside a zero padding reads nothing,
        one in a copying padding reads the elements it copies."""
        dims = input_dims(layer.inputs[0], shapes)
        rank = len(layer.pads) // 2
        if rank != len(box) + 1:
            return [None]
        if layer.mode != "constant":
            spans = []
            for a, ((lo, hi), n) in enumerate(zip(box, dims)):
                picked = self.sources(layer, a + 1, n)[lo:hi + 1]
                spans.append((int(picked.min()), int(picked.max())))
            return [tuple(spans)]
        spans = tuple(clip_span(lo - layer.pads[a + 1], hi - layer.pads[a + 1], n)
                      for a, ((lo, hi), n) in enumerate(zip(box, dims)))
        return [None if None in spans else spans]

    def forward(self, layer, inputs):
        pads = layer.pads
        rank = len(pads) // 2
        return np.pad(inputs[0], [(pads[i], pads[rank + i]) for i in range(rank)], mode=layer.mode)

    def chain_input(self, layer):
        rank = len(layer.pads) // 2  # padding the batch or channel axis would move channels
        return None if any(layer.pads[i] for i in (0, 1, rank, rank + 1)) else layer.inputs[0]


class SelectingHandler(RouteHandler):
    """Ops that pick parts of their input (Gather, Slice, Split): relevance goes back to what was
    picked, into an input whose run-time shape is fetched (the batch may sit on any axis)."""

    def needs(self, layer, rule, shapes):
        return {layer.inputs[0]}

    def input_boxes(self, layer, box, shapes):
        return [full_box(input_dims(layer.inputs[0], shapes))]

    def chain_input(self, layer):
        return None


@register
class GatherHandler(SelectingHandler):
    """Gather with constant indices (a ViT's class token ``x[:, 0]``; q, k and v taken from a
    fused projection): each gathered element's relevance goes back to where it was read
    (summed where an index repeats), the rest of the input gets none."""

    op_types = ("Gather",)

    def parse(self, node, ctx: ParseContext):
        ctx.data_input(node)
        indices = np.asarray(ctx.const(node, 1, "indices"), np.int64)
        axis = int(ctx.attrs(node).get("axis", 0))
        shape = ctx.shape(node.input[0])
        if (indices < 0).any():
            if shape is None or shape[axis] is None:
                raise ctx.fail(node, "negative indices on an axis of unknown size")
            indices = np.where(indices < 0, indices + shape[axis], indices)
        if axis < 0:
            if shape is None:
                raise ctx.fail(node, "a negative axis on a tensor of unknown rank")
            axis += len(shape)
        return node_layer(GatherLayer, node, ctx, self, [node.input[0]], axis=axis, indices=indices)

    def relevance(self, layer, rule, r, ctx: BackwardContext):
        """Through a one-hot matrix (index × input position) along the axis: repeated indices
        add up, and the same few products write the step as ONNX nodes (``lrpath compile``)."""
        n = ctx.shape_of(layer.inputs[0])[layer.axis]
        idx = layer.indices.reshape(-1)
        ax = layer.axis
        if layer.indices.ndim == 0:
            rows = np.expand_dims(r, ax)
        elif layer.indices.ndim == 1:
            rows = r
        else:
            rows = r.reshape(tuple(r.shape[:ax]) + (idx.size,) + tuple(r.shape[ax + layer.indices.ndim:]))
        onehot = np.zeros((idx.size, n), np.float64 if r.dtype == np.float64 else np.float32)
        onehot[np.arange(idx.size), idx] = 1.0
        return [np.moveaxis(np.moveaxis(rows, ax, -1) @ onehot, -1, ax)]

    def forward(self, layer, inputs):
        return np.take(inputs[0], layer.indices, axis=layer.axis)

    def input_boxes(self, layer, box, shapes):
        """Along the axis, the indices the box picks (one index array of rank ≤ 1 on a
        non-batch axis; otherwise all of the input)."""
        dims = input_dims(layer.inputs[0], shapes)
        ax = layer.axis - 1
        if layer.axis < 1 or layer.indices.ndim > 1:
            return [full_box(dims)]
        if layer.indices.ndim == 0:
            picked, rest = [int(layer.indices)], list(box)
        else:
            (lo, hi), rest = box[ax], list(box[:ax]) + list(box[ax + 1:])
            picked = layer.indices[lo:hi + 1].tolist()
        return [tuple(rest[:ax]) + ((min(picked), max(picked)),) + tuple(rest[ax:])]

    def chain_input(self, layer):
        """Picking along a non-batch axis keeps each element's channel (x[:, idx] picks channels)."""
        return layer.inputs[0] if layer.axis >= 1 else None

    def channel_map(self, layer, ids, out_shape):
        return np.take(ids, layer.indices, axis=layer.axis - 1).reshape(tuple(out_shape[1:]))

    def batch_axis(self, layer, in_axes, shapes):
        b = in_axes[0]
        return None if b is None or b == layer.axis else b + layer.indices.ndim - 1 if layer.axis < b else b

    def infer_shape(self, layer, in_shapes, readers):
        src = in_shapes[0]
        return None if src is None else tuple(src[:layer.axis]) + layer.indices.shape + tuple(src[layer.axis + 1:])


@register
class SliceHandler(SelectingHandler):
    """Slice with constant starts, ends, axes and steps: relevance goes back into the slice."""

    op_types = ("Slice",)

    def parse(self, node, ctx: ParseContext):
        ctx.data_input(node)
        shape = ctx.shape(node.input[0])
        if shape is None:
            raise ctx.fail(node, "a Slice of a tensor of unknown rank")
        if ctx.opset >= 10:
            starts = ctx.const(node, 1, "starts").reshape(-1)
            ends = ctx.const(node, 2, "ends").reshape(-1)
            axes = ctx.optional_const(node, 3, "axes")
            steps = ctx.optional_const(node, 4, "steps")
        else:
            attrs = ctx.attrs(node)
            starts, ends = np.asarray(attrs["starts"]), np.asarray(attrs["ends"])
            axes, steps = attrs.get("axes"), None
        axes = list(range(len(starts))) if axes is None else [int(a) % len(shape) for a in np.reshape(axes, -1)]
        steps = [1] * len(starts) if steps is None else [int(v) for v in np.reshape(steps, -1)]
        slices = [slice(None)] * len(shape)
        for a, b, e, st in zip(axes, starts, ends, steps):
            if a == 0 and shape[0] is None:
                raise ctx.fail(node, "a Slice along the batch axis")
            slices[a] = slice(int(b), int(e), st)  # Python clamps ONNX's INT64 "to the end" as ONNX does
        return node_layer(SliceLayer, node, ctx, self, [node.input[0]], slices=tuple(slices))

    def relevance(self, layer, rule, r, ctx: BackwardContext):
        shape = ctx.shape_of(layer.inputs[0])
        spans = [sl.indices(n) for sl, n in zip(layer.slices, shape)]
        if all(step == 1 for _, _, step in spans):  # zero padding around the slice (an ONNX Pad)
            return [np.pad(r, [(lo, n - max(hi, lo)) for (lo, hi, _), n in zip(spans, shape)])]
        out = np.zeros(shape, r.dtype)
        out[layer.slices] = r
        return [out]

    def forward(self, layer, inputs):
        return inputs[0][layer.slices]

    def input_boxes(self, layer, box, shapes):
        """Each axis's span moves to where the slice read it (start + index · step)."""
        dims = input_dims(layer.inputs[0], shapes)
        spans = []
        for (lo, hi), sl, n in zip(box, layer.slices[1:], dims):
            start, _, step = sl.indices(n)
            a, b = start + lo * step, start + hi * step
            spans.append((min(a, b), max(a, b)))
        return [tuple(spans)]

    def chain_input(self, layer):
        """A slice that keeps the batch whole keeps each element's channel (a ShuffleNet's
        channel split: each half's channels are the input's from an offset)."""
        return layer.inputs[0] if layer.slices[0] == slice(None) else None

    def channel_map(self, layer, ids, out_shape):
        return ids[layer.slices[1:]].reshape(tuple(out_shape[1:]))


@register
class SplitHandler(SliceHandler):
    """Split with constant sizes: each output read is its own slice layer (``name:k``), so q, k
    and v taken from a fused projection by ``unbind`` get back their own part of the input."""

    op_types = ("Split",)

    def parse(self, node, ctx: ParseContext):
        return self.parse_output(node, ctx, 0)

    def parse_output(self, node, ctx: ParseContext, index: int):
        ctx.data_input(node)
        shape = ctx.shape(node.input[0])
        attrs = ctx.attrs(node)
        axis = int(attrs.get("axis", 0))
        if shape is None:
            raise ctx.fail(node, "a Split of a tensor of unknown rank")
        axis %= len(shape)
        if axis == 0 and shape[0] is None:
            raise ctx.fail(node, "a Split along the batch axis")
        sizes = attrs.get("split")
        if sizes is None and len(node.input) > 1 and node.input[1]:
            sizes = ctx.const(node, 1, "split").reshape(-1).tolist()
        if sizes is None:
            n, k = shape[axis], len(node.output)
            if n is None:
                raise ctx.fail(node, "an even Split of an axis of unknown size")
            step = -(-n // k)  # ONNX: equal parts, the last one smaller
            sizes = [min(step, n - i * step) for i in range(k)]
        start = int(sum(sizes[:index]))
        slices = [slice(None)] * len(shape)
        slices[axis] = slice(start, start + int(sizes[index]), 1)
        return SliceLayer(name=ctx.node_name, op="Split", inputs=[node.input[0]], output=node.output[index],
                          nodes=[ctx.node_name], handler=self, slices=tuple(slices))
