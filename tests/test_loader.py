"""Loading: weights read from the file equal onnx's own decoding; bad files are ModelErrors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from lrpath_onnx import ModelError
from lrpath_onnx.graph import protoscan
from lrpath_onnx.graph.loader import load_model
from tests import models

FIXTURES = Path(__file__).parent / "fixtures"


def _big_model(rng, n=300):
    w = rng.standard_normal((n, n)).astype(np.float32)  # 360 KB: read straight from the file
    b = rng.standard_normal(n).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["X", "W", "b"], ["Y"], name="fc", transB=1)]
    return models.make_model(nodes, [models.vi("X", ["N", n])], [models.vi("Y", None)], {"W": w, "b": b})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scanned_weights_equal_onnx_decoding(tmp_path, seed):
    path = models.save(_big_model(np.random.default_rng(seed)), tmp_path / "big.onnx")
    skeleton, raw = protoscan.scan_file(path, min_bytes=1 << 16)
    assert [t.name for t in raw] == ["W"] and len(skeleton) < 2000
    loaded = load_model(path)
    ref = onnx.load(str(path))
    for t in ref.graph.initializer:
        np.testing.assert_array_equal(loaded.initializers[t.name], numpy_helper.to_array(t))
    assert "W" in loaded.stubbed and loaded.initializers["W"].flags["ALIGNED"]


@pytest.mark.parametrize("name", ["torch_cnn_bn", "torch_resnet_block", "torch_mlp_softmax"])
def test_fixture_weights_equal_onnx_decoding(name):
    path = FIXTURES / f"{name}.onnx"
    loaded = load_model(path)
    for t in onnx.load(str(path)).graph.initializer:
        np.testing.assert_array_equal(loaded.initializers[t.name], numpy_helper.to_array(t))


def test_malformed_files_are_model_errors(tmp_path):
    good = models.save(_big_model(np.random.default_rng(0)), tmp_path / "good.onnx").read_bytes()
    for i, data in enumerate([good[: len(good) // 2], good[:100], b"\x08" * 50, b"hello world"]):
        p = tmp_path / f"bad{i}.onnx"
        p.write_bytes(data)
        with pytest.raises(ModelError):
            load_model(p)


def test_non_finite_weights_and_new_opset_and_no_outputs_are_refused(tmp_path):
    model = _big_model(np.random.default_rng(0))
    w = numpy_helper.to_array(model.graph.initializer[0]).copy()
    w[3, 4] = np.nan
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "W"))
    with pytest.raises(ModelError, match="NaN"):
        load_model(models.save(model, tmp_path / "nan.onnx"))
    model = _big_model(np.random.default_rng(0))
    model.opset_import[0].version = onnx.defs.onnx_opset_version() + 5
    with pytest.raises(ModelError, match="opset"):
        load_model(models.save(model, tmp_path / "new.onnx"))
    model = _big_model(np.random.default_rng(0))
    del model.graph.output[:]
    with pytest.raises(ModelError, match="no graph outputs"):
        load_model(models.save(model, tmp_path / "noout.onnx"))


def test_external_data_outside_the_model_folder_is_refused_before_reading(tmp_path):
    model = _big_model(np.random.default_rng(0))
    t = model.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "../../etc/passwd"), ("offset", "0"), ("length", "360000")):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    sub = tmp_path / "models"
    sub.mkdir()
    path = sub / "evil.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelError, match="outside the model folder"):
        load_model(path)


def test_external_data_inside_the_folder_loads(tmp_path):
    model = _big_model(np.random.default_rng(1))
    want = numpy_helper.to_array(model.graph.initializer[0])
    onnx.save_model(model, str(tmp_path / "ext.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=1024)
    loaded = load_model(tmp_path / "ext.onnx")
    np.testing.assert_array_equal(loaded.initializers["W"], want)
