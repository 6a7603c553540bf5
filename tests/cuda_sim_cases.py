"""CUDA kernels in numba's simulator against the CPU kernels and float64 NumPy, small shapes.

Not collected by the main run (no ``test_`` prefix): ``test_kernels_cuda_sim.py`` runs this
file in a subprocess with ``NUMBA_ENABLE_CUDASIM=1`` (which must be set before numba is
imported) and checks how many cases passed. The simulator runs every GPU thread in Python,
so each case stays at a few thousand threads. On a machine with a GPU the same file runs
on the real device: ``python -m pytest tests/cuda_sim_cases.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests import cuda_target  # noqa: F401  (first: a GPU or the simulator)
from numba import cuda  # noqa: E402

from lrpath_onnx.kernels import conv as K  # noqa: E402
from lrpath_onnx.kernels import dense as D  # noqa: E402
from lrpath_onnx.kernels import elementwise as E  # noqa: E402
from lrpath_onnx.kernels import flow as F  # noqa: E402
from lrpath_onnx.kernels import pooling as P  # noqa: E402
from lrpath_onnx.kernels.cuda import conv as CC  # noqa: E402
from lrpath_onnx.kernels.cuda import dense as CD  # noqa: E402
from lrpath_onnx.kernels.cuda import elementwise as CE  # noqa: E402
from lrpath_onnx.kernels.cuda import flow as CF  # noqa: E402
from lrpath_onnx.kernels.cuda import gemm as CG  # noqa: E402
from lrpath_onnx.kernels.cuda import launch as CL  # noqa: E402
from lrpath_onnx.kernels.cuda import pooling as CP  # noqa: E402
from tests import reference as ref  # noqa: E402

DTYPES = [np.float64, np.float32]
SEEDS = [0, 1]
# name: strides, pads (t, l, b, r), dilations, groups, C, K, (H, W)
GEOMS = {
    "s1p1": ((1, 1), (1, 1, 1, 1), (1, 1), 1, 3, 4, (5, 6)),
    "s2x1_asym": ((2, 1), (1, 0, 2, 1), (1, 1), 1, 2, 3, (7, 5)),
    "dil2_s2": ((2, 2), (1, 2, 0, 1), (2, 1), 1, 3, 2, (7, 7)),
    "dil2_s1": ((1, 1), (2, 1, 2, 0), (2, 2), 1, 3, 4, (6, 7)),
    "groups2": ((1, 2), (0, 1, 1, 0), (1, 1), 2, 4, 4, (5, 7)),
    "depthwise_s2": ((2, 2), (1, 1, 1, 1), (1, 1), 4, 4, 4, (6, 5)),
}
# (mul, ratio) combinations, cycled over the GEMM-form cases (the gather form runs them all)
COMBOS = [(False, False), (True, False), (False, True), (True, True)]


def tol(dtype):
    return dict(rtol=1e-10, atol=1e-10) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-4)


def host(d):
    assert CL.is_device(d), type(d)
    return d.copy_to_host()


def _conv_case(name, seed, dtype, n=2):
    rng = np.random.default_rng(seed)
    strides, pads, dil, g, C, Kc, (H, W) = GEOMS[name]
    geom = K.ConvGeometry(strides, pads, dil, g)
    x = rng.standard_normal((n, C, H, W)).astype(dtype)
    w = rng.standard_normal((Kc, C // g, 3, 3)).astype(dtype)
    b = rng.standard_normal(Kc).astype(dtype)
    return rng, geom, x, w, b


def _denominator_case(rng, shape, dtype):
    """z with exact zeros and both signs, so every branch of the stabilised divide runs."""
    z = rng.standard_normal(shape)
    z.reshape(-1)[::5] = 0.0
    return z.astype(dtype)


# ----------------------------------------------------------------------------- convolution

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(GEOMS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_both_methods_match_cpu_and_reference(name, seed, dtype):
    rng, geom, x, w, b = _conv_case(name, seed, dtype)
    M, _, oshape = ref.conv_matrix(w, x.shape[1:], geom.strides, geom.pads, geom.dilations, geom.groups)
    exact = np.stack([xi.astype(np.float64).reshape(-1) @ M for xi in x]).reshape((len(x),) + oshape)
    bias = b if seed == 0 else None
    want = K.conv2d(x, w, geom, bias)
    if bias is not None:
        exact = exact + b.reshape(1, -1, 1, 1)
    for method in ("gemm", "direct"):
        got = host(CC.conv2d(x, cuda.to_device(w), geom, bias, method=method))
        assert got.dtype == dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, **tol(dtype))
        np.testing.assert_allclose(got, exact, **tol(dtype))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(GEOMS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_transpose_both_methods_match_cpu(name, seed, dtype):
    rng, geom, x, w, _ = _conv_case(name, seed, dtype)
    H, W = x.shape[2:]
    oshape = K.conv2d(x, w, geom).shape
    s = rng.standard_normal(oshape).astype(dtype)
    z = _denominator_case(rng, oshape, dtype)
    a = rng.standard_normal(x.shape).astype(dtype)
    eps = 0.0 if seed == 0 else 0.25
    M, _, _ = ref.conv_matrix(w, x.shape[1:], geom.strides, geom.pads, geom.dilations, geom.groups)
    combo_i = (list(GEOMS).index(name) + seed) % len(COMBOS)
    for method in ("gather", "gemm"):
        combos = COMBOS if method == "gather" else [COMBOS[combo_i]]
        for use_mul, use_ratio in combos:
            sig = E.stabilised_divide(s, z, eps) if use_ratio else s
            want = K.conv2d_transpose(sig, w, geom, (H, W), a if use_mul else None)
            exact = np.stack([M @ si.astype(np.float64).reshape(-1) for si in sig]).reshape(x.shape)
            if use_mul:
                exact = exact * a
            got = host(CC.conv2d_transpose(cuda.to_device(s), w, geom, (H, W), a if use_mul else None,
                                           (z, eps) if use_ratio else None, method=method))
            assert got.dtype == dtype and got.shape == x.shape
            np.testing.assert_allclose(got, want, **tol(dtype))
            np.testing.assert_allclose(got, exact, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_gemm_forms_in_sample_chunks_and_single_sample(dtype, monkeypatch):
    """N=3 in chunks of 2 (unstack, stack kernels, remainder chunk) and N=1 (GEMM writes in place)."""
    rng, geom, x, w, b = _conv_case("s2x1_asym", 3, dtype, n=3)
    R, (oh, ow) = w.shape[1] * 9, geom.out_size(x.shape[2], x.shape[3], 3, 3)
    monkeypatch.setattr(CC, "COLS_ELEMENTS", 2 * R * oh * ow)
    monkeypatch.setattr(CC, "MAX_GRID_Y", 4)  # im2col's block rows go grid-stride over the buffer's R rows
    ws = CL.DeviceWorkspace()
    for xs in (x, x[:1]):
        want = K.conv2d(xs, w, geom, b)
        out = cuda.device_array(want.shape, dtype)
        got = CC.conv2d(cuda.to_device(xs), w, geom, b, out=out, method="gemm", ws=ws)
        assert got is out
        np.testing.assert_allclose(host(got), want, **tol(dtype))
        s = rng.standard_normal(want.shape).astype(dtype)
        a = rng.standard_normal(xs.shape).astype(dtype)
        want_t = K.conv2d_transpose(s, w, geom, xs.shape[2:], a)
        got_t = CC.conv2d_transpose(s, w, geom, xs.shape[2:], a, method="gemm", ws=ws)
        np.testing.assert_allclose(host(got_t), want_t, **tol(dtype))


def test_conv_method_rules_and_dtype_follow_input():
    assert CC.forward_method(3, 1) == "gemm" and CC.forward_method(1, 8) == "direct"
    assert CC.forward_method(16, 4) == "gemm" and CC.forward_method(8, 2) == "direct"
    assert CC.transpose_method(64, 64, 1) == "gemm" and CC.transpose_method(3, 64, 1) == "gemm"
    assert CC.transpose_method(64, 8, 1) == "gather" and CC.transpose_method(1, 1, 32) == "gather"
    rng, geom, x, w, b = _conv_case("s1p1", 4, np.float32)
    got = CC.conv2d(x, w.astype(np.float64), geom, b.astype(np.float64))  # default rule: GEMM
    assert got.dtype == np.float32
    np.testing.assert_allclose(host(got), K.conv2d(x, w, geom, b), **tol(np.float32))
    with pytest.raises(ValueError):
        CC.conv2d(x, w[:, :2], geom)


# ----------------------------------------------------------------------------- GEMM and dense

GEMM_SHAPES = [  # M, K, N, trans_a, trans_b, split_k
    (70, 20, 9, False, False, None),
    (5, 37, 66, True, False, None),
    (7, 33, 13, True, True, 3),
    (3, 18, 5, False, True, 2),
]


@pytest.mark.parametrize("case", range(len(GEMM_SHAPES)))
@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_matches_numpy(case, dtype):
    M, Kd, N, ta, tb, split = GEMM_SHAPES[case]
    rng = np.random.default_rng(case)
    a = rng.standard_normal((Kd, M) if ta else (M, Kd)).astype(dtype)
    b = rng.standard_normal((N, Kd) if tb else (Kd, N)).astype(dtype)
    c0 = rng.standard_normal((M, N)).astype(dtype)
    bias = rng.standard_normal(M if case % 2 == 0 else N).astype(dtype)
    mul = rng.standard_normal((M, N)).astype(dtype)
    A = (a.T if ta else a).astype(np.float64)
    B = (b.T if tb else b).astype(np.float64)
    out = cuda.to_device(c0)
    got = CG.gemm(cuda.to_device(a), b, out, ta, tb, alpha=0.5, beta=-2.0, bias=bias, bias_axis=case % 2,
                  mul=mul, split_k=split)
    assert got is out
    want = (0.5 * A @ B + (bias[:, None] if case % 2 == 0 else bias[None, :])) * mul - 2.0 * c0
    np.testing.assert_allclose(host(got), want, **tol(dtype))
    plain = CG.gemm(a, b, None, ta, tb)
    np.testing.assert_allclose(host(plain), A @ B, **tol(dtype))


@pytest.mark.parametrize("tile,trans", [("large", (True, False)), ("mid", (False, True)), ("thin", (False, False)),
                                        ("thin", (True, True))])
def test_gemm_gpu_tiles_match_numpy(tile, trans):
    """The tiles the GPU uses (the simulator defaults to ``small``), one or two blocks each,
    K over three slices (the last one partial: double-buffered staging and its bounds)."""
    rng = np.random.default_rng(11)
    M, Kd, N = {"large": (100, 37, 70), "mid": (50, 37, 130), "thin": (5, 37, 130)}[tile]
    ta, tb = trans
    a = rng.standard_normal((Kd, M) if ta else (M, Kd)).astype(np.float32)
    b = rng.standard_normal((N, Kd) if tb else (Kd, N)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    got = CG.gemm(a, b, None, trans_a=ta, trans_b=tb, bias=bias, bias_axis=1, tile=tile)
    want = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b) + bias
    np.testing.assert_allclose(host(got), want, **tol(np.float32))


def test_gemm_reads_strided_views_and_splits_only_thin_long_products(monkeypatch):
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((9, 20)), rng.standard_normal((20, 22))
    got = CG.gemm(cuda.to_device(a), cuda.to_device(b)[:, ::2], None)  # a strided (non-contiguous) operand
    np.testing.assert_allclose(host(got), a @ b[:, ::2], rtol=1e-12, atol=1e-12)
    assert CG.choose_split(16, 4096, 25088, "thin") > 1 and CG.choose_split(512, 50176, 4608) == 1
    assert CG.choose_split(4, 4, 100) == 1
    assert CG.choose_tile(8) == ("small" if CG.config.ENABLE_CUDASIM else "thin")
    monkeypatch.setattr(CG.config, "ENABLE_CUDASIM", False)
    assert CG.choose_tile(8) == "thin" and CG.choose_tile(64) == "mid" and CG.choose_tile(65) == "large"
    # float64's large and mid shared tiles pass the 48 KiB a block may hold: thin takes them
    assert CG.choose_tile(65, np.float64) == "thin" and CG.choose_tile(64, np.float64) == "thin"
    assert all(CG.shared_bytes(t, np.float32) <= CG.SHARED_BYTES for t in CG.TILES)
    assert CG.shared_bytes("large", np.float64) > CG.SHARED_BYTES >= CG.shared_bytes("thin", np.float64)
    with pytest.raises(ValueError):
        CG.gemm(a, a, None)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_and_transpose_match_cpu(seed, dtype):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((2, 19)).astype(dtype)
    w = rng.standard_normal((19, 7)).astype(dtype)
    b = rng.standard_normal(7).astype(dtype) if seed == 0 else None
    np.testing.assert_allclose(host(CD.dense(a, w, b)), D.dense(a, w, b), **tol(dtype))
    s = rng.standard_normal((2, 7)).astype(dtype)
    m = rng.standard_normal((2, 19)).astype(dtype) if seed == 1 else None
    got = CD.dense_transpose(cuda.to_device(s), cuda.to_device(w), m)
    assert got.dtype == dtype
    np.testing.assert_allclose(host(got), D.dense_transpose(s, w, m), **tol(dtype))


# ----------------------------------------------------------------------------- element-wise

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_stabilised_divide_and_multiply_match_cpu(seed, dtype):
    rng = np.random.default_rng(seed)
    r = rng.standard_normal((2, 3, 5, 7)).astype(dtype)
    z = _denominator_case(rng, r.shape, dtype)
    for eps in (0.0, 0.1):
        got = host(CE.stabilised_divide(cuda.to_device(r), z, eps))
        want = E.stabilised_divide(r, z, eps)
        np.testing.assert_array_equal(got, want)  # same formula, same dtype: bit-identical
        assert got.dtype == dtype and np.all(got[z == 0] == (0.0 if eps == 0 else r[z == 0] / dtype(eps)))
    np.testing.assert_array_equal(host(CE.multiply(r, cuda.to_device(z))), E.multiply(r, z))
    for mode, keep in (("pos", z > 0), ("neg", z < 0), ("nonpos", z <= 0), ("zero", z == 0)):
        want = np.where(keep, r, 0).astype(dtype)
        np.testing.assert_array_equal(E.gate_by_sign(r, z, mode), want)
        np.testing.assert_array_equal(host(CE.gate_by_sign(cuda.to_device(r), z, mode)), want)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the simulator's numpy adds NaN and inf
@pytest.mark.parametrize("dtype", DTYPES)
def test_sample_sums_in_float64_with_non_finite_propagating(dtype, monkeypatch):
    monkeypatch.setattr(CE, "SUM_ITEMS_PER_THREAD", 1)  # two chunks per sample: both passes work
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 10, 7)).astype(dtype)
    got = host(CE.sample_sums(cuda.to_device(x)))
    assert got.dtype == np.float64 and got.shape == (2,)
    np.testing.assert_allclose(got, x.astype(np.float64).reshape(2, -1).sum(1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got, E.sample_sums(x), rtol=1e-12, atol=1e-9)
    y = x[:, :1, :2].copy()
    y[0, 0, 1, 4], y[1, 0, 0, 0], y[1, 0, 1, 6] = np.inf, np.nan, np.inf
    got = host(CE.sample_sums(y))
    assert np.isposinf(got[0]) and np.isnan(got[1])


# ----------------------------------------------------------------------------- pooling

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_unpool_matches_cpu_with_collisions_and_foreign_indices(seed, dtype):
    rng = np.random.default_rng(seed)
    N, C, H, W, oh, ow = 2, 3, 5, 6, 3, 4
    values = rng.standard_normal((N, C, oh, ow)).astype(dtype)
    plane = np.arange(N * C).reshape(N, C, 1, 1) * H * W
    idx = plane + rng.integers(0, 4, (N, C, oh, ow))  # few targets: many collisions
    idx[0, 1, 0, 0] = idx[1, 2, 0, 0] - 1  # an index into another plane: dropped
    idx[1, 0, 2, 3] = N * C * H * W + 5  # outside the tensor: dropped
    got = host(CP.unpool(cuda.to_device(values), idx, (N, C, H, W)))
    want = P.unpool(values, idx, (N, C, H, W))
    assert got.dtype == dtype and got.shape == (N, C, H, W)
    np.testing.assert_allclose(got, want, **tol(dtype))


# ----------------------------------------------------------------------------- flow

@pytest.mark.parametrize("name", ["s2x1_asym", "groups2", "depthwise_s2"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_flow_matches_cpu(name, dtype):
    """One block of FLOW_THREADS per (n, row, col): the cases keep to a handful of blocks."""
    rng, geom, x, w, _ = _conv_case(name, 5, dtype, n=1)
    s = rng.standard_normal(K.conv2d(x, w, geom).shape).astype(dtype)
    rows = np.array([x.shape[1] - 1, 0])  # with groups: one pair in a group, one across groups
    cols = np.array([w.shape[0] - 1, 1])
    mul = x if dtype == np.float64 else None
    want = F.conv_flow(mul, s, w, geom, x.shape, rows, cols)
    got = host(CF.conv_flow(mul, cuda.to_device(s), w, geom, x.shape, rows, cuda.to_device(cols)))
    assert got.dtype == dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, **tol(dtype))
    if geom.groups == 1 and dtype == np.float64:  # all pairs' flows add up to the transpose's total
        full = host(CF.conv_flow(x, s, w, geom, x.shape, np.arange(x.shape[1]), np.arange(w.shape[0])))
        total = K.conv2d_transpose(s, w, geom, x.shape[2:], x)
        np.testing.assert_allclose(full.sum(axis=(1, 2)), total.sum(axis=(1, 2, 3)), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_flow_matches_cpu(dtype):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((2, 9)).astype(dtype)
    w = rng.standard_normal((9, 6)).astype(dtype)
    s = rng.standard_normal((2, 6)).astype(dtype)
    rows, cols = np.array([8, 0, 3]), np.array([5, 1])
    for mul in (a, None):
        got = host(CF.dense_flow(mul, cuda.to_device(s), w, rows, cols))
        np.testing.assert_allclose(got, F.dense_flow(mul, s, w, rows, cols), **tol(dtype))


# ----------------------------------------------------------------------------- launch helpers

def test_launch_helpers():
    assert CL.blocks(0) == 1 and CL.blocks(256, 256) == 1 and CL.blocks(257, 256) == 2
    assert CL.THREADS == 16 if CL.SIMULATED else CL.THREADS == 256  # small blocks in the simulator only
    assert CL.grid1(10**9, cap=CL.MAX_BLOCKS) == (CL.MAX_BLOCKS, CL.THREADS)
    assert CL.grid2(130, 65, (64, 64), (8, 8)) == ((2, 3), (8, 8))
    ws = CL.DeviceWorkspace()
    a = ws.get((3, 4), np.float32)
    b = ws.get((2, 5), np.float32)
    assert a.shape == (3, 4) and b.shape == (2, 5)
    d = CL.as_device(np.arange(6.0).reshape(2, 3))
    assert CL.as_device(d) is d
    f = CL.as_device(d, np.float32)
    assert f.dtype == np.float32 and np.array_equal(host(f), np.arange(6.0).reshape(2, 3))
    with pytest.raises(ValueError):
        CL.flat(CL.as_device(np.zeros((2, 4)))[:, ::2])
