"""The analyzer's relevance equals zennit's on the same weights and rules.

Torch networks of four families (``tests/zennit_models.py``: VGG-like, ResNet basic blocks,
MobileNetV2 inverted residuals, smooth activations) are exported to ONNX and explained by
the analyzer with a preset; zennit explains the torch model with the composite of the same
name, BN merged by its canonizer, residual sums through its ``Sum`` layer (Norm rule).
"""

from __future__ import annotations

import numpy as np
import pytest

from lrpath_onnx import Analyzer
from tests import zennit_models as zm
from tests.requires import require

require(("torch", "pip install -e '.[test]'"), ("zennit", "pip install --no-deps zennit==0.5.1"),
        ("onnxscript", "pip install -e '.[test]'"))
import torch  # noqa: E402

PRESETS = ("epsilon-gamma-box", "epsilon-plus", "epsilon-alpha2-beta1")
TOL = 1e-4


def rel_l2(got, want) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model name, seed) → ONNX file of the legacy exporter, made once."""
    d = tmp_path_factory.mktemp("zennit")
    cache = {}

    def get(name, seed, dynamo=False):
        key = (name, seed, dynamo)
        if key not in cache:
            cache[key] = zm.export(zm.build(name, seed), d / f"{name}-{seed}-{int(dynamo)}.onnx", dynamo=dynamo)
        return cache[key]
    return get


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("name", zm.MODELS)
def test_relevance_equals_zennit(exported, name, preset, seed):
    x = zm.inputs(seed + 10)
    an = Analyzer(exported(name, seed), preset=preset, low=-1.0, high=1.0)
    exp = an.explain(x)
    want = zm.zennit_relevance(zm.build(name, seed, zennit_sum=True), x, exp.targets, preset)
    assert exp.relevance.shape == want.shape
    assert rel_l2(exp.relevance, want) <= TOL
    # and the explained logits are the torch model's
    with torch.no_grad():
        logits = zm.build(name, seed)(torch.tensor(x)).numpy()
    np.testing.assert_allclose(exp.logits, logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", zm.MODELS)
def test_dynamo_exports_explain_like_legacy_ones(exported, name):
    """torch's default (dynamo) exporter writes other graphs (opset 18, its own names, ReduceMean
    for adaptive pooling): the relevance is zennit's all the same."""
    x = zm.inputs(3)
    an = Analyzer(exported(name, 0, dynamo=True), preset="epsilon-gamma-box", low=-1.0, high=1.0)
    exp = an.explain(x)
    want = zm.zennit_relevance(zm.build(name, 0, zennit_sum=True), x, exp.targets, "epsilon-gamma-box")
    assert rel_l2(exp.relevance, want) <= TOL


@pytest.mark.parametrize("name", zm.MODELS)
def test_dynamo_exports_name_layers_by_their_torch_modules(exported, name):
    """The dynamo exporter names nodes ``node_conv2d_3``; its ``name_scopes`` metadata gives the
    module, so layers are named as in ``named_modules()`` and as in a legacy export (a Conv
    with a BatchNorm folded in, which the dynamo exporter scopes to the BatchNorm after it,
    by its weight's parameter name)."""
    def named(path):
        return [l.name for l in Analyzer(path, low=-1.0, high=1.0).graph.layers if l.op in ("Conv", "Gemm")]

    modules = dict(zm.build(name, 0).named_modules())
    dyn, legacy = named(exported(name, 0, dynamo=True)), named(exported(name, 0))
    assert len(dyn) == len(legacy) > 0 and set(dyn) <= set(modules) and set(legacy) <= set(modules)
    assert dyn == legacy


@pytest.mark.parametrize("name", ["resnet", "mobilenet"])
def test_targets_other_than_top1_match_too(exported, name):
    x = zm.inputs(5)
    an = Analyzer(exported(name, 0), preset="epsilon-gamma-box", low=-1.0, high=1.0)
    exp = an.explain(x, target=[3, 7])
    want = zm.zennit_relevance(zm.build(name, 0, zennit_sum=True), x, [3, 7], "epsilon-gamma-box")
    assert rel_l2(exp.relevance, want) <= TOL
