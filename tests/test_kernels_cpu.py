"""CPU kernels against plain float64 NumPy (odd shapes, strides, pads, dilations, groups)."""

from __future__ import annotations

import numpy as np
import pytest

from lrpath_onnx.backend import CpuBackend
from lrpath_onnx.kernels import conv as K
from lrpath_onnx.kernels import winograd as W
from lrpath_onnx.kernels import winograd4 as W4
from lrpath_onnx.kernels.elementwise import multiply, sample_sums, stabilised_divide
from lrpath_onnx.kernels.pooling import unpool
from tests import models
from tests import reference as ref

SEEDS = [0, 1, 2]
GEOMS = {
    "s1p1": ((1, 1), (1, 1, 1, 1), (1, 1), 1),
    "s2p0": ((2, 2), (0, 0, 0, 0), (1, 1), 1),
    "s2x1_asym": ((2, 1), (1, 0, 2, 1), (1, 1), 1),
    "dil2": ((1, 1), (2, 2, 2, 2), (2, 2), 1),
    "dil2_s2": ((2, 2), (1, 2, 0, 1), (2, 1), 1),
    "groups3": ((1, 1), (1, 1, 1, 1), (1, 1), 3),
    "depthwise_s2": ((2, 2), (1, 1, 1, 1), (1, 1), 6),
    "depthwise_s1_dil": ((1, 1), (2, 1, 1, 0), (2, 1), 6),  # contiguous runs, asymmetric pads
    "groups2_wide": ((1, 2), (0, 1, 1, 0), (1, 1), 2),
}


