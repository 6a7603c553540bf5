"""Resize/Upsample as a fixed linear map, and a spatial ReduceMean as a global average pool."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from lrpath_onnx import Analyzer
from lrpath_onnx.graph.layers import AvgPoolLayer, ResizeLayer
from lrpath_onnx.ops.resize import interpolation_matrix
from tests import models
from tests import reference as ref

X_SHAPE = (2, 3, 5, 4)

#: (mode, coordinate_transformation_mode, nearest_mode)
MODES = [("nearest", "asymmetric", "floor"), ("nearest", "half_pixel", "round_prefer_floor"),
         ("nearest", "half_pixel", "round_prefer_ceil"), ("nearest", "align_corners", "round_prefer_floor"),
         ("linear", "half_pixel", None), ("linear", "pytorch_half_pixel", None), ("linear", "align_corners", None),
         ("linear", "asymmetric", None), ("nearest", "tf_half_pixel_for_nn", "ceil")]


def _resize_model(mode, coords, nearest, scales=None, sizes=None, opset=13):
    attrs = {"mode": mode, "coordinate_transformation_mode": coords}
    if nearest:
        attrs["nearest_mode"] = nearest
    ins = ["X", "", "scales"] if scales is not None else ["X", "", "", "sizes"]
    inits = {"scales": np.asarray(scales, np.float32)} if scales is not None else {"sizes": np.asarray(sizes, np.int64)}
    nodes = [helper.make_node("Relu", ["X"], ["a"], name="relu"),
             helper.make_node("Resize", ["a"] + ins[1:], ["Y"], name="resize", **attrs)]
    return models.make_model(nodes, [models.vi("X", ["N", *X_SHAPE[1:]])], [models.vi("Y", None)], inits, opset=opset)


def _reference(x, r, rows, cols, eps=1e-6):
    """x ⊙ Aᵀ(r / stab(A x)) with the map A = rows ⊗ cols written out, per (sample, channel)."""
    A = np.kron(rows, cols)
    out = np.zeros_like(x, dtype=np.float64)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            a = np.maximum(x[n, c].reshape(-1), 0).astype(np.float64)
            out[n, c] = ref.lrp_linear("epsilon", a, A.T, None, r[n, c].reshape(-1), eps=eps).reshape(x.shape[2:])
    return out


HOWS = {"scales2": dict(scales=[1, 1, 2, 2]), "scales1.5x3": dict(scales=[1, 1, 1.5, 3]),
        "sizes7x9": dict(sizes=[2, 3, 7, 9]), "sizes3x2": dict(sizes=[2, 3, 3, 2])}
#: tf_half_pixel_for_nn is defined for scales only
CASES = [(m, h) for m in MODES for h in HOWS if not (m[1] == "tf_half_pixel_for_nn" and h.startswith("sizes"))]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("mode,how", CASES, ids=["-".join(x for x in m if x) + "-" + h for m, h in CASES])
def test_resize_forward_and_relevance(tmp_path, mode, how, seed):
    rng = np.random.default_rng(seed)
    kw = HOWS[how]
    an = Analyzer(models.save(_resize_model(*mode, **kw), tmp_path / "m.onnx"))
    layer = an.graph.find("resize")
    assert isinstance(layer, ResizeLayer)
    x = rng.standard_normal(X_SHAPE).astype(np.float32)
    y = an.forward(x)["Y"]
    a = np.maximum(x, 0).astype(np.float64)
    np.testing.assert_allclose(layer.handler.forward(layer, [a]), y, rtol=1e-5, atol=1e-6)  # equals onnxruntime
    r = rng.standard_normal(y.shape)
    exp = an.relevance_from(x, "Y", r, dtype=np.float64)
    scales = layer.scales or tuple(o / i for o, i in zip(y.shape[2:], x.shape[2:]))
    rows, cols = (interpolation_matrix(n, m, s, layer.mode, layer.coordinate_mode, layer.nearest_mode)
                  for n, m, s in zip(x.shape[2:], y.shape[2:], scales))
    want = _reference(x, r, rows, cols)
    np.testing.assert_allclose(exp.relevance, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())


def test_upsample_nearest_conserves(tmp_path):
    """torch's nn.Upsample(scale_factor=2) as older exporters write it (opset 9 Upsample)."""
    nodes = [helper.make_node("Relu", ["X"], ["a"], name="relu"),
             helper.make_node("Upsample", ["a", "scales"], ["Y"], name="up", mode="nearest")]
    model = models.make_model(nodes, [models.vi("X", ["N", *X_SHAPE[1:]])], [models.vi("Y", None)],
                              {"scales": np.asarray([1, 1, 2, 2], np.float32)}, opset=9)
    an = Analyzer(models.save(model, tmp_path / "u.onnx"))
    x = np.abs(np.random.default_rng(0).standard_normal(X_SHAPE)).astype(np.float32) + 0.1
    y = an.forward(x)["Y"]
    np.testing.assert_array_equal(y, np.repeat(np.repeat(x, 2, axis=2), 2, axis=3))
    exp = an.relevance_from(x, "Y", y.astype(np.float64), dtype=np.float64)
    # each input pixel is copied 4 times: relevance y per copy comes back 4·x (up to ε)
    np.testing.assert_allclose(exp.relevance, 4 * x, rtol=1e-5)


