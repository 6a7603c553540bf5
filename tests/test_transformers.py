"""Transformer ops and rules (issue 17) against float64 NumPy references written another way.

Each new op gets a small hand-written ONNX graph, random inputs and upper relevance, the
analyzer's float64 backward pass, and a reference that spells the rule out (explicit matrices,
explicit contributions, the Jacobian) instead of the vectorised form the handlers use;
conservation is asserted where the rule promises it.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from lrpath_onnx import Analyzer
from lrpath_onnx.graph.layers import (
    BilinearLayer,
    ConcatLayer,
    DenseLayer,
    LayerNormLayer,
    SoftmaxLayer,
)
from tests import models
from tests import reference as ref

SEEDS = [0, 1, 2]


def explain64(tmp_path, model, x, r, preset="attnlrp", rules=()):
    path = models.save(model, tmp_path / "m.onnx")
    an = Analyzer(path, preset=preset, rules=list(rules))
    return an, an.relevance_from(x, an.graph.output, r, dtype=np.float64)


def assert_close(got, want, rtol=1e-9):
    scale = max(np.abs(want).max(), 1e-30)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


def layernorm_model(rng, T, D, eps=1e-5, bias=True):
    inits = {"w": rng.uniform(0.5, 1.5, D).astype(np.float32)}
    ins = ["X", "w"]
    if bias:
        inits["b"] = rng.normal(0, 0.3, D).astype(np.float32)
        ins.append("b")
    nodes = [helper.make_node("LayerNormalization", ins, ["Y"], name="ln", axis=-1, epsilon=eps)]
    return models.make_model(nodes, [models.vi("X", ["N", T, D])], [models.vi("Y", ["N", T, D])], inits), inits


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("eps_rule", [0.0, 0.25])
@pytest.mark.parametrize("bias,nobias", [(True, False), (False, False), (True, True)],
                         ids=["bias", "no-bias", "bias-left-out"])
def test_layernorm_identity_rule_matches_linear_map_reference(tmp_path, seed, eps_rule, bias, nobias):
    """σ held constant, LayerNorm is y = A x + b with A = diag(w/σ)(I − 11ᵀ/D): LRP-ε on that
    matrix; ``nobias`` divides by y − b = A x, so with ε = 0 the input relevance sums to the
    output's although the layer has a bias."""
    rng = np.random.default_rng(seed)
    T, D = 5, 7
    model, inits = layernorm_model(rng, T, D, bias=bias)
    x = rng.normal(0, 2, (2, T, D)).astype(np.float32)
    r = rng.normal(0, 1, (2, T, D))
    an, exp = explain64(tmp_path, model, x, r, rules=[f"ln=epsilon:{eps_rule}" + (",nobias" if nobias else "")])
    assert isinstance(an.graph.find("ln"), LayerNormLayer)
    assert an.plan().rule_for(an.graph.find("ln")).bias is not nobias
    w = inits["w"].astype(np.float64)
    b = np.zeros(D) if nobias else inits.get("b", np.zeros(D, np.float32)).astype(np.float64)
    want = np.zeros_like(r)
    for n in range(2):
        for t in range(T):
            a = x[n, t].astype(np.float64)
            sigma = np.sqrt(a.var() + 1e-5)
            A = np.diag(w / sigma) @ (np.eye(D) - np.ones((D, D)) / D)
            want[n, t] = ref.lrp_linear("epsilon", a, A.T, b, r[n, t], eps=eps_rule)
    assert_close(exp.relevance, want)
    if (nobias or not bias) and eps_rule == 0.0:  # centring moves relevance between features, conserving it
        np.testing.assert_allclose(exp.relevance.sum(axis=(1, 2)), r.sum(axis=(1, 2)), rtol=1e-9)


def test_auto_gives_layernorm_without_attention_the_conserving_preset(tmp_path):
    """A LayerNorm alone (a ConvNeXt's) is no transformer: ``conserving`` (for the convolutions),
    not ``attnlrp``; the LayerNorm keeps ε with its bias (``nobias`` blows single values up
    where y ≈ b)."""
    model, _ = layernorm_model(np.random.default_rng(0), 3, 5)
    an = Analyzer(models.save(model, tmp_path / "ln.onnx"))
    assert an.plan().applied == "conserving" and "LayerNorm" in an.plan().reason
    rule = an.plan().rule_for(an.graph.find("ln"))
    assert (rule.name, rule.get("epsilon"), rule.bias) == ("epsilon", 1e-6, True)