def _case(rng, name, n=2, h=9, w=7):
    strides, pads, dil, groups = GEOMS[name]
    C = 32 if name == "groups2_wide" else 6
    Kc = 6 if name.startswith("depthwise") else 12
    x = rng.standard_normal((n, C, h, w))
    wt = rng.standard_normal((Kc, C // groups, 3, 3))
    return x, wt, K.ConvGeometry(strides, pads, dil, groups)


def _ref_conv(x, wt, g):
    M, _, out = ref.conv_matrix(wt, x.shape[1:], g.strides, g.pads, g.dilations, g.groups)
    return np.stack([xi.reshape(-1) @ M for xi in x]).reshape((len(x),) + out), M


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(GEOMS))
def test_conv_products_split_over_threads_match_unrolled_matrix(name, seed, monkeypatch):
    """im2col's products with their columns split over the backend's threads (every one
    split, odd widths): forward, transposed and transposed × mul equal float64 NumPy."""
    from lrpath_onnx import threads

    monkeypatch.setattr(threads, "SPLIT_GEMM_ELEMENTS", 1)
    rng = np.random.default_rng(seed)
    x, wt, g = _case(rng, name)
    want, M = _ref_conv(x, wt, g)
    s, mul = rng.standard_normal(want.shape), rng.standard_normal(x.shape)
    want_t = np.stack([(M @ si.reshape(-1)).reshape(x.shape[1:]) for si in s])
    control = threads.ThreadControl(workers=3)
    be = CpuBackend(control, exact=True)
    try:
        with control.blas_single():  # as the backward pass runs it
            np.testing.assert_allclose(be.conv2d(x, wt, g), want, rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(be.conv2d_transpose(s, wt, g, x.shape[2:]), want_t, rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(be.conv2d_transpose(s, wt, g, x.shape[2:], mul), want_t * mul,
                                       rtol=1e-10, atol=1e-10)
    finally:
        control.pool.shutdown()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(GEOMS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_conv_forward_and_transpose_match_unrolled_matrix(name, seed, dtype):
    rng = np.random.default_rng(seed)
    x, wt, g = _case(rng, name)
    want, M = _ref_conv(x, wt, g)
    be = CpuBackend()
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-4)
    for exact in (False, True):
        got = be.conv2d(x.astype(dtype), wt.astype(dtype), g, exact=exact)
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, **tol)
    s = rng.standard_normal(want.shape)
    mul = rng.standard_normal(x.shape)
    want_t = np.stack([(M @ si.reshape(-1)).reshape(x.shape[1:]) for si in s])
    for exact in (False, True):
        got_t = be.conv2d_transpose(s.astype(dtype), wt.astype(dtype), g, x.shape[2:], exact=exact)
        np.testing.assert_allclose(got_t, want_t, **tol)
        got_m = be.conv2d_transpose(s.astype(dtype), wt.astype(dtype), g, x.shape[2:], mul.astype(dtype), exact=exact)
        np.testing.assert_allclose(got_m, want_t * mul, **tol)


DIRECT = {  # kernel, strides, pads (t, l, b, r), dilations, groups, (H, W): through the direct loops
    **{name: (3, *GEOMS[name][:3], 6 if GEOMS[name][3] == 1 else GEOMS[name][3], (9, 7)) for name in GEOMS},
    "5x5_s2_7x7": (5, (2, 2), (1, 1, 2, 2), (1, 1), 6, (7, 7)),  # efficientnet's strided 5x5
    "5x5_s1_tiny": (5, (1, 1), (2, 2, 2, 2), (1, 1), 6, (3, 2)),  # taps reaching past both edges
    "3x3_s3_dil2": (3, (3, 2), (0, 2, 1, 0), (2, 2), 3, (11, 10)),
    "1x7_s1": ((1, 7), (1, 1), (0, 3, 0, 3), (1, 1), 6, (4, 9)),
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(DIRECT))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_direct_loops_match_unrolled_matrix(name, seed, dtype, monkeypatch):
    """Grouped convolutions too narrow for BLAS run plane by plane over padded phase planes
    (every geometry forced there here: strides up to 3, dilations, asymmetric pads, 5x5 and 1x7
    kernels, maps smaller than the kernel); forward, transposed and transposed × mul equal
    float64 NumPy, and z⁺'s zero weights leave exact zeros."""
    monkeypatch.setattr(K, "GEMM_MIN_CHANNELS", 10 ** 6)
    k, strides, pads, dil, groups, (h, w) = DIRECT[name]
    kh, kw = (k, k) if isinstance(k, int) else k
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 6, h, w))
    wt = rng.standard_normal((9 if groups == 3 else 6, 6 // groups, kh, kw))
    g = K.ConvGeometry(strides, pads, dil, groups)
    want, M = _ref_conv(x, wt, g)
    s, mul = rng.standard_normal(want.shape), rng.standard_normal(x.shape)
    want_t = np.stack([(M @ si.reshape(-1)).reshape(x.shape[1:]) for si in s])
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-5)
    got = K.conv2d(x.astype(dtype), wt.astype(dtype), g, out_hw=want.shape[2:])
    assert got.dtype == dtype
    np.testing.assert_allclose(got, want, **tol)
    np.testing.assert_allclose(K.conv2d_transpose(s.astype(dtype), wt.astype(dtype), g, (h, w)), want_t, **tol)
    np.testing.assert_allclose(K.conv2d_transpose(s.astype(dtype), wt.astype(dtype), g, (h, w), mul.astype(dtype)),
                               want_t * mul, **tol)
    pos = np.maximum(wt, 0).astype(dtype)  # z⁺: an input no positive weight reaches gets exactly 0
    got_t = K.conv2d_transpose(np.abs(s).astype(dtype), pos, g, (h, w))
    reach = np.stack([(np.maximum(M, 0) @ np.abs(si).reshape(-1)).reshape(x.shape[1:]) for si in s])
    assert np.array_equal(got_t == 0, reach == 0)


POINTWISE = {  # (strides, pads): the first is read straight from the maps, the others unfold
    "s1p0": ((1, 1), (0, 0, 0, 0)),
    "s2p0": ((2, 2), (0, 0, 0, 0)),
    "s1p1": ((1, 1), (1, 0, 0, 1)),
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(POINTWISE))
@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_1x1_convolutions_match_unrolled_matrix(name, n, dtype, seed, monkeypatch):
    """1x1 layers (efficientnet's expand and project convolutions): the unpadded stride-1
    ones skip im2col (one product per sample, a batch's stacked over three threads), the
    others unfold as before; forward, transposed and transposed × mul equal float64 NumPy."""
    from lrpath_onnx import threads

    strides, pads = POINTWISE[name]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 17, 9, 13))
    wt = rng.standard_normal((23, 17, 1, 1))
    g = K.ConvGeometry(strides, pads)
    want, M = _ref_conv(x, wt, g)
    s, mul = rng.standard_normal(want.shape), rng.standard_normal(x.shape)
    want_t = np.stack([(M @ si.reshape(-1)).reshape(x.shape[1:]) for si in s])
    if name == "s1p0":
        monkeypatch.setattr(K, "im2col", lambda *a: pytest.fail("a 1x1 stride-1 layer was unfolded"))
    control = threads.ThreadControl(workers=3)
    be = CpuBackend(control)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-4)
    try:
        with control.blas_single():
            got = be.conv2d(x.astype(dtype), wt.astype(dtype), g)
            assert got.dtype == dtype
            np.testing.assert_allclose(got, want, **tol)
            np.testing.assert_allclose(be.conv2d_transpose(s.astype(dtype), wt.astype(dtype), g, x.shape[2:]),
                                       want_t, **tol)
            np.testing.assert_allclose(be.conv2d_transpose(s.astype(dtype), wt.astype(dtype), g, x.shape[2:],
                                                           mul.astype(dtype)), want_t * mul, **tol)
    finally:
        control.pool.shutdown()


