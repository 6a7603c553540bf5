"""QDQ-quantized models (onnxruntime's ``quantize_static`` and the like): weights are stored
as integers behind a DequantizeLinear, which folds to the float weights
(``graph.constants``); each activation passes a QuantizeLinear–DequantizeLinear pair, one
element-wise function ``q(x) = (clip(round(x/s) + z) − z)·s`` here. Relevance passes it
unchanged, as any activation (and gradients straight through inside the clipping range, as
in quantization-aware training); every layer's rule reads the values it computed with, the
quantized ones, from the model's own forward pass."""

from __future__ import annotations

import numpy as np
import onnx

from ..graph.layers import ActivationLayer
from .activation import FUNCTIONS, ActivationHandler, Function
from .registry import Alias, ParseContext, node_layer, register

#: integer types a QuantizeLinear may round to, and their ranges
_RANGES = {onnx.TensorProto.UINT8: (0, 255), onnx.TensorProto.INT8: (-128, 127),
           onnx.TensorProto.UINT16: (0, 65535), onnx.TensorProto.INT16: (-32768, 32767),
           onnx.TensorProto.UINT4: (0, 15), onnx.TensorProto.INT4: (-8, 7)}
_BY_DTYPE = {np.dtype(np.uint8): onnx.TensorProto.UINT8, np.dtype(np.int8): onnx.TensorProto.INT8,
             np.dtype(np.uint16): onnx.TensorProto.UINT16, np.dtype(np.int16): onnx.TensorProto.INT16}


def _fake_quant(x, p):
    q = np.clip(np.rint(x / p["scale"]) + p["zero"], p["qmin"], p["qmax"])
    return (q - p["zero"]) * p["scale"]


def _fake_quant_grad(x, p):
    lo, hi = (p["qmin"] - p["zero"]) * p["scale"], (p["qmax"] - p["zero"]) * p["scale"]
    return ((x >= lo) & (x <= hi)).astype(x.dtype)


FUNCTIONS["fakequant"] = Function(_fake_quant, _fake_quant_grad,
                                  nonneg=lambda p: p["qmin"] - p["zero"] >= 0)


@register
class QuantizeHandler(ActivationHandler):
    """QuantizeLinear (an alias of its input: the integers carry nothing a rule reads) and
    DequantizeLinear after it, which is the pair's element-wise function ``fakequant``."""

    op_types = ("QuantizeLinear", "DequantizeLinear")

    def parse(self, node, ctx: ParseContext):
        if node.op_type == "QuantizeLinear":
            return Alias(node.output[0], node.input[0])
        ctx.data_input(node)
        scale = np.asarray(ctx.const(node, 1, "DequantizeLinear scale"), np.float64)
        zero = ctx.optional_const(node, 2, "DequantizeLinear zero point")
        if scale.size != 1 or (zero is not None and np.asarray(zero).size != 1):
            raise ctx.fail(node, "per-channel quantization of activations (one scale and zero point per tensor only)")
        kind = _BY_DTYPE.get(np.asarray(zero).dtype) if zero is not None else onnx.TensorProto.UINT8
        if kind is None:
            raise ctx.fail(node, f"zero point of type {np.asarray(zero).dtype} (8- and 16-bit integers only)")
        qmin, qmax = _RANGES[kind]
        params = {"scale": float(scale.reshape(-1)[0]), "zero": 0.0 if zero is None else float(np.asarray(zero).reshape(-1)[0]),
                  "qmin": float(qmin), "qmax": float(qmax)}
        return node_layer(ActivationLayer, node, ctx, self, [node.input[0]], fn="fakequant", params=params)
