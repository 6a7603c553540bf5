"""Receptive fields from the graph's kernels, strides, pads and dilations, against brute
force: with positive weights and inputs every unit is monotone, so an input element lies in
a neuron's field exactly when raising it changes the neuron."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

from lrpath_onnx import Analyzer
from lrpath_onnx.graph.receptive import receptive_box, spatial_box
from tests import models


class Chain:
    """A small ONNX graph built node by node, positive weights throughout."""

    def __init__(self, rng, channels: int):
        self.rng, self.nodes, self.inits, self.c, self.t, self.n = rng, [], {}, channels, "X", 0

    def _name(self, op):
        self.n += 1
        return f"{op.lower()}{self.n}"

    def add(self, op, inputs=None, n_out=None, **attrs):
        name = self._name(op)
        self.nodes.append(helper.make_node(op, inputs or [self.t], [name], name=name, **attrs))
        self.t = name
        return name

    def conv(self, k_out, kernel, src=None, c_in=None, group=1, **attrs):
        c_in = c_in or self.c
        w = self.rng.uniform(0.1, 1.0, (k_out, c_in // group, *kernel)).astype(np.float32)
        wname = f"w{self.n + 1}"
        self.inits[wname] = w
        out = self.add("Conv", [src or self.t, wname], kernel_shape=list(kernel), group=group, **attrs)
        self.c = k_out
        return out

    def const(self, array, name):
        self.inits[name] = np.asarray(array)
        return name

    def save(self, tmp_path, in_shape):
        m = models.make_model(self.nodes, [models.vi("X", ["N", *in_shape])], [models.vi(self.t, None)],
                              self.inits, opset=17)
        return models.save(m, tmp_path / "rf.onnx")


def brute_box(path, x, tensor_index):
    """Bounding box of the input elements whose raise changes output element ``tensor_index``."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    base = sess.run(None, {"X": x[None]})[0][0][tensor_index]
    flat = x.reshape(-1)
    batch = np.repeat(x[None], flat.size, axis=0).reshape(flat.size, -1)
    batch[np.arange(flat.size), np.arange(flat.size)] += 50.0
    out = sess.run(None, {"X": batch.reshape((flat.size,) + x.shape)})[0]
    moved = np.abs(out[(slice(None),) + tensor_index] - base) > 1e-4 * max(1.0, abs(base))
    idx = np.array(np.unravel_index(np.nonzero(moved)[0], x.shape))
    return tuple((int(a.min()), int(a.max())) for a in idx) if idx.size else None


def check(path, in_shape, seed, n_neurons=6):
    rng = np.random.default_rng(seed)
    an = Analyzer(path, low=0.0, high=1.0)
    out_shape = an.graph.shapes[an.graph.output][1:]
    x = rng.uniform(0.1, 1.0, in_shape).astype(np.float32)
    corners = [tuple(0 for _ in out_shape), tuple(d - 1 for d in out_shape)]
    picks = corners + [tuple(int(rng.integers(d)) for d in out_shape) for _ in range(n_neurons - 2)]
    for index in picks:
        assert receptive_box(an.graph, an.graph.output, index) == brute_box(path, x, index), index


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_strided_dilated_padded_convolutions_and_pools(tmp_path, seed):
    ch = Chain(np.random.default_rng(seed), 2)
    ch.conv(3, (3, 3), strides=[2, 2], pads=[1, 0, 1, 2])
    ch.add("Relu")
    ch.add("MaxPool", kernel_shape=[2, 3], strides=[2, 1], pads=[0, 1, 0, 1])
    ch.conv(4, (3, 2), dilations=[2, 3], pads=[3, 1, 2, 0])
    ch.add("AveragePool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)
    ch.conv(4, (2, 2), group=2, strides=[1, 2])
    path = ch.save(tmp_path, [2, 23, 19])
    check(path, (2, 23, 19), seed)


@pytest.mark.parametrize("seed", [0, 3])
def test_nhwc_pad_resize_concat_and_residual_branches(tmp_path, seed):
    ch = Chain(np.random.default_rng(seed), 3)
    ch.add("Transpose", perm=[0, 3, 1, 2])
    ch.add("Pad", [ch.t, ch.const(np.array([0, 0, 2, 1, 0, 0, 1, 2], np.int64), "pads")])
    trunk = ch.conv(4, (3, 3), strides=[2, 2])
    ch.add("Resize", [trunk, "", ch.const(np.array([1, 1, 2, 1.5], np.float32), "scales")], mode="linear")
    up = ch.t
    side = ch.conv(2, (1, 1), src=up, c_in=4)
    wide = ch.conv(2, (5, 5), src=up, c_in=4, pads=[2, 2, 2, 2])
    ch.add("Concat", [side, wide], axis=1)
    ch.add("Add", [ch.t, ch.conv(4, (3, 3), src=up, c_in=4, pads=[1, 1, 1, 1], dilations=[1, 1])])
    ch.add("Transpose", perm=[0, 2, 3, 1])
    path = ch.save(tmp_path, [17, 15, 3])
    check(path, (17, 15, 3), seed)


def test_a_flatten_into_a_dense_layer_reads_everything_and_layouts_pick_the_spatial_axes(tmp_path):
    rng = np.random.default_rng(4)
    path = models.save(models.small_cnn(rng)[0], tmp_path / "cnn.onnx")
    an = Analyzer(path, low=0.0, high=1.0)
    shape = an.graph.shapes[an.graph.input][1:]
    assert receptive_box(an.graph, an.graph.output, (0,)) == tuple((0, d - 1) for d in shape)
    assert spatial_box(((0, 2), (3, 4), (5, 6)), "nchw") == ((3, 4), (5, 6))
    assert spatial_box(((3, 4), (5, 6), (0, 2)), "nhwc") == ((3, 4), (5, 6))
