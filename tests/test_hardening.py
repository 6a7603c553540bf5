"""Hardening: more bad inputs through the real CLI (with ``test_cli.CASES``, the audit and report
cases: over 30), image modes that must simply work, numerical safety, a SIGKILL in the middle
of a multi-image run, and fuzzing of the loader/planner and of the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from lrpath_onnx import Analyzer
from lrpath_onnx.errors import LrpathError
from lrpath_onnx.graph.canonical import build_layer_graph
from lrpath_onnx.graph.loader import load_model
from lrpath_onnx.models import registry
from lrpath_onnx.plan.planner import make_plan
from tests import models
from tests.test_cli import assert_one_line_error, lrpath

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "models" / "digits"
#: examples per fuzz target; a long run sets LRPATH_FUZZ_EXAMPLES=10000
FUZZ = int(os.environ.get("LRPATH_FUZZ_EXAMPLES", "2000"))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A small CNN, an image, and every malformed variant of both."""
    d = tmp_path_factory.mktemp("hard")
    model, _ = models.small_cnn(np.random.default_rng(0), softmax=True)
    models.save(model, d / "cnn.onnx")
    Image.fromarray((np.random.default_rng(1).random((20, 16, 3)) * 255).astype(np.uint8)).save(d / "a.png")
    (d / "tensor.onnx").write_bytes(numpy_helper.from_array(np.ones((3, 3), np.float32)).SerializeToString())

    def variant(name, change):
        g = onnx.load(d / "cnn.onnx")
        change(g)
        onnx.save(g, d / name)

    variant("noout.onnx", lambda g: g.graph.ClearField("output"))
    variant("opset.onnx", lambda g: g.opset_import[0].__setattr__("version", 99))
    variant("cycle.onnx", lambda g: g.graph.node[0].input.__setitem__(0, g.graph.node[-1].output[0]))

    def outside(g):
        t = g.graph.initializer[0]
        t.data_location = TensorProto.EXTERNAL
        t.ClearField("raw_data")
        t.ClearField("float_data")
        e = t.external_data.add()
        e.key, e.value = "location", "../../etc/passwd"
    variant("ext.onnx", outside)

    def nan(g):
        a = numpy_helper.to_array(g.graph.initializer[0]).copy()
        a.flat[0] = np.nan
        g.graph.initializer[0].CopyFrom(numpy_helper.from_array(a, g.graph.initializer[0].name))
    variant("nan.onnx", nan)
    flat = [helper.make_node("Gemm", ["X", "W"], ["Y"], name="fc", transB=1)]
    models.save(models.make_model(flat, [models.vi("X", ["N", 12])], [models.vi("Y", None)],
                                  {"W": np.ones((3, 12), np.float32)}), d / "vector.onnx")
    huge = [helper.make_node("Conv", ["X", "W"], ["c"], name="conv", kernel_shape=[3, 3]),
            helper.make_node("GlobalAveragePool", ["c"], ["p"], name="pool"),
            helper.make_node("Flatten", ["p"], ["Y"], name="flat")]
    models.save(models.make_model(huge, [models.vi("X", ["N", 3, 30000, 30000])], [models.vi("Y", None)],
                                  {"W": np.ones((2, 3, 3, 3), np.float32)}), d / "huge.onnx")
    np.save(d / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(d / "str.npy", np.array(["a"] * 3))
    np.save(d / "nan.npy", np.full((3, 12, 12), np.nan, np.float32))
    (d / "labels.txt").write_text("a\nb\n")
    return d


EXTRA_CASES = {
    "protobuf that is not a model": (["explain", "tensor.onnx", "a.png"], "no graph in the protobuf"),
    "no graph outputs": (["explain", "noout.onnx", "a.png"], "no graph outputs"),
    "opset far too new": (["explain", "opset.onnx", "a.png"], "opset 99"),
    "cyclic graph": (["explain", "cycle.onnx", "a.png"], "cycle"),
    "external data outside the folder": (["explain", "ext.onnx", "a.png"], "outside the model folder"),
    "NaN initializer": (["explain", "nan.onnx", "a.png"], "NaN or infinite"),
    "input not an image tensor": (["explain", "vector.onnx", "a.png"], "not an image"),
    "object .npy (pickle)": (["explain", "cnn.onnx", "obj.npy"], "no pickles"),
    "string .npy": (["explain", "cnn.onnx", "str.npy"], "only integer or float"),
    "non-finite .npy": (["explain", "cnn.onnx", "nan.npy"], "finite"),
    "labels file too short": (["explain", "cnn.onnx", "a.png", "--labels", "labels.txt"], "has 2 lines"),
    "decompression bomb": (["explain", "cnn.onnx", "a.png", "--max-pixels", "100"], "more than the limit"),
    "model input a decompression bomb": (["explain", "huge.onnx", "a.png"],
                                         "the model's input is 900,000,000 pixels, more than the limit"),
    "cuda where none is usable": (["explain", "cnn.onnx", "a.png", "--device", "cuda"], "no usable CUDA GPU"),
    "paths --k 0": (["paths", "cnn.onnx", "a.png", "--k", "0"], "--k"),
    "optimize --k-max 0": (["optimize", "cnn.onnx", "a.png", "--k-max", "0"], "--k-max"),
    "deconv channel out of range": (["deconv", "cnn.onnx", "a.png", "--layer", "conv1", "--channels", "99"],
                                    "has 6 channels"),
    "deconv without a layer": (["deconv", "cnn.onnx", "a.png"], "--layer"),
    "unknown device": (["explain", "cnn.onnx", "a.png", "--device", "tpu"], "--device"),
}


@pytest.mark.parametrize("case", list(EXTRA_CASES))
def test_more_bad_inputs_are_one_line_exit_2_and_write_nothing(zoo, tmp_path, case):
    args, fragment = EXTRA_CASES[case]
    out = tmp_path / "out"
    res = lrpath(*args, "--out", out, cwd=zoo)
    assert_one_line_error(res, fragment, out=out)


def test_catalogue_has_at_least_30_cases():
    from tests import test_audit, test_cli

    audit_cases = test_audit.test_bad_audit_input_is_one_line_and_writes_nothing.pytestmark[0].args[1]
    assert len(test_cli.CASES) + len(EXTRA_CASES) + len(audit_cases) >= 30


def test_odd_image_modes_are_converted_not_refused(zoo, tmp_path):
    rng = np.random.default_rng(3)
    rgb = Image.fromarray((rng.random((20, 16, 3)) * 255).astype(np.uint8))
    files = {"i16.png": Image.fromarray((rng.random((20, 16)) * 65535).astype(np.uint16)),
             "cmyk.jpg": rgb.convert("CMYK"), "palette.png": rgb.convert("P"), "rgba.png": rgb.convert("RGBA"),
             "la.png": rgb.convert("LA"), "one_pixel.png": Image.new("RGB", (1, 1), (200, 30, 30)),
             "mono.png": rgb.convert("1")}
    for name, img in files.items():
        img.save(tmp_path / name)
    assert Image.open(tmp_path / "i16.png").mode.startswith("I")
    out = tmp_path / "out"
    res = lrpath("explain", zoo / "cnn.onnx", *(tmp_path / n for n in files), "--out", out)
    assert res.returncode == 0, res.stderr
    for name in files:
        rel = np.load(out / Path(name).stem / "relevance.npy")
        assert rel.shape == (3, 12, 12) and np.isfinite(rel).all()


def test_more_paths_asked_than_exist_gives_all_there_are(tmp_path):
    out = tmp_path / "out"
    res = lrpath("paths", "mnist-vgg", DIGITS / "digit_3.png", "--per-layer", "1", "--k", "50", "--out", out)
    assert res.returncode == 0, res.stderr
    rec = json.loads(next(out.rglob("paths.json")).read_text())
    assert len(rec["paths"]) == 1  # one neuron per layer: exactly one path


def test_auto_device_falls_back_to_the_cpu(zoo, tmp_path):
    res = lrpath("explain", zoo / "cnn.onnx", zoo / "a.png", "--device", "auto", "--out", tmp_path / "o")
    assert res.returncode == 0, res.stderr
    info = json.loads((tmp_path / "o" / "a" / "explanation.json").read_text())
    assert info["device"] == "cpu" and info["provider"] == "CPUExecutionProvider"


def test_overflowing_relevance_is_an_error_naming_the_layer(zoo, tmp_path):
    """Weights that overflow float32 in the forward pass: no heatmap is written, the error
    names the layer where relevance stopped being finite."""
    g = onnx.load(zoo / "cnn.onnx")
    for t in g.graph.initializer:  # finite weights (the loader checks that), infinite logits
        if t.name in ("W3", "W4"):
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(1e30), t.name))
    onnx.save(g, tmp_path / "huge.onnx")
    out = tmp_path / "out"
    res = lrpath("explain", tmp_path / "huge.onnx", zoo / "a.png", "--out", out, "--preset", "epsilon-plus")
    assert_one_line_error(res, "NaN or infinite at layer 'fc2'", out=out)