@pytest.mark.parametrize("seed", SEEDS)
def test_softmax_rule_is_gradient_times_input_through_the_jacobian(tmp_path, seed):
    """R_in = x ⊙ Jᵀ (R_out / s) with J = diag(s) − s sᵀ: AttnLRP's Taylor decomposition."""
    rng = np.random.default_rng(seed)
    T = 6
    nodes = [helper.make_node("Softmax", ["X"], ["s"], name="attn", axis=-1),
             helper.make_node("Relu", ["s"], ["Y"], name="relu")]
    model = models.make_model(nodes, [models.vi("X", ["N", 3, T])], [models.vi("Y", ["N", 3, T])])
    x = rng.normal(0, 2, (2, 3, T)).astype(np.float32)
    r = rng.normal(0, 1, (2, 3, T))
    an, exp = explain64(tmp_path, model, x, r)
    assert isinstance(an.graph.find("attn"), SoftmaxLayer)
    want = np.zeros_like(r)
    for n in range(2):
        for i in range(3):
            a = x[n, i].astype(np.float64)
            s = np.exp(a - a.max()) / np.exp(a - a.max()).sum()
            J = np.diag(s) - np.outer(s, s)
            want[n, i] = a * (J.T @ (r[n, i] / s))
    assert_close(exp.relevance, want, rtol=1e-8)


def attention_model(rng, T, d, softmax=True):
    """x → q = x Wq, k = x Wk, v = x Wv; a = softmax(q kᵀ); y = a v (one head, tokens × d)."""
    inits = {f"W{c}": rng.normal(0, 0.5, (d, d)).astype(np.float32) for c in "qkv"}
    nodes = [helper.make_node("MatMul", ["X", f"W{c}"], [c], name=f"proj_{c}") for c in "qkv"]
    nodes += [helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
              helper.make_node("MatMul", ["q", "kt"], ["logits"], name="qk")]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["a"], name="attn", axis=-1))
    nodes.append(helper.make_node("MatMul", ["a" if softmax else "logits", "v"], ["Y"], name="av"))
    return models.make_model(nodes, [models.vi("X", ["N", T, d])], [models.vi("Y", ["N", T, d])], inits), inits


def bilinear_reference(A, B, R, share_a, share_b, eps=0.0):
    """Explicit contributions a_mn·b_np of y = A @ B: each operand its share, by ε."""
    Z = A @ B
    S = ref._div(R, Z, eps)
    ra, rb = np.zeros_like(A), np.zeros_like(B)
    for m in range(A.shape[0]):
        for n in range(A.shape[1]):
            for p in range(B.shape[1]):
                c = A[m, n] * B[n, p] * S[m, p]
                ra[m, n] += share_a * c
                rb[n, p] += share_b * c
    return ra, rb


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rule", ["uniform", "cp"])
def test_matmul_of_two_activations_matches_explicit_contributions(tmp_path, seed, rule):
    """``av`` (attention weights × values): uniform halves, CP-LRP all to the values."""
    rng = np.random.default_rng(seed)
    T, d = 5, 3
    model, inits = attention_model(rng, T, d)
    x = rng.normal(0, 1, (2, T, d)).astype(np.float32)
    r = rng.normal(0, 1, (2, T, d))
    preset = "attnlrp" if rule == "uniform" else "cp-lrp"
    an, exp = explain64(tmp_path, model, x, r, preset=preset, rules=["av=" + rule + ":0.1"])
    av = an.graph.find("av")
    assert isinstance(av, BilinearLayer) and av.attention == 0
    exp_keep = an.relevance_from(x, an.graph.output, r, dtype=np.float64, keep=["attn", "proj_v"])
    fwd = an.forward(x)  # the float64 pass reads onnxruntime's float32 activations, as this reference does
    for n in range(2):
        a, v = fwd["a"][n].astype(np.float64), fwd["v"][n].astype(np.float64)
        share = (0.5, 0.5) if rule == "uniform" else (0.0, 1.0)
        ra, rv = bilinear_reference(a, v, r[n], *share, eps=0.1)
        assert_close(exp_keep.kept["proj_v"][n], rv, rtol=1e-7)
        if rule == "uniform":
            assert_close(exp_keep.kept["attn"][n], ra, rtol=1e-7)
        else:  # the attention weights are constants: no relevance arrives at the softmax
            assert "attn" not in exp_keep.kept
    if rule == "cp":  # nothing reaches queries and keys
        flows = {f.name: f for f in exp.flows}
        assert "qk" not in flows and "attn" not in flows


