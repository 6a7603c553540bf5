"""The backward pass lets go of each forward tensor once its last reader is done.

Releasing must change nothing but memory: the relevance and every layer's flow are equal
bit for bit to a pass that keeps the whole forward (``keep_forward=True``), on plain,
residual, gated and attention networks, and at the end only the graph's input and output
are left.
"""

from __future__ import annotations

import numpy as np
import pytest

from lrpath_onnx import Analyzer
from lrpath_onnx.backward.propagate import last_readers, propagate
from lrpath_onnx.models import registry

ZOO = ["mnist-vgg", "mnist-resnet", "mnist-efficientnet", "mnist-vit"]


def _batch(an: Analyzer, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *an.input_shape[1:]), dtype=np.float32)


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("preset", ["auto", "epsilon-gamma-box", "epsilon-alpha2-beta1"])
def test_released_forward_leaves_relevance_and_flows_unchanged(name, preset):
    an = Analyzer(registry.get(name).path(), preset=preset)
    x = _batch(an, 3, seed=len(name))
    kept = an.explain(x, keep_forward=True)  # nothing released
    freed = an.explain(x)
    assert kept.forward is not None and freed.forward is None
    np.testing.assert_array_equal(freed.relevance, kept.relevance)
    assert [f.name for f in freed.flows] == [f.name for f in kept.flows]
    for a, b in zip(freed.flows, kept.flows):
        np.testing.assert_array_equal(a.relevance_in, b.relevance_in)
    assert np.abs(freed.relevance).sum() > 0


@pytest.mark.parametrize("name", ZOO)
def test_every_fetched_tensor_is_released_once_and_only_input_and_output_stay(name):
    an = Analyzer(registry.get(name).path())
    x = an.check_input(_batch(an, 1, seed=3))
    fwd = an.forward(x)
    fetched = set(fwd) | {an.graph.input}
    shapes = {k: tuple(v.shape) for k, v in fwd.items()}
    ctx, _ = an._context(x, fwd)
    start_tensor, start, _ = an._start(fwd, None, 1)
    after = last_readers(an.graph, an.plan())
    released = [t for names in after.values() for t in names]
    assert len(released) == len(set(released))
    assert an.graph.input not in released and an.graph.output not in released
    propagate(an.graph, an.plan(), ctx, start_tensor, start, release=after)
    assert set(ctx.fwd) == {an.graph.input, an.graph.output}
    assert set(ctx.released) == fetched - {an.graph.input, an.graph.output}
    for t, shape in ctx.released.items():
        assert ctx.shape_of(t) == shape == shapes[t]
