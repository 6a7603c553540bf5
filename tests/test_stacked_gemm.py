"""Stacked float32 products on onnxruntime's MLAS (``runtime.stacked_gemm``), through
``ThreadControl.matmul`` as the Winograd layers call it: float64 NumPy is the reference,
and whatever MLAS cannot take as it is (float64, strided, broadcast) goes to numpy."""

from __future__ import annotations

import numpy as np
import pytest

from lrpath_onnx import threads
from lrpath_onnx.backend import CpuBackend
from lrpath_onnx.kernels import conv as K
from lrpath_onnx.runtime.stacked_gemm import StackedGemm

SHAPES = [(16, 5, 7, 3), (36, 64, 64, 113), (1, 1, 1, 1), (3, 17, 1, 29), (2, 33, 65, 1)]


@pytest.fixture
def control():
    c = threads.ThreadControl(workers=3)
    yield c
    c.pool.shutdown()


def _spy(control, monkeypatch) -> list:
    calls = []
    run = StackedGemm.__call__
    monkeypatch.setattr(StackedGemm, "__call__", lambda self, *a: calls.append(a[0].shape) or run(self, *a))
    return calls


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", SHAPES)
def test_float32_stacks_run_on_mlas_and_match_float64(shape, seed, control, monkeypatch):
    s, m, k, n = shape
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((s, m, k)), rng.standard_normal((s, k, n))
    want = np.matmul(a, b)
    calls = _spy(control, monkeypatch)
    out = np.full((s, m, n), np.nan, np.float32)
    with control.blas_single():
        got = control.matmul(a.astype(np.float32), b.astype(np.float32), out)
    assert got is out and calls == [(s, m, k)]
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5 * np.sqrt(k))


def test_what_mlas_cannot_bind_goes_to_numpy(control, monkeypatch):
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((4, 6, 5)), rng.standard_normal((4, 5, 7))
    calls = _spy(control, monkeypatch)
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    cases = [(a, b, np.empty((4, 6, 7))),  # float64: a float64 pass keeps its precision
             (a32[:, :, ::-1].copy()[:, :, ::-1], b32, np.empty((4, 6, 7), np.float32)),  # strided
             (np.broadcast_to(a32[0], (4, 6, 5)), b32, np.empty((4, 6, 7), np.float32)),  # broadcast
             (a32, b32, np.empty((4, 7, 6), np.float32).transpose(0, 2, 1)),  # a transposed output
             (np.ascontiguousarray(a32.transpose(0, 2, 1)).transpose(0, 2, 1), b32,  # a transposed a
              np.empty((4, 6, 7), np.float32)),
             (a32, b32[:, :, :0], np.empty((4, 6, 0), np.float32))]  # nothing to bind
    for x, y, out in cases:
        control.matmul(x, y, out)
        np.testing.assert_allclose(out, np.matmul(np.asarray(x, np.float64), y), rtol=1e-5, atol=1e-5)
    read_only = np.empty((4, 6, 7), np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):  # numpy refuses it; MLAS would write through
        control.matmul(a32, b32, read_only)
    assert calls == []
    no_mlas = threads.ThreadControl(workers=2, mlas=False)
    try:
        assert no_mlas.stacked_gemm is None
        out = np.empty((4, 6, 7), np.float32)
        no_mlas.matmul(a.astype(np.float32), b.astype(np.float32), out)
        assert calls == []
        np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-5)
    finally:
        no_mlas.pool.shutdown()


@pytest.mark.parametrize("seed", [0, 1])
def test_winograd_layers_take_their_products_from_mlas(seed, control, monkeypatch):
    """A stride-1 3x3 convolution and its transpose (both Winograd forms) through the
    backend: the tap stacks go to MLAS (but F(2x2, 3x3)'s transposed one, which reads the
    forward's kernel transposed), and the result is float64's within float32."""
    from tests.test_kernels_cpu import _ref_conv

    rng = np.random.default_rng(seed)
    calls = _spy(control, monkeypatch)
    be = CpuBackend(control)
    for size in (9, 18):  # F(2x2, 3x3) on small maps, F(4x4, 3x3) from 16
        x = rng.standard_normal((2, 6, size, size + 3))
        wt = rng.standard_normal((5, 6, 3, 3))
        g = K.ConvGeometry((1, 1), (1, 1, 1, 1))
        want, M = _ref_conv(x, wt, g)
        s = rng.standard_normal(want.shape)
        want_t = np.stack([(M @ si.reshape(-1)).reshape(x.shape[1:]) for si in s])
        with control.blas_single():
            np.testing.assert_allclose(be.conv2d(x.astype(np.float32), wt.astype(np.float32), g), want,
                                       rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(be.conv2d_transpose(s.astype(np.float32), wt.astype(np.float32), g,
                                                           x.shape[2:]), want_t, rtol=1e-4, atol=1e-4)
    assert sorted(c[0] for c in calls) == [16, 36, 36]