@pytest.mark.parametrize("seed", SEEDS)
def test_uniform_rule_conserves_and_reaches_queries_and_keys(tmp_path, seed):
    """Without softmax, y = (q kᵀ) v: LRP-0 on both products conserves through all three branches."""
    rng = np.random.default_rng(seed)
    T, d = 4, 3
    model, _ = attention_model(rng, T, d, softmax=False)
    x = rng.normal(0, 1, (2, T, d)).astype(np.float32)
    r = rng.normal(0, 1, (2, T, d))
    an, exp = explain64(tmp_path, model, x, r, rules=["qk=uniform:0", "av=uniform:0"])
    np.testing.assert_allclose(exp.relevance.sum(axis=(1, 2)), r.sum(axis=(1, 2)), rtol=1e-8)
    flows = {f.name: f for f in exp.flows}
    assert np.abs(flows["qk"].relevance_in).max() > 0 and np.abs(flows["proj_q"].relevance_in).max() > 0


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("tokens,rule,kw", [
    ((5,), "epsilon:0.1", {"eps": 0.1}),
    ((5,), "gamma:0.25,nobias", {"gamma": 0.25, "bias": False}),
    ((3, 4), "gamma:0.25,nobias", {"gamma": 0.25, "bias": False}),  # a ConvNeXt's channels-last 1×1 conv
])
def test_token_rank_dense_layer_matches_per_token_reference(tmp_path, seed, tokens, rule, kw):
    """MatMul + bias Add on batch × tokens × features (or batch × H × W × channels): the
    rule per token row, signed inputs."""
    rng = np.random.default_rng(seed)
    I, O = 6, 4
    W = rng.normal(0, 0.5, (I, O)).astype(np.float32)
    b = rng.normal(0, 0.5, O).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["X", "W"], ["m"], name="fc"),
             helper.make_node("Add", ["b", "m"], ["Y"], name="fc_bias")]
    model = models.make_model(nodes, [models.vi("X", ["N", *tokens, I])], [models.vi("Y", ["N", *tokens, O])],
                              {"W": W, "b": b})
    x = rng.normal(0, 1, (2, *tokens, I)).astype(np.float32)
    r = rng.normal(0, 1, (2, *tokens, O))
    an, exp = explain64(tmp_path, model, x, r, rules=[f"fc={rule}"])
    layer = an.graph.find("fc")
    assert isinstance(layer, DenseLayer) and layer.rank == 2 + len(tokens) and layer.nodes == ["fc", "fc_bias"]
    rows_x, rows_r = x.reshape(-1, I), r.reshape(-1, O)
    want = np.stack([ref.lrp_linear(rule.split(":")[0], rows_x[k], W, b, rows_r[k], **kw) for k in range(len(rows_x))])
    assert_close(exp.relevance, want.reshape(x.shape), rtol=1e-8)
    if not kw.get("bias", True):  # no bias: every row's relevance arrives (but for γ's stabiliser)
        gap = exp.relevance.reshape(len(x), -1).sum(1) - r.reshape(len(r), -1).sum(1)
        assert (np.abs(gap) <= 1e-5 * np.abs(r).reshape(len(r), -1).sum(1)).all()


