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


@pytest.mark.parametrize("seed", [0, 5])
def test_channel_splits_strided_slices_and_picks(tmp_path, seed):
    """A ShuffleNet-style channel split, a slice with a step and an offset on the height, a
    Gather of channels and one of a single column: each reads only what it picks."""
    ch = Chain(np.random.default_rng(seed), 3)
    trunk = ch.conv(6, (3, 3), pads=[1, 1, 1, 1])
    ch.nodes.append(helper.make_node("Split", [trunk, ch.const(np.array([2, 4], np.int64), "halves")],
                                     ["lo", "hi"], name="split", axis=1))
    sliced = ch.add("Slice", ["hi", ch.const(np.array([1], np.int64), "st"), ch.const(np.array([12], np.int64), "en"),
                              ch.const(np.array([2], np.int64), "ax"), ch.const(np.array([2], np.int64), "sp")])
    picked = ch.add("Gather", [sliced, ch.const(np.array([3, 1, 3], np.int64), "pick")], axis=1)
    ch.add("Gather", ["lo", ch.const(np.array([4], np.int64), "col")], axis=3)
    widened = ch.conv(3, (1, 3), c_in=2, pads=[0, 1, 0, 1])
    small = ch.conv(3, (3, 3), src=picked, c_in=3, pads=[1, 1, 1, 1])
    ch.add("Concat", [small, ch.add("Slice", [widened, ch.const(np.array([0], np.int64), "s0"),
                                              ch.const(np.array([6], np.int64), "e0"),
                                              ch.const(np.array([2], np.int64), "a0")])], axis=3)
    path = ch.save(tmp_path, [3, 13, 9])
    check(path, (3, 13, 9), seed, n_neurons=10)


def test_a_scalar_gather_drops_its_axis(tmp_path):
    """x[..., 4] of a conv: the width axis is gone, the field is the kernel's around column 4."""
    ch = Chain(np.random.default_rng(6), 2)
    ch.conv(3, (3, 3), pads=[1, 1, 1, 1])
    ch.add("Gather", [ch.t, ch.const(np.array(4, np.int64), "col")], axis=3)
    path = ch.save(tmp_path, [2, 7, 8])
    check(path, (2, 7, 8), 6)


@pytest.mark.parametrize("seed", [0, 7])
def test_channel_shuffles_unsqueezes_and_flattens(tmp_path, seed):
    """A channel shuffle (Reshape, Transpose, Reshape) keeps the spatial spans and moves the
    channels; a grouped conv after it reads two shuffled channels; a column taken by a scalar
    Gather and unsqueezed again; the flattened output's elements each read their own field."""
    ch = Chain(np.random.default_rng(seed), 2)
    trunk = ch.conv(6, (3, 3), strides=[2, 1])
    ch.add("Reshape", [trunk, ch.const(np.array([0, 2, 3, 5, 7], np.int64), "s5")])
    ch.add("Transpose", perm=[0, 2, 1, 3, 4])
    ch.add("Reshape", [ch.t, ch.const(np.array([0, 6, 5, 7], np.int64), "s4")])
    ch.conv(3, (1, 2), group=3)
    ch.add("Gather", [ch.t, ch.const(np.array(1, np.int64), "col")], axis=3)
    ch.add("Unsqueeze", [ch.t, ch.const(np.array([2], np.int64), "uax")])
    ch.conv(3, (1, 2), c_in=3)
    ch.add("Flatten")
    path = ch.save(tmp_path, [2, 11, 9])
    check(path, (2, 11, 9), seed, n_neurons=8)