@pytest.mark.parametrize("seed", SEEDS)
def test_direct_and_gemm_paths_agree(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    x, wt, g = _case(rng, "s2x1_asym")
    gemm = K.conv2d(x, wt, g)
    monkeypatch.setattr(K, "GEMM_MIN_CHANNELS", 10 ** 6)
    g2 = K.ConvGeometry(g.strides, g.pads, g.dilations, 2)  # grouped → direct loops
    wt2 = np.concatenate([wt[:, :3], wt[:, 3:]], axis=0)
    np.testing.assert_allclose(K.conv2d(x, wt2, g2), _ref_conv(x, wt2, g2)[0], rtol=1e-10, atol=1e-10)
    monkeypatch.setattr(K, "TILE_ELEMENTS", 50)  # tiny tiles: many bands per sample
    np.testing.assert_allclose(K.conv2d(x, wt, g), gemm, rtol=1e-12, atol=1e-12)


def _winograd_case(seed, pads, h, w):
    """A stride-1 3x3 case: its input, kernel, bias, geometry, output size, the float64
    reference output with the bias, and a multiplier."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 4, h, w))
    wt = rng.standard_normal((5, 4, 3, 3))
    b = rng.standard_normal(5)
    g = K.ConvGeometry((1, 1), pads)
    out_hw = g.out_size(h, w, 3, 3)
    want = _ref_conv(x, wt, g)[0] + b.reshape(1, -1, 1, 1)
    return rng, x, wt, b, g, out_hw, want, rng.standard_normal(want.shape)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("pads,h,w", [((1, 1, 1, 1), 9, 8), ((0, 0, 0, 0), 7, 6), ((2, 1, 0, 2), 5, 5),
                                      ((1, 1, 1, 1), 1, 1)])
def test_winograd_matches_direct_convolution(seed, pads, h, w):
    rng, x, wt, b, g, (oh, ow), want, mul = _winograd_case(seed, pads, h, w)
    got = W.conv3x3(x, W.transform_kernel(wt), pads, (oh, ow), b, mul)
    np.testing.assert_allclose(got, want * mul, rtol=1e-10, atol=1e-10)
    # the same transformed kernel computes the transpose (flipped, channel-swapped kernel)
    s = rng.standard_normal((3, 5, oh, ow))
    tpads = K.transpose_as_conv(g, 3, 3).pads
    got_t = W.conv3x3(s, W.transform_kernel(wt), tpads, (h, w), transposed=True)
    want_t = K.conv2d_transpose(s, wt, g, (h, w))
    np.testing.assert_allclose(got_t, want_t, rtol=1e-10, atol=1e-10)
    # tiny blocks: bands of tile rows and stacked samples give the same result
    monkey = W.BLOCK_ELEMENTS
    try:
        W.BLOCK_ELEMENTS = 16 * 5 * 2
        np.testing.assert_allclose(W.conv3x3(x, W.transform_kernel(wt), pads, (oh, ow), b, mul),
                                   want * mul, rtol=1e-10, atol=1e-10)
    finally:
        W.BLOCK_ELEMENTS = monkey


def test_winograd_only_for_stride1_3x3_ungrouped():
    assert W.applies(3, 3, (1, 1), (1, 1), 1)
    assert not W.applies(3, 3, (2, 2), (1, 1), 1)
    assert not W.applies(3, 3, (1, 1), (2, 2), 1)
    assert not W.applies(3, 3, (1, 1), (1, 1), 2)
    assert not W.applies(5, 5, (1, 1), (1, 1), 1)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("pads,h,w", [((1, 1, 1, 1), 9, 8), ((0, 0, 0, 0), 7, 6), ((2, 1, 0, 2), 5, 5),
                                      ((1, 1, 1, 1), 1, 1), ((1, 1, 1, 1), 17, 13), ((0, 2, 1, 0), 10, 11)])
def test_winograd4_matches_direct_convolution(seed, pads, h, w):
    """F(4x4, 3x3) in float64: bias, multiplier, the fused stabilised divide, the transpose
    through the flipped kernel, and blocks cut into bands of tile rows, all against the
    unrolled-matrix convolution."""
    rng, x, wt, b, g, (oh, ow), want, mul = _winograd_case(seed, pads, h, w)
    U = W4.transform_kernel(wt)
    np.testing.assert_allclose(W4.conv3x3(x, U, pads, (oh, ow), b, mul), want * mul, rtol=1e-10, atol=1e-10)
    # the stabilised divide fused into the loads: x / (z + eps·sign z), 0 where z = 0 and eps = 0
    z = rng.standard_normal(x.shape)
    z[0, 0, 0, 0] = 0.0
    x0 = x.copy()
    x0[0, 0, 0, 0] = 0.0
    for eps in (0.0, 0.25):
        den = z + eps * np.where(z >= 0, 1.0, -1.0)
        ratio_x = np.divide(x0, den, out=np.zeros_like(x0), where=den != 0)
        got = W4.conv3x3(x0, U, pads, (oh, ow), ratio=(z, eps))
        np.testing.assert_allclose(got, _ref_conv(ratio_x, wt, g)[0], rtol=1e-10, atol=1e-10)
    # the transpose: a convolution with the flipped, channel-swapped kernel
    s = rng.standard_normal((3, 5, oh, ow))
    tpads = K.transpose_as_conv(g, 3, 3).pads
    got_t = W4.conv3x3(s, W4.transform_kernel(K.flip_kernel(wt, 1)), tpads, (h, w), None, x)
    np.testing.assert_allclose(got_t, K.conv2d_transpose(s, wt, g, (h, w)) * x, rtol=1e-10, atol=1e-10)
    keep = W4.BLOCK_ELEMENTS
    try:
        for size in (36 * 5 * 2, 36 * 5 * 3 * 3 * 2 + 1):
            W4.BLOCK_ELEMENTS = size
            np.testing.assert_allclose(W4.conv3x3(x, U, pads, (oh, ow), b, mul), want * mul, rtol=1e-10, atol=1e-10)
    finally:
        W4.BLOCK_ELEMENTS = keep


@pytest.mark.parametrize("seed", SEEDS)
def test_winograd4_float32_rounding_stays_small(seed):
    """float32 through F(4x4, 3x3) on a VGG-sized block: relative L2 error ≤ 2e-5 of the float64 result."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 64, 24, 21))
    wt = rng.standard_normal((64, 64, 3, 3)) / 24
    g = K.ConvGeometry((1, 1), (1, 1, 1, 1))
    want = K.conv2d(x, wt, g)
    got = W4.conv3x3(x.astype(np.float32), W4.transform_kernel(wt.astype(np.float32)), g.pads, (24, 21))
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 2e-5


def test_winograd4_only_where_it_pays():
    assert W4.applies(3, 3, (1, 1), (1, 1), 1, 256, 256, (56, 56))
    assert not W4.applies(3, 3, (1, 1), (1, 1), 1, 512, 256, (28, 28))  # kernel memory: K·C > 65536
    assert not W4.applies(3, 3, (1, 1), (1, 1), 1, 64, 64, (14, 20))   # small maps: padded tiles
    assert not W4.applies(3, 3, (2, 2), (1, 1), 1, 64, 64, (56, 56))
    assert not W4.applies(3, 3, (1, 1), (2, 2), 1, 64, 64, (56, 56))
    assert not W4.applies(3, 3, (1, 1), (1, 1), 2, 64, 64, (56, 56))
    assert not W4.applies(5, 5, (1, 1), (1, 1), 1, 64, 64, (56, 56))


@pytest.mark.parametrize("seed", SEEDS)
def test_backend_uses_winograd4_for_large_maps_unless_exact(seed):
    """Through the backend: a 20x18 map takes F(4x4, 3x3) in both directions (the transpose
    with its fused ratio) unless exact zeros are asked for; all match the float64 reference."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 6, 20, 18))
    wt = rng.standard_normal((7, 6, 3, 3))
    g = K.ConvGeometry((1, 1), (1, 1, 1, 1))
    want, M = _ref_conv(x, wt, g)
    be = CpuBackend()
    np.testing.assert_allclose(be.conv2d(x, wt, g), want, rtol=1e-10, atol=1e-10)
    assert {key[1] for key in be._derived} == {"winograd4"}
    s = rng.standard_normal(want.shape)
    z = rng.standard_normal(want.shape)
    want_t = np.stack([(M @ (si / (zi + 0.1 * np.where(zi >= 0, 1, -1))).reshape(-1)).reshape(x.shape[1:])
                       for si, zi in zip(s, z)])
    got = be.conv2d_transpose(s, wt, g, x.shape[2:], x, ratio=(z, 0.1))
    np.testing.assert_allclose(got, want_t * x, rtol=1e-10, atol=1e-10)
    assert {key[1] for key in be._derived} == {"winograd4", "winograd4-transposed"}
    # exact: im2col + GEMM in both directions, no transformed kernel
    be = CpuBackend()
    np.testing.assert_allclose(be.conv2d(x, wt, g, exact=True), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(be.conv2d_transpose(s, wt, g, x.shape[2:], exact=True),
                               np.stack([(M @ si.reshape(-1)).reshape(x.shape[1:]) for si in s]), rtol=1e-12, atol=1e-12)
    assert not any("winograd" in key[1] for key in be._derived)


@pytest.mark.parametrize("seed", SEEDS)
def test_transpose_is_the_adjoint(seed):
    rng = np.random.default_rng(seed)
    for name in GEOMS:
        x, wt, g = _case(rng, name, h=8, w=11)
        y = K.conv2d(x, wt, g)
        s = rng.standard_normal(y.shape)
        lhs = np.sum(y * s)
        rhs = np.sum(x * K.conv2d_transpose(s, wt, g, x.shape[2:]))
        assert lhs == pytest.approx(rhs, rel=1e-10)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_add_product_equals_numpy_bit_for_bit(seed, dtype):
    """``add_product`` (a rule's terms summed in place) gives numpy's ``out + mul * x * coef``
    exactly, with ``x`` a channel slice of a larger array (one part's share of a stacked
    product), conv-shaped and dense-shaped."""
    from lrpath_onnx.kernels.elementwise import add_product

    rng = np.random.default_rng(seed)
    for shape in ((3, 5, 7, 6), (4, 9)):
        stacked = rng.standard_normal((shape[0], 2 * shape[1]) + shape[2:]).astype(dtype)
        x = np.split(stacked, 2, axis=1)[1]
        assert not x.flags.c_contiguous
        mul, out = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
        for coef in (1.0, 2.0, -0.5):
            want = out + mul * x * dtype(coef) if coef != 1.0 else out + mul * x
            got = add_product(out.copy(), mul, x, coef)
            assert got.dtype == dtype
            np.testing.assert_array_equal(got, want)
            first = add_product(np.full(shape, np.nan, dtype), mul, x, coef, first=True)
            np.testing.assert_array_equal(first, mul * x * dtype(coef) if coef != 1.0 else mul * x)
    with pytest.raises(ValueError, match="contiguous"):
        add_product(np.zeros((3, 4, 5)).transpose(0, 2, 1), np.ones((3, 5, 4)), np.ones((3, 5, 4)))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gated_any_says_whether_the_gate_keeps_anything(seed, dtype):
    """``gated_any`` answers ``gate_by_sign(...).any()`` without writing the gated array: each
    mode, with one kept element or none (a zero relevance where the gate is open is nothing)."""
    from lrpath_onnx.kernels.elementwise import gate_by_sign, gated_any

    rng = np.random.default_rng(seed)
    r = rng.standard_normal((2, 3, 17, 9)).astype(dtype)
    z = np.round(rng.standard_normal(r.shape)).astype(dtype)  # many exact zeros
    for mode, keep in (("pos", z > 0), ("neg", z < 0), ("nonpos", z <= 0), ("zero", z == 0)):
        assert gated_any(r, z, mode) == bool(gate_by_sign(r, z, mode).any()) is True
        alone = np.zeros_like(r)
        i = rng.choice(np.flatnonzero(keep))
        alone.flat[i] = r.flat[i]
        assert gated_any(alone, z, mode)
        alone.flat[i] = 0.0
        assert not gated_any(alone, z, mode)
        assert not gated_any(np.where(keep, 0, r).astype(dtype), z, mode)


def _gamma_signals_reference(r, z, p, cb, bp, bn, gamma, eps, neg_mode):
    """float64 NumPy: each group's gated relevance over its stabilised denominator."""
    r, z, p = (np.asarray(v, np.float64) for v in (r, z, p))
    shape = (1, -1) + (1,) * (r.ndim - 2)
    cb, bp, bn = (np.asarray(v, np.float64).reshape(shape) for v in (cb, bp, bn))
    den_p = z + gamma * (p + bp)
    den_n = z + gamma * ((z - cb - p) + bn)
    rp = np.where(z > 0, r, 0.0)
    rn = np.where((z <= 0) if neg_mode == "nonpos" else (z < 0), r, 0.0)
    lost = np.where(den_p == 0, rp, 0.0) + np.where(den_n == 0, rn, 0.0)
    return ref._div(rp, den_p, eps), ref._div(rn, den_n, eps), lost


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", [(2, 5, 7, 3), (3, 6), (1, 4, 11)])
@pytest.mark.parametrize("neg_mode", ["neg", "nonpos"])
@pytest.mark.parametrize("bias", [False, True])
def test_gamma_signals_match_float64(seed, shape, neg_mode, bias):
    """LRP-γ's two signals from one product equal the float64 reference, exact zeros included:
    outputs with z = 0 (in the negative group only when ``nonpos``), and denominators of
    exactly 0 (where z = 0 and nothing contributes: counted as lost, returned by ``gamma_lost``)."""
    from lrpath_onnx.kernels.elementwise import gamma_lost, gamma_signals

    rng = np.random.default_rng(seed)
    k = shape[1]
    r = rng.standard_normal(shape).astype(np.float32)
    z = rng.standard_normal(shape).astype(np.float32)
    p = np.abs(rng.standard_normal(shape)).astype(np.float32)
    cb = (rng.standard_normal(k) if bias else np.zeros(k)).astype(np.float32)
    if bias:
        cb[-1] = -1.0  # b ≤ 0: the negative denominator at z = 0 without contributions is γ(b⁻ − b) = 0
    bp, bn = np.maximum(cb, 0), np.minimum(cb, 0)
    flat_z, flat_p, flat_r = z.reshape(shape[0], k, -1), p.reshape(shape[0], k, -1), r.reshape(shape[0], k, -1)
    flat_z[:, -1, 0], flat_p[:, -1, 0] = 0.0, 0.0  # z = 0 and no contributions: a denominator of exactly 0
    flat_r[:, -1, 0] = 1.0
    if flat_z.shape[2] > 1:
        flat_z[:, -1, -1] = 0.0  # z = 0 with contributions
        flat_r[0, 0, -1] = 0.0  # an output without relevance
    gamma, eps = 0.25, 1e-6
    sp, sn, lost_p, lost_n, live_n = gamma_signals(r, z, p, cb, bp, bn, gamma, eps, neg_mode)
    want_p, want_n, want_lost = _gamma_signals_reference(r, z, p, cb, bp, bn, gamma, eps, neg_mode)
    np.testing.assert_allclose(sp, want_p, rtol=2e-6, atol=0)
    np.testing.assert_allclose(sn, want_n, rtol=2e-6, atol=0)
    assert sp.dtype == sn.dtype == np.float32 and sp.shape == sn.shape == shape
    assert not np.any((sp != 0) & (sn != 0))  # each output in one group at most
    rn = np.where((z <= 0) if neg_mode == "nonpos" else (z < 0), r, 0)
    assert live_n == int(np.count_nonzero(rn))
    assert (lost_p, lost_n) == (int(np.count_nonzero(np.where(z > 0, want_lost, 0))),
                                int(np.count_nonzero(np.where(z > 0, 0, want_lost))))
    assert (lost_p, lost_n) == (0, shape[0] if neg_mode == "nonpos" else 0)  # only at z = 0 without contributions
    np.testing.assert_array_equal(gamma_lost(r, z, p, cb, bp, bn, gamma, neg_mode), want_lost.astype(np.float32))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("eps", [0.0, 1e-3, 0.5])
def test_stabilised_divide(seed, eps):
    rng = np.random.default_rng(seed)
    r = rng.standard_normal((3, 5, 7))
    z = rng.standard_normal((3, 5, 7))
    z[0, 0, :3] = 0.0
    want = ref._div(r, z, eps)
    np.testing.assert_allclose(stabilised_divide(r, z, eps), want, rtol=1e-14)
    assert np.all(stabilised_divide(r, z, eps)[0, 0, :3] == (0.0 if eps == 0 else r[0, 0, :3] / eps))
    assert np.isfinite(stabilised_divide(r, np.zeros_like(z), 0.0)).all()
    into = z.copy()  # written in place of its own denominator (z^B's summed terms)
    assert stabilised_divide(r, into, eps, out=into) is into
    np.testing.assert_allclose(into, want, rtol=1e-14)
    with pytest.raises(ValueError, match="contiguous"):
        stabilised_divide(r, z, eps, out=np.empty((3, 7, 5)))


@pytest.mark.parametrize("seed", SEEDS)
def test_multiply_and_sample_sums(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((4, 3, 5, 6)), rng.standard_normal((4, 3, 5, 6))
    np.testing.assert_array_equal(multiply(a, b), a * b)
    np.testing.assert_allclose(sample_sums(a), a.reshape(4, -1).sum(1), rtol=1e-12)
    a[2, 1, 1, 1] = np.nan
    assert not np.isfinite(sample_sums(a)[2]) and np.isfinite(sample_sums(a)[[0, 1, 3]]).all()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("parts", [2, 3])
def test_sample_sums_in_parts_match_float64(seed, parts):
    """Rows summed in parts on numba's threads, adds reassociated (odd widths, float32 in,
    float64 out): the float64 totals of the plain sum, and a NaN or inf still makes only its
    sample's total non-finite, whichever part holds it."""
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((3, 7, 13, 11)) * 10 ** rng.uniform(-3, 3, (3, 7, 13, 11))).astype(np.float32)
    want = a.astype(np.float64).reshape(3, -1).sum(1)
    part = a[0].size // parts  # rows of 1001 elements in `parts` parts, the last one shorter
    got = sample_sums(a, part)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-9)
    assert got.dtype == np.float64
    a[1, 6, 12, 10], a[2, 0, 0, 0] = np.inf, np.nan  # in the last part and in the first
    got = sample_sums(a, part)
    assert np.isposinf(got[1]) and np.isnan(got[2]) and np.isfinite(got[0])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n, i, o", [(1, 7, 5), (3, 131, 64), (8, 1001, 33)])
def test_dense_transpose_split_over_threads_matches_reference(seed, dtype, n, i, o, monkeypatch):
    """``s · wᵀ (⊙ mul)`` with wᵀ's columns split over the backend's threads (odd splits
    included) equals float64 NumPy."""
    from lrpath_onnx import threads

    monkeypatch.setattr(threads, "SPLIT_ELEMENTS", 1)
    rng = np.random.default_rng(seed)
    s, w, mul = rng.standard_normal((n, o)), rng.standard_normal((i, o)), rng.standard_normal((n, i))
    control = threads.ThreadControl(workers=2)
    be = CpuBackend(control)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-4)
    try:
        with control.blas_single():  # as the backward pass runs it
            for m in (None, mul):
                for layout in (np.ascontiguousarray, np.asfortranarray, lambda a: np.repeat(a, 2, axis=1)[:, ::2]):
                    wd = layout(w.astype(dtype))
                    got = be.dense_transpose(s.astype(dtype), wd, None if m is None else m.astype(dtype))
                    want = s @ w.T if m is None else (s @ w.T) * m
                    assert got.dtype == dtype and got.shape == (n, i)
                    np.testing.assert_allclose(got, want, **tol)
    finally:
        control.pool.shutdown()