def test_class_token_gather_and_position_embedding(tmp_path):
    """Concat(class token, tokens) + pos, then x[:, 0]: the class token's share is dropped, the
    position embedding absorbs its share like a bias, the Gather sends all to token 0."""
    rng = np.random.default_rng(5)
    T, D = 3, 4
    cls = rng.normal(0, 1, (1, 1, D)).astype(np.float32)
    pos = rng.normal(0, 1, (1, T + 1, D)).astype(np.float32)
    nodes = [helper.make_node("Shape", ["X"], ["shape"], name="shape"),
             helper.make_node("Gather", ["shape", "zero"], ["n"], name="batch", axis=0),
             helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"], name="n1"),
             helper.make_node("Concat", ["n1", "ones2"], ["target"], name="target", axis=0),
             helper.make_node("Expand", ["cls", "target"], ["cls_n"], name="expand"),
             helper.make_node("Concat", ["cls_n", "X"], ["tokens"], name="cat", axis=1),
             helper.make_node("Add", ["tokens", "pos"], ["t"], name="pos_add"),
             helper.make_node("Gather", ["t", "zero"], ["Y"], name="take_cls", axis=1)]
    inits = {"cls": cls, "pos": pos, "zero": np.array(0, np.int64), "zero1": np.array([0], np.int64),
             "ones2": np.array([1, D], np.int64)}
    model = models.make_model(nodes, [models.vi("X", ["N", T, D])], [models.vi("Y", ["N", D])], inits)
    x = rng.normal(0, 1, (2, T, D)).astype(np.float32)
    r = rng.normal(0, 1, (2, D))
    an, exp = explain64(tmp_path, model, x, r)
    cat = an.graph.find("cat")
    assert isinstance(cat, ConcatLayer) and [c[0] for c in cat.constants] == [0] and cat.inputs == ["X"]
    # all relevance sits on the class token, which is a constant: nothing reaches the input
    np.testing.assert_array_equal(exp.relevance, 0.0)
    # relevance placed on every token instead: patch tokens get x/(x + pos) of theirs
    r_all = rng.normal(0, 1, (2, T + 1, D))
    exp2 = an.relevance_from(x, "t", r_all, dtype=np.float64)
    x64 = x.astype(np.float64)
    assert_close(exp2.relevance, x64 * r_all[:, 1:] / (x64 + pos[:, 1:].astype(np.float64)))


def test_slice_route_puts_relevance_back(tmp_path):
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("Slice", ["X", "st", "en", "ax", "sp"], ["Y"], name="sl")]
    inits = {"st": np.array([1, 0], np.int64), "en": np.array([5, 7], np.int64), "ax": np.array([1, 2], np.int64),
             "sp": np.array([2, 3], np.int64)}
    model = models.make_model(nodes, [models.vi("X", ["N", 6, 7])], [models.vi("Y", ["N", 2, 3])], inits)
    x = rng.normal(0, 1, (2, 6, 7)).astype(np.float32)
    r = rng.normal(0, 1, (2, 2, 3))
    an, exp = explain64(tmp_path, model, x, r)
    want = np.zeros((2, 6, 7))
    want[:, 1:5:2, 0:7:3] = r
    assert_close(exp.relevance, want)


def test_token_mean_pool_conserves(tmp_path):
    rng = np.random.default_rng(7)
    nodes = [helper.make_node("ReduceMean", ["X"], ["Y"], name="pool", axes=[1], keepdims=0)]
    model = models.make_model(nodes, [models.vi("X", ["N", 5, 3])], [models.vi("Y", ["N", 3])], opset=17)
    x = rng.normal(0, 1, (2, 5, 3)).astype(np.float32)
    r = rng.normal(0, 1, (2, 3))
    an, exp = explain64(tmp_path, model, x, r)
    x64 = x.astype(np.float64)
    assert_close(exp.relevance, x64 / x64.sum(axis=1, keepdims=True) * r[:, None, :])
    np.testing.assert_allclose(exp.relevance.sum(axis=1), r, rtol=1e-9)


def test_gradient_through_transformer_ops_matches_finite_differences(tmp_path):
    """The true gradients (gradient methods in ``lrpath evaluate``) of LayerNorm, softmax and
    the bilinear products, checked against central differences of the float64 forward."""
    rng = np.random.default_rng(8)
    T, d = 4, 3
    model, _ = attention_model(rng, T, d)
    ln = helper.make_node("LayerNormalization", ["Y0", "w"], ["Y"], name="ln", axis=-1)
    model.graph.node[-1].output[0] = "Y0"
    model.graph.node.append(ln)
    model.graph.initializer.append(helper.make_tensor("w", 1, [d], rng.uniform(0.5, 1.5, d).tolist()))
    path = models.save(model, tmp_path / "m.onnx")
    an = Analyzer(path, preset="attnlrp")
    x = rng.normal(0, 1, (1, T, d)).astype(np.float64)
    target = 5  # flat index of the explained output
    g = an.gradient(x.astype(np.float32), target=target, dtype=np.float64).relevance

    def f(v):
        return an.forward(v.astype(np.float32))["Y"].reshape(-1)[target].astype(np.float64)

    h = 1e-2
    fd = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = h
        fd[i] = (f(x + e) - f(x - e)) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=2e-2, atol=2e-3 * np.abs(fd).max())


def test_auto_picks_attnlrp_and_plan_says_why(tmp_path):
    rng = np.random.default_rng(9)
    model, _ = attention_model(rng, 4, 3)
    an = Analyzer(models.save(model, tmp_path / "m.onnx"))
    assert an.plan().applied == "attnlrp" and "transformer" in an.plan().reason
    assert an.plan().rule_for(an.graph.find("av")).name == "uniform"


