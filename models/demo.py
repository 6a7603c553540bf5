"""A small VGG-style demo network and a synthetic picture, built in code (no downloads).

Stand-in for the trained ``mnist-vgg`` demo model (model-zoo issue): the weights are
seeded random draws, so the explanation shows the machinery, not a trained decision.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build_demo_cnn(seed: int = 0, size: int = 64, classes: int = 10) -> onnx.ModelProto:
    """conv-conv-pool ×2, two dense layers; NCHW input ``input`` (1×3×size×size)."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def param(name, shape, fan_in):
        arr = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        inits.append(numpy_helper.from_array(arr, name))
        return name

    def bias(name, n):
        inits.append(numpy_helper.from_array((rng.standard_normal(n) * 0.05).astype(np.float32), name))
        return name

    x, cin, idx = "input", 3, 0
    for block, cout in enumerate((16, 32)):
        for _ in range(2):
            name = f"features.{idx}"
            nodes.append(helper.make_node("Conv", [x, param(name + ".weight", (cout, cin, 3, 3), cin * 9),
                                                   bias(name + ".bias", cout)], [name], name=name,
                                          kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
            nodes.append(helper.make_node("Relu", [name], [f"features.{idx + 1}"], name=f"features.{idx + 1}"))
            x, cin, idx = f"features.{idx + 1}", cout, idx + 2
        name = f"features.{idx}"
        nodes.append(helper.make_node("MaxPool", [x], [name], name=name, kernel_shape=[2, 2], strides=[2, 2]))
        x, idx = name, idx + 1
    side = size // 4
    nodes.append(helper.make_node("Flatten", [x], ["flatten"], name="flatten"))
    nodes.append(helper.make_node("Gemm", ["flatten", param("classifier.0.weight", (64, 32 * side * side), 32 * side * side),
                                           bias("classifier.0.bias", 64)], ["classifier.0"], name="classifier.0", transB=1))
    nodes.append(helper.make_node("Relu", ["classifier.0"], ["classifier.1"], name="classifier.1"))
    nodes.append(helper.make_node("Gemm", ["classifier.1", param("classifier.2.weight", (classes, 64), 64),
                                           bias("classifier.2.bias", classes)], ["logits"], name="classifier.2", transB=1))
    graph = helper.make_graph(nodes, "demo_cnn",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="lrpath-onnx")
    model.ir_version = 8
    return model


def demo_picture(size: int = 96) -> np.ndarray:
    """A uint8 RGB picture with a few shapes: a red disc, a blue bar, a green square."""
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.full((size, size, 3), 235, np.uint8)
    disc = (yy - size * 0.35) ** 2 + (xx - size * 0.35) ** 2 < (size * 0.18) ** 2
    img[disc] = (210, 40, 40)
    img[int(size * 0.65):int(size * 0.75), int(size * 0.1):int(size * 0.9)] = (40, 60, 200)
    img[int(size * 0.15):int(size * 0.4), int(size * 0.62):int(size * 0.87)] = (40, 170, 60)
    return img