@pytest.mark.parametrize("user", [None, "5"])
def test_numba_threads_spin_briefly_unless_the_user_chose(user):
    """Importing the package sets a short OpenMP spin before numba's threads sleep (and the
    passive wait policy), leaving a user's own setting alone (a fresh process each)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    if user:
        env["GOMP_SPINCOUNT"] = user
    code = "import os, lrpath_onnx; print(os.environ['GOMP_SPINCOUNT'], os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [user or "10000", "PASSIVE"]


@pytest.mark.parametrize("core", ["Haswell", "Sandybridge"])
def test_openblas_core_names_the_kernels_a_pinned_coretype_runs(core):
    """What ``bench`` reports of the BLAS: the kernel family OpenBLAS runs, which
    ``OPENBLAS_CORETYPE`` pins when set before numpy loads (a fresh process each)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OPENBLAS_CORETYPE": core}
    code = "from lrpath_onnx.threads import openblas_core; print(openblas_core())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == core


@pytest.mark.parametrize("chunk", [1, 9 * 5 * 3, 1 << 17])
@pytest.mark.parametrize("module", [W, W4], ids=["F2", "F4"])
def test_kernel_transform_in_chunks_is_g_w_gT(chunk, module, monkeypatch):
    """U[t·a + b, k, c] = (G w[k, c] Gᵀ)[a, b] whatever the chunk of output channels (one
    channel at a time, chunks that do not divide K, one chunk)."""
    monkeypatch.setattr(W, "TRANSFORM_CHUNK", chunk)
    w = np.random.default_rng(3).standard_normal((7, 5, 3, 3))
    u = module.transform_kernel(w)
    t = module.G.shape[0]
    for k in range(7):
        for c in range(5):
            np.testing.assert_allclose(u[:, k, c].reshape(t, t), module.G @ w[k, c] @ module.G.T, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("seed", SEEDS)
def test_unpool_scatters_to_switches_and_adds_ties(seed):
    rng = np.random.default_rng(seed)
    N, C, H, Wd = 2, 3, 5, 4
    values = rng.standard_normal((N, C, 3, 3))
    ys, xs = rng.integers(0, H, values.shape), rng.integers(0, Wd, values.shape)
    ys[..., 1, 1], xs[..., 1, 1] = ys[..., 0, 0], xs[..., 0, 0]  # overlapping windows pick the same input
    n, c = np.meshgrid(np.arange(N), np.arange(C), indexing="ij")
    idx = ((n[..., None, None] * C + c[..., None, None]) * H + ys) * Wd + xs
    want = np.zeros((N, C, H, Wd))
    for (a, b, i, j), v in np.ndenumerate(values):
        want[a, b, ys[a, b, i, j], xs[a, b, i, j]] += v
    np.testing.assert_allclose(unpool(values, idx, (N, C, H, Wd)), want, rtol=1e-14)


POOLS = {  # kernel, strides, pads (top, left, bottom, right), dilations, ceil_mode
    "k2s2": ((2, 2), (2, 2), (0, 0, 0, 0), (1, 1), 0),
    "k2s2_ceil_odd": ((2, 2), (2, 2), (0, 0, 0, 0), (1, 1), 1),
    "k2s1": ((2, 2), (1, 1), (0, 0, 0, 0), (1, 1), 0),
    "k2s3_pad": ((2, 2), (3, 3), (1, 1, 1, 1), (1, 1), 0),
    "k3s2p1": ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 0),
    "k3s1p1": ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 0),
    "k3s3_ceil": ((3, 3), (3, 3), (0, 0, 0, 0), (1, 1), 1),
    "k3x2_asym": ((3, 2), (1, 2), (2, 0, 1, 1), (1, 1), 0),
    "k2_dil2": ((2, 2), (1, 1), (1, 1, 1, 1), (2, 2), 0),
    "k3_dil2_s2": ((3, 3), (2, 2), (2, 1, 2, 1), (2, 1), 1),
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("pool", list(POOLS))
def test_max_switches_equal_onnxruntime_indices(pool, dtype, seed):
    """The switches the analyzer computes after the run are onnxruntime's own ``Indices``:
    first maximum in row-major order, padding never wins, ties (ReLU zeros, repeated values)
    to the first, a plane of -inf or with NaN as onnxruntime leaves it; odd sizes, batch 3."""
    from lrpath_onnx.graph.layers import PoolWindow
    from lrpath_onnx.kernels.conv import ConvGeometry
    from lrpath_onnx.kernels.pooling import max_switches

    kernel, strides, pads, dil, ceil = POOLS[pool]
    rng = np.random.default_rng(seed)
    x = np.round(rng.standard_normal((3, 4, 11, 9)) * 2).astype(dtype)  # many ties
    x[0, 1] = np.maximum(x[0, 1], 0)  # a ReLU'd plane: ties at zero
    x[1, 2] = -np.inf
    x[2, 3, 4, 4] = np.nan
    x[2, 0, :3, :3] = np.finfo(dtype).min  # windows of only the lowest finite value
    y, want = models.maxpool_indices(x, kernel, strides, pads, dil, ceil)
    out_hw = PoolWindow(kernel, ConvGeometry(strides, pads, dil), bool(ceil)).out_size(11, 9)
    assert out_hw == y.shape[2:]
    got = max_switches(x, kernel, strides, pads, dil, out_hw)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)
    # a run in slices of the batch: each slice's indices still flat over the whole batch
    for first, stop in ((0, 1), (1, 3), (2, 3)):
        np.testing.assert_array_equal(max_switches(x[first:stop], kernel, strides, pads, dil, out_hw, first),
                                      want[first:stop])