def test_zero_layers_divide_by_nothing(tmp_path):
    """LRP-0 through a layer whose every pre-activation is exactly 0: the stabiliser keeps 0/0 at 0."""
    nodes = [helper.make_node("Conv", ["X", "W"], ["c"], name="conv", kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "V"], ["Y"], name="fc", transB=1)]
    path = models.save(models.make_model(nodes, [models.vi("X", ["N", 1, 5, 5])], [models.vi("Y", None)],
                                         {"W": np.zeros((2, 1, 3, 3), np.float32), "V": np.ones((2, 18), np.float32)}),
                       tmp_path / "zero.onnx")
    from lrpath_onnx import Analyzer

    for preset in ("epsilon-plus", "paper"):
        an = Analyzer(path, preset=preset, rules=["conv=zero", "fc=zero"])
        exp = an.explain(np.ones((1, 1, 5, 5), np.float32), target=0)
        assert np.isfinite(exp.relevance).all() and not exp.relevance.any()


def test_sigkill_during_a_multi_image_explain_leaves_only_complete_files(tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    for i in range(120):
        Image.open(DIGITS / f"digit_{i % 10}.png").save(images / f"d{i:03d}.png")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-c", "from lrpath_onnx.cli.main import entry; entry()", "explain",
                             "mnist-vgg", *sorted(images.iterdir()), "--out", str(out), "--batch-size", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(list(out.glob("d*/explanation.json"))) < 3:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    folders = sorted(p for p in out.iterdir() if p.is_dir())
    done = [f for f in folders if (f / "explanation.json").exists()]
    assert 3 <= len(done) < 120, "the kill must land in the middle of the run"
    for f in folders:  # a write cut short may leave its temporary, but only hidden, never under a final name
        for p in f.iterdir():
            assert ".tmp-" not in p.name or p.name.startswith("."), f"temporary {p} is visible"
    visible = [p for f in folders for p in f.iterdir() if not p.name.startswith(".")]
    for p in visible:  # every file under its final name is complete
        if p.suffix == ".npy":
            assert np.load(p).shape == (1, 28, 28)
        elif p.suffix == ".png":
            with Image.open(p) as im:
                im.load()
        elif p.suffix == ".json":
            json.loads(p.read_text())
    from lrpath_onnx.io.outputs import clean_temporaries

    clean_temporaries(out, depth=2)
    assert not [p for p in out.rglob(".*")]


# ------------------------------------------------------------------------- fuzzing
def _good_bytes() -> bytes:
    model, _ = models.small_cnn(np.random.default_rng(0), softmax=True)
    return model.SerializeToString()


GOOD = _good_bytes()


def _load_and_plan(data: bytes, folder: Path) -> None:
    path = folder / "m.onnx"
    path.write_bytes(data)
    try:
        model = load_model(path)
        make_plan(build_layer_graph(model), "epsilon-gamma-box")
    except LrpathError:
        pass  # the one allowed failure


@settings(max_examples=FUZZ, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       st.one_of(st.none(), st.integers(0, len(GOOD))), st.binary(max_size=16))
def test_fuzz_mutated_onnx_bytes(tmp_path, flips, cut, junk):
    data = bytearray(GOOD)
    for pos, val in flips:
        data[pos] = val
    if cut is not None:
        data = data[:cut] + junk
    _load_and_plan(bytes(data), tmp_path)


OPS = ["Conv", "Relu", "MaxPool", "Gemm", "Add", "Concat", "Flatten", "Reshape", "Sigmoid", "BatchNormalization",
       "AveragePool", "Transpose", "Identity", "Softmax", "LRN", "Mul", ""]


@settings(max_examples=max(FUZZ // 2, 100), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_graphs(tmp_path, data):
    """Structural mutations of a valid model: op types, inputs, attributes, initializer shapes."""
    g = onnx.ModelProto()
    g.ParseFromString(GOOD)
    nodes = g.graph.node
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["op", "input", "attr", "init", "drop", "dup"]))
        n = nodes[data.draw(st.integers(0, len(nodes) - 1))]
        if kind == "op":
            n.op_type = data.draw(st.sampled_from(OPS))
        elif kind == "input" and n.input:
            names = [t for m in nodes for t in m.output] + [t.name for t in g.graph.initializer] + ["", "ghost"]
            n.input[data.draw(st.integers(0, len(n.input) - 1))] = data.draw(st.sampled_from(names))
        elif kind == "attr" and n.attribute:
            a = n.attribute[data.draw(st.integers(0, len(n.attribute) - 1))]
            if a.ints:
                a.ints[data.draw(st.integers(0, len(a.ints) - 1))] = data.draw(st.integers(-3, 9))
            else:
                a.i = data.draw(st.integers(-3, 9))
        elif kind == "init" and g.graph.initializer:
            t = g.graph.initializer[data.draw(st.integers(0, len(g.graph.initializer) - 1))]
            if t.dims:
                t.dims[data.draw(st.integers(0, len(t.dims) - 1))] = data.draw(st.integers(0, 40))
        elif kind == "drop" and len(nodes) > 1:
            del nodes[data.draw(st.integers(0, len(nodes) - 1))]
        elif kind == "dup":
            nodes.add().CopyFrom(n)
    _load_and_plan(g.SerializeToString(), tmp_path)


CLI_POOL = {
    "command": ["plan", "explain", "paths", "deconv", "optimize", "audit", "report"],
    "options": [["--preset", "paper"], ["--preset", "nope"], ["--rule", "conv1=gamma:0.5"], ["--rule", "x"],
                ["--rule", "fc2=alphabeta:2,1"], ["--rule", "*=epsilon:-1"], ["--target", "1"], ["--target", "99"],
                ["--target", "conv1:2"], ["--target", "conv1:2:3:3"], ["--target", ":"], ["--batch-size", "2"],
                ["--batch-size", "-1"], ["--k", "2"], ["--k", "0"], ["--per-layer", "3"], ["--layer", "conv1"],
                ["--layer", "pool1"], ["--top", "2"], ["--mean", "0.5"], ["--std", "0"], ["--std", "1,2"],
                ["--size", "12"], ["--size", "0"], ["--layout", "nhwc"], ["--device", "auto"], ["--low", "0"],
                ["--high", "1"], ["--images", "."], ["--k-max", "2"], ["--thresholds", "0,x"], ["--whole-map"],
                ["--checks", "region"], ["--max-pixels", "1"], ["--fit", "stretch"], ["--scale", "0"]],
}


@settings(max_examples=max(FUZZ // 10, 60), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.sampled_from(CLI_POOL["command"]), st.lists(st.sampled_from(CLI_POOL["options"]), max_size=4),
       st.sampled_from(["a.png", "tensor.onnx", "t.npy", "missing.png"]))
def test_fuzz_command_lines(zoo_fuzz, capsys, command, options, inp):
    """Random (mostly wrong) command lines, in process: a result, or one error line and exit 2 (audit:
    1 when a check fails); never an internal error (exit 3) or an escaping exception."""
    from lrpath_onnx.cli.main import main

    out = zoo_fuzz / "out"
    args = [command, str(zoo_fuzz / "cnn.onnx")] + ([] if command in ("plan", "audit") else [str(zoo_fuzz / inp)])
    if command == "audit":
        args += ["--images", str(zoo_fuzz / "imgs")]
    for o in options:
        args += [a if a != "." else str(zoo_fuzz / "imgs") for a in o]
    if command != "plan":
        args += ["--out", str(out)]
    rc = main(args)
    err = capsys.readouterr().err
    assert rc in ((0, 1, 2) if command == "audit" else (0, 2)), (args, err)
    assert "Traceback" not in err and "internal error" not in err, (args, err)
    if rc == 2:
        assert len([l for l in err.splitlines() if l.startswith("error: ")]) == 1, (args, err)


@pytest.fixture(scope="module")
def zoo_fuzz(zoo):
    imgs = zoo / "imgs"
    if not imgs.exists():
        imgs.mkdir()
        Image.open(zoo / "a.png").save(imgs / "a.png")
    np.save(zoo / "t.npy", np.random.default_rng(2).random((3, 12, 12)).astype(np.float32))
    return zoo


def test_a_wrong_inferred_shape_does_not_break_the_session(monkeypatch):
    """The session declares its added outputs with the graph's inferred shapes (so onnxruntime
    fuses as in the model's own session); an inference that got a dim wrong must not cost the
    explanation."""
    an = Analyzer(registry.get("mnist-vgg").path(), low=0.0, high=1.0, forward_engine="onnxruntime")
    x = np.random.default_rng(0).uniform(size=(2, 1, 28, 28)).astype(np.float32)
    want = an.explain(x).relevance
    name = next(r for r in sorted(an.requests()) if len(an.graph.shapes.get(r) or ()) == 4)
    shape = an.graph.shapes[name]
    an.graph.shapes[name] = (None, shape[1] + 3) + tuple(shape[2:])
    an._runtime = an._engine = None
    np.testing.assert_array_equal(an.explain(x).relevance, want)
    # an onnxruntime that refuses the declared shapes: the session is made without them
    import onnxruntime as ort

    real, refused = ort.InferenceSession, set()

    def strict(data, opts=None, *args, **kwargs):
        proto = onnx.ModelProto.FromString(data)
        saved = opts is not None and opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if not saved and any(o.type.tensor_type.HasField("shape") for o in proto.graph.output):
            refused.add(data)  # the model with declared shapes (onnxruntime's own saved graph is taken back)
            raise RuntimeError("shape mismatch")
        return real(data, opts, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", strict)
    an._runtime = an._engine = None
    np.testing.assert_array_equal(an.explain(x).relevance, want)
    assert len(refused) == 1


def _batch_of_one_inside(tmp_path) -> Path:
    """An open batch axis, and a Reshape to (1, -1) inside (as exporters bake a dummy input's
    batch size into a Reshape): a batch of several fails in onnxruntime, one sample runs."""
    rng = np.random.default_rng(11)
    inits = {"W": rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.4,
             "A": rng.standard_normal((4 * 6 * 6, 5)).astype(np.float32) * 0.1,
             "shape": np.array([1, -1], np.int64)}
    nodes = [helper.make_node("Conv", ["X", "W"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "shape"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "A"], ["logits"], name="head")]
    model = models.make_model(nodes, [models.vi("X", ["N", 3, 6, 6])], [models.vi("logits", ["N", 5])], inits)
    return models.save(model, tmp_path / "one.onnx")


def test_a_model_with_a_batch_of_one_inside_is_explained_one_sample_at_a_time(tmp_path):
    path = _batch_of_one_inside(tmp_path)
    x = np.random.default_rng(0).random((3, 3, 6, 6)).astype(np.float32)
    an = Analyzer(path, rules=["*=zero"])
    alone = [an.explain(x[i:i + 1]) for i in range(3)]
    assert not an.one_at_a_time
    exp = an.explain(x)
    assert an.one_at_a_time
    np.testing.assert_allclose(exp.relevance, np.concatenate([e.relevance for e in alone]), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(exp.logits, np.concatenate([e.logits for e in alone]), rtol=1e-6)
    for i in range(3):
        np.save(tmp_path / f"x{i}.npy", x[i])
    npys = [tmp_path / f"x{i}.npy" for i in range(3)]
    res = lrpath("explain", path, *npys, "--out", tmp_path / "ex", "--batch-size", "3")
    assert res.returncode == 0 and "[E:onnxruntime" not in res.stderr, res.stderr
    grads = Analyzer(path).gradient(x)  # a fresh analyzer: the gradient finds it out too
    np.testing.assert_allclose(grads.relevance, np.concatenate([an.gradient(x[i:i + 1]).relevance for i in range(3)]),
                               rtol=1e-6, atol=1e-8)
    start = np.random.default_rng(1).standard_normal((3, 5)).astype(np.float32)  # a row per sample
    joined = Analyzer(path, rules=["*=zero"]).relevance_from(x, "logits", start)
    np.testing.assert_allclose(joined.relevance, np.concatenate(
        [an.relevance_from(x[i:i + 1], "logits", start[i:i + 1]).relevance for i in range(3)]), rtol=1e-6, atol=1e-8)
    with pytest.raises(LrpathError, match="one sample at a time"):
        an.explain(x, keep_forward=True)
    res = lrpath("evaluate", path, *npys, "--out", tmp_path / "ev", "--steps", "4", "--patch", "2")  # every method
    assert res.returncode == 0 and "[E:onnxruntime" not in res.stderr, res.stderr
    assert len(json.loads((tmp_path / "ev" / "evaluate.json").read_text())["images"]) == 3


def test_onnxruntime_failing_on_every_input_is_one_line_without_its_own_log(tmp_path):
    """A model that fails on any input: one line naming onnxruntime's error, not its log too."""
    path = _batch_of_one_inside(tmp_path)
    model = onnx.load(str(path))
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.zeros((7, 5), np.float32), "A"))
    onnx.save(model, str(path))
    np.save(tmp_path / "x.npy", np.zeros((3, 6, 6), np.float32))
    out = tmp_path / "bad"
    for cmd in ("explain", "evaluate"):
        assert_one_line_error(lrpath(cmd, path, tmp_path / "x.npy", "--out", out), "onnxruntime failed on",
                              out=out)