def test_resize_takes_only_norm_rules(tmp_path):
    from lrpath_onnx.errors import RuleError

    with pytest.raises(RuleError, match="cannot take rule gamma; it takes zero, epsilon"):
        Analyzer(models.save(_resize_model("linear", "half_pixel", None, scales=[1, 1, 2, 2]), tmp_path / "m.onnx"),
                 rules=["resize=gamma"])


def _pool_net(tmp_path, reduce: str, keepdims: int, opset: int = 17):
    rng = np.random.default_rng(4)
    n = helper.make_node
    nodes = [n("Conv", ["X", "W"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1] * 4),
             n("Relu", ["c"], ["a"], name="relu")]
    inits = {"W": rng.standard_normal((6, 3, 3, 3)).astype(np.float32),
             "D": rng.standard_normal((6, 4)).astype(np.float32)}
    if reduce == "gap":
        nodes += [n("GlobalAveragePool", ["a"], ["p"], name="pool"), n("Flatten", ["p"], ["f"], name="flatten")]
    elif opset >= 18:
        nodes += [n("ReduceMean", ["a", "axes"], ["p"], name="pool", keepdims=keepdims)]
        inits["axes"] = np.asarray([-2, -1], np.int64)
    else:
        nodes += [n("ReduceMean", ["a"], ["p"], name="pool", axes=[2, 3], keepdims=keepdims)]
    if reduce != "gap":
        nodes += [n("Flatten", ["p"], ["f"], name="flatten")] if keepdims else [n("Identity", ["p"], ["f"], name="id")]
    nodes += [n("MatMul", ["f", "D"], ["Y"], name="fc")]
    model = models.make_model(nodes, [models.vi("X", ["N", *X_SHAPE[1:]])], [models.vi("Y", None)], inits, opset=opset)
    return Analyzer(models.save(model, tmp_path / f"{reduce}{keepdims}{opset}.onnx"), preset="epsilon-gamma-box")


@pytest.mark.parametrize("keepdims,opset", [(1, 17), (0, 17), (1, 18), (0, 18)])
def test_spatial_reduce_mean_is_a_global_average_pool(tmp_path, keepdims, opset):
    gap = _pool_net(tmp_path, "gap", 1)
    mean = _pool_net(tmp_path, "mean", keepdims, opset)
    assert isinstance(mean.graph.find("pool"), AvgPoolLayer)
    x = np.random.default_rng(5).standard_normal(X_SHAPE).astype(np.float32)
    a, b = gap.explain(x), mean.explain(x)
    np.testing.assert_allclose(b.logits, a.logits, rtol=1e-5)
    np.testing.assert_allclose(b.relevance, a.relevance, rtol=1e-5, atol=1e-7 * np.abs(a.relevance).max())