@pytest.mark.parametrize("preset", ["attnlrp", "conserving", "epsilon-plus"])
@pytest.mark.parametrize("variant", ["pow_div", "mul_reciprocal"])
def test_written_out_layernorm_is_fused_and_explained_like_the_op(tmp_path, variant, preset):
    """ReduceMean, Sub, Pow (or x·x), ReduceMean, Add ε, Sqrt, Div (or ·Reciprocal), Mul w, Add b:
    one LayerNormalization with that weight and bias, whose relevance equals the op's."""
    rng = np.random.default_rng(11)
    T, D = 4, 6
    w = rng.uniform(0.5, 1.5, D).astype(np.float32)
    b = rng.normal(0, 0.3, D).astype(np.float32)
    n = helper.make_node
    sq = (n("Pow", ["d", "two"], ["p"], name="pow") if variant == "pow_div" else n("Mul", ["d", "d"], ["p"], name="sq"))
    norm = ([n("Div", ["d", "s"], ["xn"], name="div")] if variant == "pow_div" else
            [n("Reciprocal", ["s"], ["rs"], name="rec"), n("Mul", ["d", "rs"], ["xn"], name="mulr")])
    nodes = [n("ReduceMean", ["X"], ["m"], name="mean", axes=[-1], keepdims=1),
             n("Sub", ["X", "m"], ["d"], name="sub"), sq,
             n("ReduceMean", ["p"], ["v"], name="var", axes=[-1], keepdims=1),
             n("Add", ["v", "eps"], ["ve"], name="addeps"), n("Sqrt", ["ve"], ["s"], name="sqrt"), *norm,
             n("Mul", ["xn", "w"], ["xw"], name="scale"), n("Add", ["xw", "b"], ["Y"], name="shift")]
    inits = {"two": np.array(2.0, np.float32), "eps": np.array(1e-5, np.float32), "w": w, "b": b}
    model = models.make_model(nodes, [models.vi("X", ["N", T, D])], [models.vi("Y", ["N", T, D])], inits, opset=13)
    x = rng.normal(0, 2, (2, T, D)).astype(np.float32)
    r = rng.normal(0, 1, (2, T, D))
    an, exp = explain64(tmp_path, model, x, r, preset)
    assert [l.op for l in an.graph.layers] == ["LayerNormalization"]
    np.testing.assert_array_equal(an.graph.layers[0].weight, w)
    np.testing.assert_array_equal(an.graph.layers[0].bias, b)
    op_model, _ = layernorm_model(np.random.default_rng(0), T, D)
    op_model.graph.initializer[0].CopyFrom(helper.make_tensor("w", 1, [D], w.tolist()))
    op_model.graph.initializer[1].CopyFrom(helper.make_tensor("b", 1, [D], b.tolist()))
    _, want = explain64(tmp_path, op_model, x, r, preset)
    assert_close(exp.relevance, want.relevance, rtol=1e-6)


@pytest.mark.parametrize("sizes", [[3, 2, 1], None])
def test_split_outputs_are_slices_of_their_input(tmp_path, sizes):
    """Split (TorchScript's ``unbind`` of q, k, v): each output read is a slice layer; relevance
    goes back to its own part, the part no one reads gets none."""
    rng = np.random.default_rng(12)
    n = helper.make_node
    ins = ["X", "sizes"] if sizes else ["X"]
    nodes = [n("Split", ins, ["s0", "s1", "s2"], name="split", axis=2),
             n("Relu", ["s0"], ["r0"], name="relu"),
             n("Concat", ["r0", "s2"], ["Y"], name="cat", axis=2)]
    inits = {"sizes": np.array(sizes, np.int64)} if sizes else {}
    model = models.make_model(nodes, [models.vi("X", ["N", 3, 6])], [models.vi("Y", None)], inits)
    x = rng.normal(0, 1, (2, 3, 6)).astype(np.float32)
    first, last = (3, 1) if sizes else (2, 2)
    r = rng.normal(0, 1, (2, 3, first + last))
    an, exp = explain64(tmp_path, model, x, r)
    assert sorted(l.name for l in an.graph.layers if l.op == "Split") == ["split:0", "split:2"]
    want = np.zeros((2, 3, 6))
    want[:, :, :first] = r[:, :, :first]
    want[:, :, 6 - last:] = r[:, :, first:]
    assert_close(exp.relevance, want)
