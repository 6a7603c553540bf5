"""Every rule on every linear layer type equals the float64 NumPy reference (tests/reference.py)."""

from __future__ import annotations

import numpy as np
import pytest

from lrpath_onnx import Analyzer
from tests import models, reference as ref

RULES = ["zero", "epsilon", "gamma", "zplus", "alphabeta", "flat", "wsquare", "zbox"]
RULE_TEXT = {"zero": "zero", "epsilon": "epsilon:0.5", "gamma": "gamma:0.25", "zplus": "zplus",
             "alphabeta": "alphabeta:2,1", "flat": "flat", "wsquare": "wsquare", "zbox": "zbox"}
RULE_KW = {"epsilon": dict(eps=0.5), "gamma": dict(gamma=0.25), "alphabeta": dict(alpha=2.0, beta=1.0)}
SEEDS = [0, 1, 2]
LOW, HIGH = -3.0, 3.0


def run(tmp_path, model, layer, rule, x, r, dtype=np.float64, rule_forward="runtime"):
    path = models.save(model, tmp_path / "m.onnx")
    an = Analyzer(path, rules=[f"{layer}={RULE_TEXT[rule]}"], low=LOW, high=HIGH, rule_forward=rule_forward)
    return an, an.relevance_from(x, an.graph.output, r, dtype=dtype)


def reference_linear(rule, xs, M, b, rs, mask, relu=False):
    out = []
    for x, r in zip(xs, rs):
        a = x.reshape(-1).astype(np.float64)
        if relu:
            a = np.maximum(a, 0)
        low = np.full(a.shape, LOW if not relu else max(LOW, 0.0))
        high = np.full(a.shape, HIGH)
        out.append(ref.lrp_linear(rule, a, M, b, r.reshape(-1).astype(np.float64), mask,
                                  low=low, high=high, **RULE_KW.get(rule, {})))
    return np.stack(out).reshape(xs.shape)


def assert_close(got, want, rtol=1e-5):
    scale = max(np.abs(want).max(), 1e-30)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


