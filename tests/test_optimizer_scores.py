"""GetOptimizer (paper, Algorithm 1) against a line-by-line float64 transcription, and the
scores used to choose K (MSE, SMAPE, unit-L1, softmax, choose_k)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lrpath_onnx.errors import InputError
from lrpath_onnx.paths.optimizer import (
    PathInputError,
    get_optimizer,
    neuron_scores,
    select_getoptimizer,
)
from lrpath_onnx.paths.scores import choose_k, mse, smape, softmax, unit_l1

SEEDS = [0, 1, 2, 3]
SHAPES = [(3, 8, 5, 4), (2, 16, 1, 1), (1, 5, 7, 3), (4, 10), (1, 32), (2, 3)]
THRESHOLDS = [0.5, 1.0, 2.0]


# --------------------------------------------------------------------------- reference

def algorithm1(forward, backward, idx, threshold=1.0):
    """Algorithm 1 "GetOptimizer", transcribed line by line in float64."""
    forward = np.asarray(forward, dtype=np.float64)
    backward = np.asarray(backward, dtype=np.float64)
    # 1: difference of the forward and backward results at the index
    diff = forward[idx] - backward[idx]
    # 2: sum the difference over the spatial dimension -> one value per neuron
    if diff.ndim == 3:
        summed = np.zeros(diff.shape[0])
        for c in range(diff.shape[0]):
            summed[c] = diff[c].sum()
    else:
        summed = diff.copy()
    # 3-4: mean and (population) standard deviation of the summed results
    mu = np.mean(summed)
    sigma = np.std(summed)
    # 5: keep the neurons above `threshold` standard deviations below the mean
    mask = np.zeros(summed.shape[0], dtype=bool)
    for c in range(summed.shape[0]):
        mask[c] = summed[c] > mu - threshold * sigma
    if np.all(summed == summed[0]):  # sigma = 0: keep all (our documented decision)
        mask[:] = True
    # 6: set the other neurons to the neutral value zero
    filtered = diff.copy()
    for c in range(summed.shape[0]):
        if not mask[c]:
            filtered[c] = 0.0
    return mask, filtered, summed


def make(seed, shape, dtype=np.float64):
    rng = np.random.default_rng(seed)
    forward = np.maximum(rng.normal(size=shape), 0).astype(dtype)  # ReLU activations
    backward = rng.normal(scale=0.5, size=shape).astype(dtype)
    return forward, backward


# --------------------------------------------------------------------------- get_optimizer

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("threshold", THRESHOLDS)
@pytest.mark.parametrize("which", ["first", "last"])
def test_get_optimizer_matches_algorithm1(seed, shape, threshold, which):
    forward, backward = make(seed, shape)
    idx = 0 if which == "first" else shape[0] - 1
    mask, filtered = get_optimizer(forward, backward, idx, threshold)
    ref_mask, ref_filtered, _ = algorithm1(forward, backward, idx, threshold)
    assert mask.dtype == bool and mask.shape == (shape[1],)
    assert filtered.shape == shape[1:]
    np.testing.assert_array_equal(mask, ref_mask)
    np.testing.assert_array_equal(filtered, ref_filtered)


def test_default_threshold_is_one_sigma():
    forward, backward = make(7, (2, 12, 3, 3))
    m_default, _ = get_optimizer(forward, backward, 1)
    m_one, _ = get_optimizer(forward, backward, 1, threshold=1.0)
    np.testing.assert_array_equal(m_default, m_one)


def test_threshold_is_monotone_and_drops_something():
    forward, backward = make(3, (1, 64, 4, 4))
    kept = [get_optimizer(forward, backward, 0, t)[0].sum() for t in (0.5, 1.0, 2.0)]
    assert kept[0] <= kept[1] <= kept[2] <= 64
    assert kept[0] < 64  # with 64 random neurons some lie half a sigma below the mean


def test_negative_idx_and_float32():
    forward, backward = make(5, (3, 9, 4, 4), dtype=np.float32)
    mask, filtered = get_optimizer(forward, backward, -1)
    mask2, filtered2 = get_optimizer(forward, backward, 2)
    np.testing.assert_array_equal(mask, mask2)
    np.testing.assert_array_equal(filtered, filtered2)
    assert filtered.dtype == np.float32
    d = forward[2] - backward[2]  # computed in float32 like the implementation
    ref_mask, ref_filtered, _ = algorithm1(d[None], np.zeros_like(d[None]), 0)
    np.testing.assert_array_equal(mask, ref_mask)
    np.testing.assert_array_equal(filtered, ref_filtered.astype(np.float32))


def test_known_small_example():
    # dense, sums = d = [3, 1, 0, -4]: mu = 0, sigma = sqrt(26/4) ~ 2.55 -> keep > -2.55
    forward = np.array([[3.0, 1.0, 0.0, 0.0]])
    backward = np.array([[0.0, 0.0, 0.0, 4.0]])
    mask, filtered = get_optimizer(forward, backward, 0)
    np.testing.assert_array_equal(mask, [True, True, True, False])
    np.testing.assert_array_equal(filtered, [3.0, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(select_getoptimizer(forward, backward, 0), [0, 1, 2])


def test_strict_comparison_drops_neuron_exactly_on_the_line():
    # sums [-1, 1]: mu = 0, sigma = 1 -> the neuron at exactly mu - sigma is dropped
    mask, filtered = get_optimizer(np.array([[0.0, 1.0]]), np.array([[1.0, 0.0]]), 0)
    np.testing.assert_array_equal(mask, [False, True])
    np.testing.assert_array_equal(filtered, [0.0, 1.0])


@pytest.mark.parametrize("shape", [(2, 6, 3, 3), (2, 6), (1, 1, 2, 2), (1, 1)])
@pytest.mark.parametrize("value", [0.0, 0.1, -3.7])
def test_sigma_zero_keeps_every_neuron(shape, value):
    forward = np.full(shape, value)
    backward = np.zeros(shape)
    for threshold in (-2.0, 0.0, 1.0):
        mask, filtered = get_optimizer(forward, backward, 0, threshold)
        assert mask.all()
        np.testing.assert_array_equal(filtered, forward[0])
    assert select_getoptimizer(forward, backward, 0).tolist() == list(range(shape[1]))


def test_sigma_zero_from_equal_sums_with_different_maps():
    forward = np.zeros((1, 3, 2, 2))
    forward[0, 0] = [[1.0, 0.0], [0.0, 0.0]]
    forward[0, 1] = [[0.0, 0.0], [0.0, 1.0]]
    forward[0, 2] = [[0.25, 0.25], [0.25, 0.25]]
    mask, _ = get_optimizer(forward, np.zeros_like(forward), 0)
    assert mask.all()


def test_neuron_scores_sums_spatially():
    forward, backward = make(1, (2, 4, 3, 5))
    np.testing.assert_allclose(neuron_scores(forward, backward, 1),
                               (forward[1] - backward[1]).sum(axis=(1, 2)))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", [(2, 20, 3, 3), (3, 15)])
def test_select_order_descending(seed, shape):
    forward, backward = make(seed, shape)
    sel = select_getoptimizer(forward, backward, 1)
    mask, _ = get_optimizer(forward, backward, 1)
    _, _, summed = algorithm1(forward, backward, 1)
    assert sel.dtype == np.int64
    assert sorted(sel.tolist()) == np.flatnonzero(mask).tolist()
    assert np.all(np.diff(summed[sel]) <= 0)


def test_select_ties_keep_index_order():
    forward = np.array([[2.0, 5.0, 2.0, 5.0, -9.0]])
    sel = select_getoptimizer(forward, np.zeros_like(forward), 0)
    assert sel.tolist() == [1, 3, 0, 2]


@pytest.mark.parametrize(
    "forward, backward, idx, threshold, match",
    [
        (np.zeros((2, 3)), np.zeros((2, 4)), 0, 1.0, "same shape"),
        (np.zeros((2, 3, 4)), np.zeros((2, 3, 4)), 0, 1.0, "rank 2"),
        (np.zeros(3), np.zeros(3), 0, 1.0, "rank 2"),
        (np.zeros((2, 3, 4, 4, 1)), np.zeros((2, 3, 4, 4, 1)), 0, 1.0, "rank 2"),
        (np.zeros((2, 3)), np.zeros((2, 3)), 2, 1.0, "out of range"),
        (np.zeros((2, 3)), np.zeros((2, 3)), -3, 1.0, "out of range"),
        (np.zeros((2, 3)), np.zeros((2, 3)), 1.0, 1.0, "integer"),
        (np.zeros((2, 3)), np.zeros((2, 3)), True, 1.0, "integer"),
        (np.array([[0.0, np.nan]]), np.zeros((1, 2)), 0, 1.0, "NaN or infinite"),
        (np.zeros((1, 2)), np.array([[np.inf, 0.0]]), 0, 1.0, "NaN or infinite"),
        (np.zeros((2, 3)), np.zeros((2, 3)), 0, np.nan, "finite"),
        (np.zeros((2, 3)), np.zeros((2, 3)), 0, "1", "real number"),
        (np.zeros((0, 3)), np.zeros((0, 3)), 0, 1.0, "empty"),
        (np.zeros((2, 0)), np.zeros((2, 0)), 0, 1.0, "no neurons"),
        (np.zeros((2, 3, 0, 4)), np.zeros((2, 3, 0, 4)), 0, 1.0, "empty"),
        (np.array([["a"]]), np.array([["b"]]), 0, 1.0, "real numbers"),
    ],
)
def test_invalid_inputs(forward, backward, idx, threshold, match):
    for fn in (get_optimizer, select_getoptimizer):
        with pytest.raises(ValueError, match=match) as info:
            fn(forward, backward, idx, threshold)
        assert isinstance(info.value, InputError)  # one exception family for the CLI


def test_nan_in_other_sample_is_ignored():
    forward, backward = make(0, (2, 4, 2, 2))
    forward[1, 0, 0, 0] = np.nan
    get_optimizer(forward, backward, 0)
    with pytest.raises(PathInputError):
        get_optimizer(forward, backward, 1)


def test_inputs_not_modified():
    forward, backward = make(2, (2, 6, 3, 3))
    f0, b0 = forward.copy(), backward.copy()
    _, filtered = get_optimizer(forward, backward, 0)
    filtered[:] = 123.0
    np.testing.assert_array_equal(forward, f0)
    np.testing.assert_array_equal(backward, b0)


# --------------------------------------------------------------------------- MSE

def test_mse_known_values():
    assert mse([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 0.0
    assert mse([0.0, 0.0], [1.0, 3.0]) == 5.0
    assert mse(np.array([[1, 2], [3, 4]]), np.array([[0, 0], [0, 0]])) == 7.5
    assert isinstance(mse(np.float32([1.5]), np.float32([0.5])), float)
    # float64 internally: float32 inputs whose square overflows float32
    assert mse(np.float32([1e30]), np.float32([0.0])) == pytest.approx(1e60, rel=1e-6)


@pytest.mark.parametrize("fn", [mse, smape])
def test_pair_validation(fn):
    with pytest.raises(ValueError, match="same shape"):
        fn(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="empty"):
        fn(np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError, match="NaN or infinite"):
        fn([np.nan], [0.0])


# --------------------------------------------------------------------------- SMAPE

def test_smape_edge_cases():
    assert smape(np.zeros(5), np.zeros(5)) == 0.0
    assert smape([0.0], [3.0]) == 200.0
    assert smape([3.0], [0.0]) == 200.0
    assert smape([0.0, 0.0], [0.0, 2.0]) == 100.0  # 0/0 counts as 0 in the mean
    assert smape([1.0, -2.0, 5.0], [-1.0, 2.0, -5.0]) == 200.0  # sign flips
    assert smape([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert smape([1.0], [3.0]) == pytest.approx(100.0)  # 2*2/4
    assert smape([1e308, -1e308], [-1e308, 0.0]) == 200.0  # no overflow to NaN
    assert smape([5e-324], [0.0]) == 200.0  # subnormals are not lost


def test_smape_symmetric_and_scale_invariant():
    rng = np.random.default_rng(0)
    p, a = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    assert smape(p, a) == smape(a, p)
    for c in (2.0, 0.5, -4.0, 3.7, 1e6, -1e-6):
        assert smape(c * p, c * a) == pytest.approx(smape(p, a), rel=1e-12)


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.float64, st.integers(1, 20), elements=finite), st.data())
def test_smape_properties(p, data):
    a = data.draw(hnp.arrays(np.float64, p.shape, elements=finite))
    s = smape(p, a)
    assert 0.0 <= s <= 200.0
    assert s == smape(a, p)
    assert smape(p, p) == 0.0
    assert np.isclose(smape(p, -p), 200.0 * np.count_nonzero(p) / p.size, rtol=1e-12)


#: values a power-of-two scale maps exactly (no subnormals, which 0.25·x would round or flush)
NORMAL = st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False).filter(lambda v: v == 0 or abs(v) > 1e-300)


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.float64, st.integers(1, 20), elements=NORMAL),
       st.data(), st.sampled_from([0.25, 2.0, -8.0, 1024.0]))
def test_smape_power_of_two_scale_is_exact(p, data, c):
    a = data.draw(hnp.arrays(np.float64, p.shape, elements=NORMAL))
    assert smape(c * p, c * a) == smape(p, a)


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.float64, st.integers(1, 20), elements=st.floats(-1e6, 1e6)), st.data())
def test_mse_properties(p, data):
    a = data.draw(hnp.arrays(np.float64, p.shape, elements=st.floats(-1e6, 1e6)))
    m = mse(p, a)
    assert m >= 0.0 and m == mse(a, p)
    assert mse(p, p) == 0.0


# --------------------------------------------------------------------------- unit_l1

def test_unit_l1():
    x = np.array([[1.0, -3.0], [0.0, 4.0]])
    y = unit_l1(x)
    np.testing.assert_allclose(y, x / 8.0)
    assert np.abs(y).sum() == pytest.approx(1.0)
    z = unit_l1(np.zeros((3, 3)))
    assert z.dtype == np.float64 and not z.any()
    assert unit_l1(np.float32([2.0, 2.0])).dtype == np.float64


def test_unit_l1_per_slice():
    x = np.stack([np.ones((2, 2)), np.zeros((2, 2)), -np.arange(4.0).reshape(2, 2)])
    y = unit_l1(x, axis=(1, 2))
    np.testing.assert_allclose(y[0], 0.25)
    assert not y[1].any()
    np.testing.assert_allclose(y[2], -np.arange(4.0).reshape(2, 2) / 6.0)


def test_unit_l1_makes_scores_scale_free():
    rng = np.random.default_rng(1)
    h = rng.normal(size=(8, 8))
    assert mse(unit_l1(10.0 * h), unit_l1(h)) == pytest.approx(0.0, abs=1e-30)


# --------------------------------------------------------------------------- softmax

def test_softmax_large_logits():
    p = softmax(np.array([1000.0, 1001.0]))
    assert np.all(np.isfinite(p))
    e = np.exp(-1.0)
    np.testing.assert_allclose(p, [e / (1 + e), 1 / (1 + e)], rtol=1e-15)
    p32 = softmax(np.float32([1000.0, 1001.0]))
    assert p32.dtype == np.float64 and np.all(np.isfinite(p32))


@pytest.mark.parametrize("seed", SEEDS)
def test_softmax_matches_float64_reference(seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=5.0, size=(3, 10))
    ref = np.array([[np.exp(v) / np.exp(row).sum() for v in row] for row in z])
    np.testing.assert_allclose(softmax(z), ref, rtol=1e-12)
    np.testing.assert_allclose(softmax(z.T, axis=0), ref.T, rtol=1e-12)
    np.testing.assert_allclose(softmax(z).sum(axis=-1), 1.0, rtol=1e-15)


def test_softmax_invalid():
    with pytest.raises(ValueError, match="NaN or infinite"):
        softmax([np.inf, 0.0])
    with pytest.raises(ValueError, match="scalar"):
        softmax(1.0)
    with pytest.raises(ValueError, match="empty"):
        softmax(np.zeros((2, 0)))


# --------------------------------------------------------------------------- choose_k

KS = [1, 2, 3, 4, 5, 6]


def test_choose_k_monotone_reference_zero():
    errors = [1.0, 0.5, 0.2, 0.06, 0.04, 0.0]
    # bound = 0 + 0.05 * max(0, 1.0) = 0.05
    assert choose_k(KS, errors, 0.0) == 5
    assert choose_k(KS, errors, 0.0, tolerance=0.2) == 3
    assert choose_k(KS, errors, 0.0, tolerance=0.0) == 6


def test_choose_k_nonzero_reference():
    errors = [2.0, 1.5, 1.2, 1.04, 1.02, 1.0]
    # scale = max |e - 1| = 1.0 = |ref| -> bound = 1.05
    assert choose_k(KS, errors, 1.0) == 4
    # reference dominates: errors within 0.1..0.8 of ref 10 -> bound = 10 + 0.05 * 10 = 10.5
    assert choose_k([1, 2, 3], [10.8, 10.4, 10.1], 10.0) == 2


def test_choose_k_absolute():
    errors = [1.0, 0.5, 0.2, 0.06, 0.04, 0.0]
    assert choose_k(KS, errors, 0.0, tolerance=0.3, relative=False) == 3
    assert choose_k(KS, errors, 0.0, tolerance=0.5, relative=False) == 2
    assert choose_k(KS, errors, 0.1, tolerance=0.0, relative=False) == 4
    assert choose_k(KS, errors, 0.04, tolerance=0.0, relative=False) == 5


def test_choose_k_non_monotone_takes_smallest():
    errors = [1.0, 0.01, 0.5, 0.3, 0.02, 0.0]
    assert choose_k(KS, errors, 0.0) == 2
    # unsorted ks: smallest K, not the first listed
    assert choose_k([6, 2, 4], [0.0, 0.01, 1.0], 0.0) == 2


def test_choose_k_none_qualifies():
    assert choose_k([1, 2, 3], [1.0, 0.9, 0.8], 0.0) is None
    assert choose_k([1, 2, 3], [1.0, 0.9, 0.8], 0.5, tolerance=0.1, relative=False) is None


def test_choose_k_reference_zero_all_zero_errors():
    assert choose_k([3, 1, 2], [0.0, 0.0, 0.0], 0.0) == 1


def test_choose_k_per_image_errors_are_averaged():
    errors = np.array([[1.0, 3.0], [0.1, 0.0], [0.0, 0.0]])  # means 2, 0.05, 0
    assert choose_k([1, 2, 3], errors, 0.0) == 2  # bound 0.05 * 2 = 0.1
    assert isinstance(choose_k([1, 2, 3], errors, 0.0), int)


@pytest.mark.parametrize(
    "ks, errors, ref, tol, match",
    [
        ([], [], 0.0, 0.05, "at least one"),
        ([1, 2], [0.1], 0.0, 0.05, "2 K values but 1"),
        ([1, 1], [0.1, 0.2], 0.0, 0.05, "distinct"),
        ([1.5, 2], [0.1, 0.2], 0.0, 0.05, "integer"),
        ([1, 2], [0.1, np.nan], 0.0, 0.05, "NaN or infinite"),
        ([1, 2], [0.1, 0.2], np.inf, 0.05, "finite"),
        ([1, 2], [0.1, 0.2], 0.0, -0.1, ">= 0"),
        ([1, 2], np.zeros((2, 2, 2)), 0.0, 0.05, "1-D"),
    ],
)
def test_choose_k_invalid(ks, errors, ref, tol, match):
    with pytest.raises(ValueError, match=match):
        choose_k(ks, errors, ref, tolerance=tol)
