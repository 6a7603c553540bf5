"""Small ONNX models built in code with ``onnx.helper`` for the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def make_model(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), "test", list(inputs), list(outputs),
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in dict(inits).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def conv_model(rng, x_shape, k_out, kernel=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1),
               dilations=(1, 1), groups=1, bias=True, pre_relu=False, auto_pad=None):
    """X → [Relu] → Conv → Y; returns (model, weight, bias)."""
    C = x_shape[1]
    w = rng.standard_normal((k_out, C // groups, *kernel)).astype(np.float32)
    b = rng.standard_normal(k_out).astype(np.float32) if bias else None
    nodes, src = [], "X"
    if pre_relu:
        nodes.append(helper.make_node("Relu", ["X"], ["Xr"], name="relu_in"))
        src = "Xr"
    attrs = dict(kernel_shape=list(kernel), strides=list(strides), dilations=list(dilations), group=groups)
    if auto_pad:
        attrs["auto_pad"] = auto_pad
    else:
        attrs["pads"] = list(pads)
    ins = [src, "W"] + (["B"] if bias else [])
    nodes.append(helper.make_node("Conv", ins, ["Y"], name="conv", **attrs))
    inits = {"W": w}
    if bias:
        inits["B"] = b
    return make_model(nodes, [vi("X", ["N", *x_shape[1:]])], [vi("Y", None)], inits), w, b


def gemm_model(rng, n_in, n_out, trans_b=0, alpha=1.0, beta=1.0, bias=True, pre_relu=False):
    """X → [Relu] → Gemm → Y; returns (model, W (in, out) as applied, bias as applied)."""
    B = rng.standard_normal((n_out, n_in) if trans_b else (n_in, n_out)).astype(np.float32)
    C = rng.standard_normal(n_out).astype(np.float32) if bias else None
    nodes, src = [], "X"
    if pre_relu:
        nodes.append(helper.make_node("Relu", ["X"], ["Xr"], name="relu_in"))
        src = "Xr"
    nodes.append(helper.make_node("Gemm", [src, "B"] + (["C"] if bias else []), ["Y"], name="gemm",
                                  transB=trans_b, alpha=alpha, beta=beta))
    inits = {"B": B, **({"C": C} if bias else {})}
    W = (B.T if trans_b else B).astype(np.float64) * alpha
    b = None if C is None else C.astype(np.float64) * beta
    return make_model(nodes, [vi("X", ["N", n_in])], [vi("Y", None)], inits), W, b


def matmul_add_model(rng, n_in, n_out, pre_relu=False):
    """X → [Relu] → MatMul → Add(bias) → Y (the dense form tf2onnx and Keras produce)."""
    W = rng.standard_normal((n_in, n_out)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32)
    nodes, src = [], "X"
    if pre_relu:
        nodes.append(helper.make_node("Relu", ["X"], ["Xr"], name="relu_in"))
        src = "Xr"
    nodes += [helper.make_node("MatMul", [src, "W"], ["M"], name="matmul"),
              helper.make_node("Add", ["M", "b"], ["Y"], name="bias_add")]
    return make_model(nodes, [vi("X", ["N", n_in])], [vi("Y", None)], {"W": W, "b": b}), W, b


def pool_model(op, x_shape, **attrs):
    """X → Relu → op → Y (pools see non-negative inputs, as in a CNN)."""
    nodes = [helper.make_node("Relu", ["X"], ["Xr"], name="relu_in"),
             helper.make_node(op, ["Xr"], ["Y"], name="pool", **attrs)]
    return make_model(nodes, [vi("X", ["N", *x_shape[1:]])], [vi("Y", None)])


def maxpool_indices(x, kernel, strides, pads, dilations, ceil_mode):
    """onnxruntime's MaxPool on ``x`` (float32 or float64): (values, its ``Indices`` output)."""
    dt = TensorProto.FLOAT if x.dtype == np.float32 else TensorProto.DOUBLE
    node = helper.make_node("MaxPool", ["X"], ["Y", "I"], kernel_shape=list(kernel), strides=list(strides),
                            pads=list(pads), dilations=list(dilations), ceil_mode=int(ceil_mode))
    model = make_model([node], [vi("X", list(x.shape), dt)], [vi("Y", None, dt), vi("I", None, TensorProto.INT64)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"X": x})


