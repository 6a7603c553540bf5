"""AttnLRP and CP-LRP equal LXT's (Achtibat et al., ICML 2024) on torch ViTs exported to ONNX.

Five ViT families (``tests/vit_models.py``: class token or mean pooling, erf or tanh GELU,
hand-written attention, ``scaled_dot_product_attention``, ``nn.MultiheadAttention`` or whole
``nn.TransformerEncoderLayer``s, grey or RGB, 2–3 blocks), two seeds each, top-1 and given
targets, three exports (TorchScript at opset 17 and 16, dynamo at 18): the analyzer explains
the ONNX export, LXT's rule functions explain the torch model by Gradient × Input in float64.
"""

from __future__ import annotations

import numpy as np
import pytest

from lrpath_onnx import Analyzer
from tests import vit_models as vm
from tests.requires import require

require(("torch", "pip install -e '.[test]'"), ("lxt", "pip install --no-deps lxt==2.1"),
        ("transformers", "pip install -e '.[test]'"))

TOL = 1e-4


def rel_l2(got, want) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("vit")
    cache = {}

    def get(name, seed, how="torchscript"):
        if (name, seed, how) not in cache:
            cache[name, seed, how] = vm.export(vm.build(name, seed), name, d / f"{name}-{seed}-{how}.onnx",
                                               dynamo=how == "dynamo", opset=16 if how == "opset16" else 17)
        return cache[name, seed, how]
    return get


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("preset", ["attnlrp", "cp-lrp"])
@pytest.mark.parametrize("name", list(vm.CONFIGS))
def test_relevance_equals_lxt(exported, name, preset, seed):
    x = vm.inputs(name, seed + 10, n=3)
    an = Analyzer(exported(name, seed, vm.exporters(name)[0]), preset=preset)
    for target in (None, [3, 7, 1]):
        exp = an.explain(x, target=target)
        want = vm.lxt_relevance(name, seed, x, exp.targets, preset)
        assert rel_l2(exp.relevance, want) <= TOL, (name, preset, target)


@pytest.mark.parametrize("how", ["dynamo", "opset16"])
@pytest.mark.parametrize("preset", ["attnlrp", "cp-lrp"])
@pytest.mark.parametrize("name", [n for n in vm.CONFIGS if len(vm.exporters(n)) > 1])
def test_other_exports_equal_lxt_too(exported, name, preset, how):
    """torch's default exporter writes other graphs (opset 18; attention's batch and heads merged
    into one axis around scaled_dot_product_attention's kᵀ), and at opset 16 LayerNorm comes
    written out in ReduceMean, Sub, Pow, Sqrt, Div, Mul, Add: the same relevance."""
    x = vm.inputs(name, 20, n=2)
    an = Analyzer(exported(name, 0, how), preset=preset)
    if how == "opset16":
        assert sum(l.op == "LayerNormalization" for l in an.graph.layers) >= 5
    exp = an.explain(x)
    want = vm.lxt_relevance(name, 0, x, exp.targets, preset)
    assert rel_l2(exp.relevance, want) <= TOL
    for i in range(2):  # per-sample sums hold wherever the batch axis went
        assert np.isfinite(exp.conservation(i)["ratio"])


def test_attnlrp_and_cp_lrp_differ_where_attention_matters(exported):
    """The two presets are not the same computation: CP-LRP sends nothing through q and k."""
    x = vm.inputs("vit-digits", 4, n=2)
    a = Analyzer(exported("vit-digits", 0), preset="attnlrp").explain(x, target=[2, 2]).relevance
    c = Analyzer(exported("vit-digits", 0), preset="cp-lrp").explain(x, target=[2, 2]).relevance
    assert rel_l2(a, c) > 1e-2


def test_auto_picks_attnlrp_for_a_vit(exported):
    an = Analyzer(exported("vit-rgb-tanh", 0))
    assert an.plan().applied == "attnlrp"


@pytest.fixture(scope="module")
def hf_exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("hfvit")
    cache = {}

    def get(seed, dynamo):
        if (seed, dynamo) not in cache:
            import torch

            model = vm.logits_of(vm.hf_vit(seed))
            path = d / f"hf-{seed}-{dynamo}.onnx"
            with torch.no_grad():
                if dynamo:
                    torch.onnx.export(model, (torch.zeros(2, 3, 32, 32),), str(path), dynamo=True, opset_version=18,
                                      input_names=["input"], output_names=["logits"],
                                      dynamic_shapes={"x": {0: torch.export.Dim("N", min=2, max=64)}})
                else:
                    torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                                      input_names=["input"], output_names=["logits"],
                                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
            cache[seed, dynamo] = path
        return cache[seed, dynamo]
    return get


@pytest.mark.parametrize("preset", ["attnlrp", "cp-lrp"])
def test_hugging_face_vit_equals_lxt_with_its_own_patches(hf_exported, preset):
    """transformers' ViTForImageClassification, explained from its TorchScript and its dynamo
    export, against LXT's own patch functions applied to the torch model (not a
    re-implementation of them)."""
    x = np.random.default_rng(7).uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
    want = vm.hf_lxt_relevance(0, x, [3, 8], preset)
    for dynamo in (False, True):
        exp = Analyzer(hf_exported(0, dynamo), preset=preset).explain(x, target=[3, 8])
        assert rel_l2(exp.relevance, want) <= TOL, dynamo
