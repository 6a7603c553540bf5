"""Channel-pair relevance flows: float64 references and both conservation identities."""

from __future__ import annotations

import numpy as np
import pytest

from lrpath_onnx import Analyzer
from tests import models
from tests import reference as ref
from tests.test_rules import LOW, HIGH, RULE_KW, RULE_TEXT

SEEDS = [0, 1, 2]
CASES = {
    "s1p1": dict(strides=(1, 1), pads=(1, 1, 1, 1)),
    "s2p0": dict(strides=(2, 2), pads=(0, 0, 0, 0)),
    "dilation2": dict(dilations=(2, 2), pads=(2, 2, 2, 2)),
    "groups2": dict(groups=2),
    "depthwise": dict(groups=4),
}


def _explained(tmp_path, model, layer, rule, x, r):
    an = Analyzer(models.save(model, tmp_path / "m.onnx"), rules=[f"{layer}={RULE_TEXT[rule]}"], low=LOW, high=HIGH)
    exp = an.relevance_from(x, an.graph.output, r, keep=[layer], dtype=np.float64, keep_forward=True)
    return an, exp


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rule", ["zero", "epsilon", "gamma", "zplus", "alphabeta", "flat", "wsquare", "zbox"])
@pytest.mark.parametrize("case", list(CASES))
def test_conv_flows_match_reference_and_conserve(tmp_path, case, rule, seed):
    rng = np.random.default_rng(seed)
    kw = dict(CASES[case])
    k_out = 4 if case == "depthwise" else 6
    x_shape = (2, 4, 7, 6)
    model, w, b = models.conv_model(rng, x_shape, k_out, **kw)
    x = rng.standard_normal(x_shape).astype(np.float32)
    geom = ref.case_geometry(kw)
    M, mask, out_shape = ref.conv_matrix(w, x_shape[1:], **geom)
    r = rng.standard_normal((2, *out_shape))
    an, exp = _explained(tmp_path, model, "conv", rule, x, r)
    rows, cols = np.arange(4), np.arange(k_out)
    F = an.channel_flows(exp, "conv", rows, cols)
    bias = np.repeat(b.astype(np.float64), out_shape[1] * out_shape[2])
    for n in range(2):
        a = x[n].reshape(-1).astype(np.float64)
        C = ref.lrp_contributions(rule, a, M, bias, r[n].reshape(-1), mask, low=np.full(a.shape, LOW),
                                  high=np.full(a.shape, HIGH), **RULE_KW.get(rule, {}))
        want = ref.channel_blocks(C, x_shape[1:], out_shape)
        np.testing.assert_allclose(F[n], want, rtol=1e-7, atol=1e-9 * max(1, np.abs(want).max()))
        # Σ_j F[i, j] = input relevance of channel i
        np.testing.assert_allclose(F[n].sum(1), exp.relevance[n].reshape(4, -1).sum(1), rtol=1e-7, atol=1e-9)
    # a subset of rows/columns is the matching block
    sub = an.channel_flows(exp, "conv", rows[[3, 1]], cols[[0, 2]])
    np.testing.assert_allclose(sub, F[:, [3, 1]][:, :, [0, 2]], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_flows_sum_to_output_relevance_on_bias_free_lrp0(tmp_path, seed):
    rng = np.random.default_rng(seed)
    model, w, _ = models.conv_model(rng, (2, 5, 8, 8), 7, strides=(2, 2), bias=False, pre_relu=True)
    x = rng.standard_normal((2, 5, 8, 8)).astype(np.float32)
    r = rng.standard_normal((2, 7, 4, 4))
    an, exp = _explained(tmp_path, model, "conv", "zero", x, r)
    F = an.channel_flows(exp, "conv", np.arange(5), np.arange(7))
    # Σ_i F[i, j] = relevance of output channel j (no bias, no ε to absorb any)
    np.testing.assert_allclose(F.sum(1), r.reshape(2, 7, -1).sum(2), rtol=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rule", ["zero", "epsilon", "gamma", "alphabeta", "zbox"])
def test_dense_flows_match_reference(tmp_path, rule, seed):
    rng = np.random.default_rng(seed)
    model, W, b = models.gemm_model(rng, 9, 5, trans_b=1)
    x = rng.standard_normal((3, 9)).astype(np.float32)
    r = rng.standard_normal((3, 5))
    an, exp = _explained(tmp_path, model, "gemm", rule, x, r)
    F = an.channel_flows(exp, "gemm", np.arange(9), np.arange(5))
    for n in range(3):
        a = x[n].astype(np.float64)
        want = ref.lrp_contributions(rule, a, W, b, r[n], None, low=np.full(9, LOW), high=np.full(9, HIGH),
                                     **RULE_KW.get(rule, {}))
        np.testing.assert_allclose(F[n], want, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(F[n].sum(1), exp.relevance[n], rtol=1e-9, atol=1e-12)