def residual_model(rng, x_shape):
    """Y = Add(Relu(X), Conv1x1(X)) — a residual merge of two branches."""
    C = x_shape[1]
    w = rng.standard_normal((C, C, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Relu", ["X"], ["A"], name="relu"),
             helper.make_node("Conv", ["X", "W"], ["Cv"], name="conv", kernel_shape=[1, 1]),
             helper.make_node("Add", ["A", "Cv"], ["Y"], name="add")]
    return make_model(nodes, [vi("X", ["N", *x_shape[1:]])], [vi("Y", None)], {"W": w}), w


def concat_model(rng, x_shape, k1, k2):
    """Y = Concat(Conv3x3_a(X), Conv3x3_b(X)) along channels."""
    C = x_shape[1]
    wa = rng.standard_normal((k1, C, 3, 3)).astype(np.float32)
    wb = rng.standard_normal((k2, C, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["X", "Wa"], ["Ya"], name="conv_a", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["X", "Wb"], ["Yb"], name="conv_b", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Concat", ["Ya", "Yb"], ["Y"], name="concat", axis=1)]
    return make_model(nodes, [vi("X", ["N", *x_shape[1:]])], [vi("Y", None)], {"Wa": wa, "Wb": wb}), wa, wb


def small_cnn(rng, bias=True, bn=False, softmax=False, classes=5):
    """A VGG-like CNN: Conv-[BN]-Relu-MaxPool-Conv-Relu-Flatten-Gemm-Relu-Gemm[-Softmax], 1×3×12×12."""
    def w(*s):
        return (rng.standard_normal(s) * np.sqrt(2.0 / np.prod(s[1:]))).astype(np.float32)

    inits = {"W1": w(6, 3, 3, 3), "W2": w(8, 6, 3, 3), "W3": w(16, 8 * 3 * 3), "W4": w(classes, 16)}
    if bias:
        inits.update(B1=(rng.standard_normal(6) * 0.1).astype(np.float32),
                     B2=(rng.standard_normal(8) * 0.1).astype(np.float32),
                     B3=(rng.standard_normal(16) * 0.1).astype(np.float32),
                     B4=(rng.standard_normal(classes) * 0.1).astype(np.float32))
    nb = (lambda k: [k]) if bias else (lambda k: [])
    nodes = [helper.make_node("Conv", ["X", "W1"] + nb("B1"), ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    src = "c1"
    if bn:
        inits.update(g=(1 + 0.3 * rng.standard_normal(6)).astype(np.float32),
                     be=(0.2 * rng.standard_normal(6)).astype(np.float32),
                     mu=(0.5 * rng.standard_normal(6)).astype(np.float32),
                     var=(0.5 + rng.random(6)).astype(np.float32))
        nodes.append(helper.make_node("BatchNormalization", ["c1", "g", "be", "mu", "var"], ["bn1"], name="bn1",
                                      epsilon=1e-5))
        src = "bn1"
    nodes += [
        helper.make_node("Relu", [src], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "W2"] + nb("B2"), ["c2"], name="conv2", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Flatten", ["r2"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "W3"] + nb("B3"), ["d1"], name="fc1", transB=1),
        helper.make_node("Relu", ["d1"], ["r3"], name="relu3"),
        helper.make_node("Gemm", ["r3", "W4"] + nb("B4"), ["logits"], name="fc2", transB=1),
    ]
    out = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1))
        out = "probs"
    return make_model(nodes, [vi("X", ["N", 3, 12, 12])], [vi(out, ["N", classes])], inits), inits


def mixed_cnn(rng, size=(19, 17), classes=7, gemm=True):
    """Every layer the native forward runs, at odd sizes: a 3x3 stride-1 conv wide enough for
    Winograd F(4x4, 3x3), MaxPool 3x3/2 with padding and ceil_mode, a strided dilated 5x5 conv
    with groups, a 1x1 conv, a residual Add, a BatchNormalization after the Add (an affine
    layer, not folded), a plain MaxPool 2x2, GlobalAveragePool, Flatten, and a dense layer
    (Gemm transB=1, or MatMul + Add). Input (N, 3, *size) with small biases."""
    def w(*s):
        return (rng.standard_normal(s) * np.sqrt(2.0 / np.prod(s[1:]))).astype(np.float32)

    def b(n):
        return (rng.standard_normal(n) * 0.1).astype(np.float32)

    inits = {"W1": w(24, 3, 3, 3), "B1": b(24), "W2": w(16, 12, 5, 5), "B2": b(16), "W3": w(16, 16, 1, 1),
             "g": (1 + 0.3 * rng.standard_normal(16)).astype(np.float32),
             "be": (0.2 * rng.standard_normal(16)).astype(np.float32),
             "mu": (0.5 * rng.standard_normal(16)).astype(np.float32),
             "var": (0.5 + rng.random(16)).astype(np.float32)}
    nodes = [
        helper.make_node("Conv", ["X", "W1", "B1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1], ceil_mode=1),
        helper.make_node("Conv", ["p1", "W2", "B2"], ["c2"], name="conv2", kernel_shape=[5, 5], strides=[2, 1],
                         pads=[2, 3, 1, 2], dilations=[1, 2], group=2),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "W3"], ["c3"], name="conv3", kernel_shape=[1, 1]),
        helper.make_node("Add", ["c3", "r2"], ["s"], name="add"),
        helper.make_node("BatchNormalization", ["s", "g", "be", "mu", "var"], ["bn"], name="bn", epsilon=1e-5),
        helper.make_node("Relu", ["bn"], ["r3"], name="relu3"),
        helper.make_node("MaxPool", ["r3"], ["p2"], name="pool2", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["f"], name="flatten", axis=1),
    ]
    if gemm:
        inits.update(W4=w(classes, 16), B4=b(classes))
        nodes.append(helper.make_node("Gemm", ["f", "W4", "B4"], ["logits"], name="fc", transB=1))
    else:
        inits.update(W4=w(classes, 16).T.copy(), B4=b(classes))
        nodes += [helper.make_node("MatMul", ["f", "W4"], ["m"], name="fc"),
                  helper.make_node("Add", ["m", "B4"], ["logits"], name="fc_bias")]
    return make_model(nodes, [vi("X", ["N", 3, *size])], [vi("logits", ["N", classes])], inits)


def concat_pool_cnn(rng, size=(13, 11), classes=4):
    """Two branches joined by Concat (an AveragePool 3x3/1 counting its padding beside a 1x1
    conv + ReLU), then AveragePool 2x2/2 with ceil_mode not counting padding, Flatten, Gemm:
    the other layers the native forward runs. Input (N, 3, *size)."""
    def w(*s):
        return (rng.standard_normal(s) * np.sqrt(2.0 / np.prod(s[1:]))).astype(np.float32)

    h, wd = (size[0] + 1) // 2, (size[1] + 1) // 2
    inits = {"W1": w(6, 3, 3, 3), "W2": w(5, 6, 1, 1), "B2": (rng.standard_normal(5) * 0.1).astype(np.float32),
             "W3": w(classes, 11 * h * wd)}
    nodes = [
        helper.make_node("Conv", ["X", "W1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("AveragePool", ["r1"], ["a1"], name="avg3", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                         count_include_pad=1),
        helper.make_node("Conv", ["r1", "W2", "B2"], ["c2"], name="conv2", kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Concat", ["a1", "r2"], ["cat"], name="concat", axis=1),
        helper.make_node("AveragePool", ["cat"], ["a2"], name="avg2", kernel_shape=[2, 2], strides=[2, 2],
                         ceil_mode=1),
        helper.make_node("Flatten", ["a2"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "W3"], ["logits"], name="fc", transB=1),
    ]
    return make_model(nodes, [vi("X", ["N", 3, *size])], [vi("logits", ["N", classes])], inits)


def nhwc_cnn(rng, size=(10, 9), classes=3, reshape=(0, -1)):
    """A Keras-style export: NHWC input transposed to NCHW, Conv, ReLU6 (Clip 0..6), a depthwise
    conv, transposed back to NHWC and flattened by a Reshape to ``reshape`` (tf2onnx's), Gemm.
    ``reshape="dynamic"``: the shape computed at run time, (batch, -1) from Shape → Gather →
    Concat (PyTorch's ``x.view(x.size(0), -1)``)."""
    def w(*s):
        return (rng.standard_normal(s) * np.sqrt(6.0 / np.prod(s[1:]))).astype(np.float32)

    h, wd = size
    inits = {"W1": w(8, 3, 3, 3), "B1": (rng.standard_normal(8) * 0.5).astype(np.float32), "W2": w(8, 1, 3, 3),
             "lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32),
             "W3": w(h * wd * 8, classes)}
    nodes = [
        helper.make_node("Transpose", ["X"], ["xt"], name="to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["xt", "W1", "B1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"], name="relu6"),
        helper.make_node("Conv", ["r1", "W2"], ["c2"], name="dw", kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=8),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Transpose", ["r2"], ["t2"], name="to_nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["t2", "shape"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "W3"], ["logits"], name="fc"),
    ]
    if reshape == "dynamic":
        inits.update(zero=np.array([0], np.int64), minus1=np.array([-1], np.int64))
        nodes[6:6] = [helper.make_node("Shape", ["t2"], ["s"], name="shape_of"),
                      helper.make_node("Gather", ["s", "zero"], ["n"], name="batch_dim", axis=0),
                      helper.make_node("Concat", ["n", "minus1"], ["shape"], name="target", axis=0)]
    else:
        inits["shape"] = np.array(reshape, np.int64)
    return make_model(nodes, [vi("X", ["N", h, wd, 3])], [vi("logits", ["N", classes])], inits)


def wide_cnn(rng, pointwise=False, size=128, channels=96):
    """Two 3x3 stride-1 convolutions of ``channels`` on a ``size``² map (1.4 G multiply-adds
    per sample at the defaults: a forward Winograd carries), or with ``pointwise`` a 3x3 conv
    feeding three 1x1 ones of 4x the channels (most of the work outside Winograd); then
    GlobalAveragePool, Flatten, Gemm. Weights only: for the engine choice, never run."""
    c4 = 4 * channels if pointwise else channels
    inits = {"W1": (rng.standard_normal((channels, 3, 3, 3)) * 0.1).astype(np.float32),
             "W2": (rng.standard_normal((c4, channels, 1 if pointwise else 3, 1 if pointwise else 3)) * 0.05)
             .astype(np.float32), "W4": (rng.standard_normal((10, c4)) * 0.1).astype(np.float32)}
    k2 = [1, 1] if pointwise else [3, 3]
    nodes = [helper.make_node("Conv", ["X", "W1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "W2"], ["c2"], name="conv2", kernel_shape=k2,
                              pads=[0, 0, 0, 0] if pointwise else [1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2")]
    src = "r2"
    if pointwise:
        for i in (3, 4):
            inits[f"W{i}x"] = (rng.standard_normal((c4, c4, 1, 1)) * 0.05).astype(np.float32)
            nodes += [helper.make_node("Conv", [src, f"W{i}x"], [f"c{i}"], name=f"conv{i}", kernel_shape=[1, 1]),
                      helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
            src = f"r{i}"
    nodes += [helper.make_node("GlobalAveragePool", [src], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["f"], name="flatten", axis=1),
              helper.make_node("Gemm", ["f", "W4"], ["logits"], name="fc", transB=1)]
    return make_model(nodes, [vi("X", ["N", 3, size, size])], [vi("logits", ["N", 10])], inits)