CONV_CASES = {
    "s1p1": dict(strides=(1, 1), pads=(1, 1, 1, 1)),
    "s2p0": dict(strides=(2, 2), pads=(0, 0, 0, 0)),
    "s2x1_asym_pad": dict(strides=(2, 1), pads=(1, 0, 2, 1)),
    "dilation2": dict(dilations=(2, 2), pads=(2, 2, 2, 2)),
    "groups2": dict(groups=2),
    "depthwise": dict(groups=4),
    "groups2_wide": dict(groups=2),
    "pointwise": dict(kernel=(1, 1), pads=(0, 0, 0, 0)),  # signed inputs: a⁺ and a⁻ terms in one product
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_rules_match_reference(tmp_path, case, rule, seed):
    rng = np.random.default_rng(seed)
    kw = dict(CONV_CASES[case])
    C = 32 if case == "groups2_wide" else 4
    k_out = 4 if case == "depthwise" else 6
    x_shape = (2, C, 9, 7)
    model, w, b = models.conv_model(rng, x_shape, k_out, **kw)
    x = rng.standard_normal(x_shape).astype(np.float32)
    geom = ref.case_geometry(kw)
    M, mask, out_shape = ref.conv_matrix(w, x_shape[1:], **geom)
    r = rng.standard_normal((2, *out_shape))
    _, exp = run(tmp_path, model, "conv", rule, x, r)
    want = reference_linear(rule, x, M, np.repeat(b.astype(np.float64), out_shape[1] * out_shape[2]), r, mask)
    assert exp.relevance.dtype == np.float64
    assert_close(exp.relevance, want)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rule", ["zero", "gamma", "zplus", "alphabeta", "zbox"])
def test_conv_after_relu_uses_nonnegative_path(tmp_path, rule, seed):
    rng = np.random.default_rng(seed)
    model, w, b = models.conv_model(rng, (2, 5, 8, 8), 7, strides=(2, 2), pads=(1, 1, 1, 1), pre_relu=True)
    x = rng.standard_normal((2, 5, 8, 8)).astype(np.float32)
    M, mask, out_shape = ref.conv_matrix(w, (5, 8, 8), strides=(2, 2), pads=(1, 1, 1, 1))
    r = rng.standard_normal((2, *out_shape))
    an, exp = run(tmp_path, model, "conv", rule, x, r)
    assert an.graph.find("conv").nonneg_input is True
    want = reference_linear(rule, x, M, np.repeat(b.astype(np.float64), out_shape[1] * out_shape[2]), r, mask, relu=True)
    assert_close(exp.relevance, want)


@pytest.mark.parametrize("rule_forward", ["runtime", "kernels"])
@pytest.mark.parametrize("rule", ["gamma", "alphabeta"])
def test_float32_path_within_float32_rounding(tmp_path, rule, rule_forward):
    rng = np.random.default_rng(7)
    model, w, b = models.conv_model(rng, (2, 6, 10, 9), 8, pre_relu=True)
    x = rng.standard_normal((2, 6, 10, 9)).astype(np.float32)
    M, mask, out_shape = ref.conv_matrix(w, (6, 10, 9), pads=(1, 1, 1, 1))
    r = rng.standard_normal((2, *out_shape)).astype(np.float32)
    _, exp = run(tmp_path, model, "conv", rule, x, r, dtype=np.float32, rule_forward=rule_forward)
    want = reference_linear(rule, x, M, np.repeat(b.astype(np.float64), out_shape[1] * out_shape[2]), r, mask, relu=True)
    assert exp.relevance.dtype == np.float32
    assert_close(exp.relevance, want, rtol=2e-4)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", ["s1p1", "s2x1_asym_pad", "pointwise", "groups2_wide", "dense"])
def test_gamma_from_one_product_within_float32_rounding(tmp_path, monkeypatch, case, bias, seed):
    """In float32, with onnxruntime's output at hand, γ's two denominators come from that output
    and one product (``linear_rules._gamma_products``): equal to the float64 reference within
    float32 rounding on signed inputs with blocks of zeros, the bias-free rule's w² fallback
    for outputs nothing contributes to included."""
    from lrpath_onnx.backward import linear_rules

    taken = []
    fast = linear_rules._gamma_products
    monkeypatch.setattr(linear_rules, "_gamma_products", lambda *a, **k: taken.append(fast(*a, **k)) or taken[-1])
    rng = np.random.default_rng(seed)
    if case == "dense":
        model, W, b = models.gemm_model(rng, 11, 7)
        x = rng.standard_normal((3, 11)).astype(np.float32)
        x[0] = 0.0
        M, mask, layer, out_shape = np.asarray(W, np.float64), None, "gemm", (7,)
        bias_vec = np.asarray(b, np.float64)
    else:
        kw = dict(CONV_CASES[case])
        C = 32 if case == "groups2_wide" else 4
        x_shape = (3, C, 9, 7)
        model, w, b = models.conv_model(rng, x_shape, 6, **kw)
        x = _zero_blocks(rng.standard_normal(x_shape).astype(np.float32))
        M, mask, out_shape = ref.conv_matrix(w, x_shape[1:], **ref.case_geometry(kw))
        layer, bias_vec = "conv", np.repeat(b.astype(np.float64), out_shape[1] * out_shape[2])
    rule = "gamma:0.25" if bias else "gamma:0.25,nobias"
    an = Analyzer(models.save(model, tmp_path / "m.onnx"), rules=[f"{layer}={rule}"], rule_forward="kernels")
    r = rng.standard_normal((x.shape[0], *out_shape)).astype(np.float32)
    exp = an.relevance_from(x, an.graph.output, r, dtype=np.float32)
    assert any(t is not None for t in taken)
    want = np.stack([ref.lrp_linear("gamma", x[n].reshape(-1), M, bias_vec, r[n].reshape(-1), mask, bias=bias,
                                    gamma=0.25) for n in range(x.shape[0])]).reshape(x.shape)
    assert exp.relevance.dtype == np.float32
    assert_close(exp.relevance, want, rtol=2e-4)
    if not bias:  # nothing is lost: the relevance of outputs without contributions went on by w²
        np.testing.assert_allclose(exp.relevance.reshape(len(x), -1).sum(1), r.reshape(len(x), -1).sum(1),
                                   rtol=1e-4, atol=1e-4 * np.abs(r).sum())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("variant", ["gemm", "gemm_transB_alpha_beta", "matmul_add"])
def test_dense_rules_match_reference(tmp_path, variant, rule, seed):
    rng = np.random.default_rng(seed)
    if variant == "matmul_add":
        model, W, b = models.matmul_add_model(rng, 11, 7)
        layer = "matmul"
    elif variant == "gemm":
        model, W, b = models.gemm_model(rng, 11, 7)
        layer = "gemm"
    else:
        model, W, b = models.gemm_model(rng, 11, 7, trans_b=1, alpha=0.7, beta=1.3)
        layer = "gemm"
    x = rng.standard_normal((3, 11)).astype(np.float32)
    r = rng.standard_normal((3, 7))
    an, exp = run(tmp_path, model, layer, rule, x, r)
    if variant == "matmul_add":
        assert an.graph.find("matmul").nodes == ["matmul", "bias_add"]  # the bias Add was folded in
    want = reference_linear(rule, x, np.asarray(W, np.float64), np.asarray(b, np.float64), r, None)
    assert_close(exp.relevance, want)


POOL_CASES = {
    "avg_k3s2p1_incl": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
    "avg_k3s2p1_excl": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=0),
    "avg_k2s1": dict(kernel_shape=[2, 2], strides=[1, 1]),
    "avg_k3s2_asym": dict(kernel_shape=[3, 2], strides=[2, 1], pads=[0, 1, 1, 0]),
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rule", [r for r in RULES if r != "zbox"])
@pytest.mark.parametrize("case", list(POOL_CASES))
def test_average_pool_rules_match_reference(tmp_path, case, rule, seed):
    rng = np.random.default_rng(seed)
    attrs = POOL_CASES[case]
    x_shape = (2, 3, 9, 8)
    model = models.pool_model("AveragePool", x_shape, **attrs)
    x = rng.standard_normal(x_shape).astype(np.float32)
    M, mask, out_shape = ref.avgpool_matrix(x_shape[1:], attrs["kernel_shape"], attrs["strides"],
                                            tuple(attrs.get("pads", (0, 0, 0, 0))),
                                            bool(attrs.get("count_include_pad", 0)))
    r = rng.standard_normal((2, *out_shape))
    an, exp = run(tmp_path, model, "pool", rule, x, r)
    np.testing.assert_allclose(an.forward(x)["Y"].reshape(2, -1),
                               np.maximum(x, 0).reshape(2, -1) @ M, rtol=1e-5, atol=1e-6)
    want = reference_linear(rule, x, M, None, r, mask, relu=True)
    assert_close(exp.relevance, want)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rule", [r for r in RULES if r != "zbox"])
def test_global_average_pool_rules_match_reference(tmp_path, rule, seed):
    rng = np.random.default_rng(seed)
    x_shape = (2, 5, 7, 6)
    model = models.pool_model("GlobalAveragePool", x_shape)
    x = rng.standard_normal(x_shape).astype(np.float32)
    M, mask, _ = ref.avgpool_matrix(x_shape[1:], (7, 6))
    r = rng.standard_normal((2, 5, 1, 1))
    _, exp = run(tmp_path, model, "pool", rule, x, r)
    assert_close(exp.relevance, reference_linear(rule, x, M, None, r, mask, relu=True))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("attrs", [dict(kernel_shape=[2, 2], strides=[2, 2]),
                                   dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
                                   dict(kernel_shape=[3, 2], strides=[1, 2])],
                         ids=["k2s2", "k3s2p1_overlap", "k3x2_s1x2"])
def test_maxpool_winner_take_all(tmp_path, attrs, seed):
    rng = np.random.default_rng(seed)
    x_shape = (2, 3, 9, 7)
    model = models.pool_model("MaxPool", x_shape, **attrs)
    x = rng.standard_normal(x_shape).astype(np.float32)
    path = models.save(model, tmp_path / "m.onnx")
    an = Analyzer(path)
    y = an.forward(x)["Y"]
    r = rng.standard_normal(y.shape)
    exp = an.relevance_from(x, "Y", r, dtype=np.float64)
    want = ref.maxpool_wta(np.maximum(x, 0).astype(np.float64), r, attrs["kernel_shape"], attrs["strides"],
                           tuple(attrs.get("pads", (0, 0, 0, 0))))
    assert_close(exp.relevance, want, rtol=1e-12)
    np.testing.assert_allclose(exp.relevance.sum(), r.sum(), rtol=1e-12)  # WTA conserves exactly


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_residual_add_splits_by_contribution(tmp_path, seed, eps):
    rng = np.random.default_rng(seed)
    model, w = models.residual_model(rng, (2, 3, 5, 4))
    x = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    r = rng.standard_normal((2, 3, 5, 4))
    path = models.save(model, tmp_path / "m.onnx")
    an = Analyzer(path, rules=[f"add=epsilon:{eps}", "conv=zero"])
    exp = an.relevance_from(x, "Y", r, dtype=np.float64)
    M, mask, _ = ref.conv_matrix(w, (3, 5, 4), pads=(0, 0, 0, 0))
    xf = x.reshape(2, -1).astype(np.float64)
    want = []
    for n in range(2):
        a_relu, a_conv = np.maximum(xf[n], 0), xf[n] @ M
        z = a_relu + a_conv
        s = ref._div(r[n].reshape(-1), z, eps)
        r_conv = ref.lrp_linear("zero", xf[n], M, None, a_conv * s, mask)
        want.append(a_relu * s + r_conv)
    assert_close(exp.relevance, np.stack(want).reshape(x.shape))


@pytest.mark.parametrize("seed", SEEDS)
def test_residual_add_ratio_split(tmp_path, seed):
    """``ratio``: branch i gets |x_i| / Σ_j |x_j| of the relevance — conserving, each share in [0, 1]."""
    rng = np.random.default_rng(seed)
    model, w = models.residual_model(rng, (2, 3, 5, 4))
    x = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    r = rng.standard_normal((2, 3, 5, 4))
    an = Analyzer(models.save(model, tmp_path / "m.onnx"), rules=["add=ratio", "conv=zero"])
    exp = an.relevance_from(x, "Y", r, dtype=np.float64, keep=["relu", "conv"])
    M, mask, _ = ref.conv_matrix(w, (3, 5, 4), pads=(0, 0, 0, 0))
    xf = x.reshape(2, -1).astype(np.float64)
    want, to_relu, to_conv = [], [], []
    for n in range(2):
        a_relu, a_conv = np.maximum(xf[n], 0), xf[n] @ M
        s = ref._div(r[n].reshape(-1), np.abs(a_relu) + np.abs(a_conv), 0.0)
        to_relu.append(np.abs(a_relu) * s)
        to_conv.append(np.abs(a_conv) * s)
        want.append(to_relu[-1] + ref.lrp_linear("zero", xf[n], M, None, to_conv[-1], mask))
    assert_close(exp.kept["relu"].reshape(2, -1), np.stack(to_relu))
    assert_close(exp.kept["conv"].reshape(2, -1), np.stack(to_conv))
    np.testing.assert_allclose((exp.kept["relu"] + exp.kept["conv"]).sum(), r.sum(), rtol=1e-12)
    assert_close(exp.relevance, np.stack(want).reshape(x.shape))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rule", ["zero", "gamma", "flat"])
def test_concat_routes_each_slice_to_its_branch(tmp_path, seed, rule):
    rng = np.random.default_rng(seed)
    model, wa, wb = models.concat_model(rng, (2, 3, 6, 5), 4, 2)
    x = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    r = rng.standard_normal((2, 6, 6, 5))
    path = models.save(model, tmp_path / "m.onnx")
    an = Analyzer(path, rules=[f"conv_*={RULE_TEXT[rule]}"])
    exp = an.relevance_from(x, "Y", r, dtype=np.float64)
    Ma, ma, _ = ref.conv_matrix(wa, (3, 6, 5), pads=(1, 1, 1, 1))
    Mb, mb, _ = ref.conv_matrix(wb, (3, 6, 5), pads=(1, 1, 1, 1))
    want = (reference_linear(rule, x, Ma, None, r[:, :4], ma)
            + reference_linear(rule, x, Mb, None, r[:, 4:], mb))
    assert_close(exp.relevance, want)


NOBIAS = ["zero", "epsilon", "gamma", "zplus", "alphabeta"]


def _zero_blocks(x):
    """Inputs with blocks of exact zeros: some outputs then see nothing but their bias."""
    x = x.copy()
    x[:, :, :4, :3] = 0.0
    return x


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rule", NOBIAS)
@pytest.mark.parametrize("case", ["s1p1", "s2x1_asym_pad", "depthwise", "pointwise"])
def test_conv_rules_without_bias_match_reference(tmp_path, case, rule, seed):
    rng = np.random.default_rng(seed)
    kw = dict(CONV_CASES[case])
    k_out = 4 if case == "depthwise" else 6
    x_shape = (2, 4, 9, 7)
    model, w, b = models.conv_model(rng, x_shape, k_out, **kw)
    x = _zero_blocks(rng.standard_normal(x_shape).astype(np.float32))
    geom = ref.case_geometry(kw)
    M, mask, out_shape = ref.conv_matrix(w, x_shape[1:], **geom)
    r = rng.standard_normal((2, *out_shape))
    path = models.save(model, tmp_path / "m.onnx")
    an = Analyzer(path, rules=[f"conv={RULE_TEXT[rule]},nobias" if ":" in RULE_TEXT[rule] else f"conv={rule}:nobias"])
    exp = an.relevance_from(x, an.graph.output, r, dtype=np.float64)
    bias = np.repeat(b.astype(np.float64), out_shape[1] * out_shape[2])
    want = np.stack([ref.lrp_linear(rule, x[n].reshape(-1), M, bias, r[n].reshape(-1), mask, bias=False,
                                    **RULE_KW.get(rule, {})) for n in range(2)]).reshape(x.shape)
    assert_close(exp.relevance, want)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rule", ["zero:nobias", "gamma:0.25,stabilizer=0,nobias", "zplus:stabilizer=0,nobias",
                                  "alphabeta:2,1,stabilizer=0,nobias"])
def test_rules_without_bias_conserve_exactly(tmp_path, rule, seed):
    """Without bias and stabiliser a layer conserves exactly, outputs with no contributing input included."""
    rng = np.random.default_rng(seed)
    model, _, b = models.conv_model(rng, (2, 5, 8, 7), 6, strides=(2, 1), groups=1)
    x = _zero_blocks(rng.standard_normal((2, 5, 8, 7)).astype(np.float32))
    an = Analyzer(models.save(model, tmp_path / "m.onnx"), rules=[f"conv={rule}"])
    r = rng.standard_normal(an.forward(x)["Y"].shape)
    exp = an.relevance_from(x, "Y", r, dtype=np.float64)
    np.testing.assert_allclose(exp.relevance.reshape(2, -1).sum(1), r.reshape(2, -1).sum(1), rtol=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rule", NOBIAS)
def test_dense_rules_without_bias_match_reference(tmp_path, rule, seed):
    rng = np.random.default_rng(seed)
    model, W, b = models.gemm_model(rng, 11, 7)
    x = rng.standard_normal((3, 11)).astype(np.float32)
    x[0] = 0.0  # a sample whose outputs are its bias alone
    r = rng.standard_normal((3, 7))
    an = Analyzer(models.save(model, tmp_path / "m.onnx"),
                  rules=[f"gemm={RULE_TEXT[rule]},nobias" if ":" in RULE_TEXT[rule] else f"gemm={rule}:nobias"])
    exp = an.relevance_from(x, an.graph.output, r, dtype=np.float64)
    want = np.stack([ref.lrp_linear(rule, x[n], np.asarray(W, np.float64), np.asarray(b, np.float64), r[n], None,
                                    bias=False, **RULE_KW.get(rule, {})) for n in range(3)])
    assert_close(exp.relevance, want)


@pytest.mark.parametrize("rule", ["alphabeta", "zbox"])
def test_relevance_below_a_float64_explanation(tmp_path, rule):
    """``relevance_below`` on an explanation made in float64 propagates float32 relevance over
    float64 forwards: a multi-part group's denominator, divided in its own buffer where the
    dtypes agree, must not be asked to hold the float32 ratio (that raised)."""
    rng = np.random.default_rng(0)
    path = models.save(models.small_cnn(rng)[0], tmp_path / "m.onnx")
    an = Analyzer(path, rules=[f"conv1={RULE_TEXT[rule]}"], low=LOW, high=HIGH)
    x = rng.uniform(-1, 1, (2, 3, 12, 12)).astype(np.float32)
    exp = an.relevance_from(x, "c1", rng.standard_normal((2, 6, 12, 12)), dtype=np.float64, keep_forward=True)
    r = rng.standard_normal((3, 6, 12, 12)).astype(np.float32)
    got = an.relevance_below(exp, "conv1", r, sample=1)
    want = an.relevance_from(np.repeat(x[1:2], 3, axis=0), "c1", r, dtype=np.float64).relevance
    assert_close(got, want, rtol=1e-5)
