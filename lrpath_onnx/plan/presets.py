"""Rule presets, registered by name (zennit's composites, as data), and ``auto``.

A preset maps a LayerGraph to rules for its Conv and dense layers; every other layer keeps
its handler's treatment. ``epsilon-gamma-box``, ``epsilon-plus`` and
``epsilon-alpha2-beta1`` are zennit's composites of the same names (same rules, same
parameters and stabilisers), so their relevance equals zennit's. ``conserving`` is made for
residual, depthwise and BatchNorm-heavy networks, where folded BN biases absorb nearly all
relevance under those composites (EfficientNet-Lite0: 98–99.5 %). ``auto`` picks by graph
analysis and says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import networkx as nx

from ..errors import RuleError
from ..graph.layers import (ActivationLayer, AffineLayer, BilinearLayer, ConvLayer, DenseLayer, GateLayer, Layer,
                            LayerGraph, LayerNormLayer, MergeLayer, ReduceLayer, SoftmaxLayer)
from .rules import Rule, make_rule

PresetFn = Callable[[LayerGraph], dict[str, Rule]]
PRESETS: dict[str, tuple[PresetFn, str]] = {}


def register_preset(name: str, doc: str) -> Callable[[PresetFn], PresetFn]:
    """Decorator registering a preset under ``name``."""
    def deco(fn: PresetFn) -> PresetFn:
        PRESETS[name] = (fn, doc)
        return fn
    return deco


def first_layers(graph: LayerGraph) -> list[Layer]:
    """Conv/dense layers with no linear layer upstream: those that see the (normalised) input."""
    dag = graph.dag()
    linear = {l.name for l in graph.linear_layers()}
    return [l for l in graph.linear_layers()
            if isinstance(l, (ConvLayer, DenseLayer)) and not (nx.ancestors(dag, l.name) & linear)]


def inner_affine_layers(graph: LayerGraph) -> list[Layer]:
    """Constant affine maps with a shift that no Conv/dense layer took in: a BatchNorm after a
    concat, a pool or a ReLU (DenseNet, a Keras dense head), not one of the input's own
    normalisation (a linear layer is upstream) nor a quantized model's BatchNorm after its conv.

    ``auto`` gives them LRP-0 with the shift as a bias (``shift``) where it picks
    ``epsilon-gamma-box``, whose rules keep biases everywhere else. zennit's composites pass
    relevance through a BatchNorm its canonizer cannot merge, and so does the named preset;
    passed through, relevance reaches units the shift alone switched on (a ReLU's zeros
    before it), and on a trained DenseNet the maps were less faithful (README)."""
    dag = graph.dag()
    linear = {l.name for l in graph.linear_layers()}
    return [l for l in graph.layers if isinstance(l, AffineLayer) and bool((l.shift != 0).any())
            and nx.ancestors(dag, l.name) & linear and not _after_linear(graph, l)]


def _after_linear(graph: LayerGraph, layer: Layer) -> bool:
    """Whether ``layer`` reads a Conv/dense output with only roundings in between (a quantized
    model's BatchNorm after its conv, which the float model folds into the conv)."""
    prev = graph.producer.get(layer.inputs[0])
    while isinstance(prev, ActivationLayer) and prev.fn == "fakequant":
        prev = graph.producer.get(prev.inputs[0])
    return isinstance(prev, (ConvLayer, DenseLayer))


def _split_convs(graph: LayerGraph, upper: Rule, lower: Rule, dense: Rule, box: bool = True,
                 lower_fraction: float = 0.5, grouped: Rule | None = None) -> dict[str, Rule]:
    """z^B on the first layers (``box``), ``lower``/``upper`` on the lower/upper share of the
    other convs (``grouped`` on grouped/depthwise ones, if given), ``dense`` on dense layers."""
    firsts = {l.name for l in first_layers(graph)} if box else set()
    convs = [l for l in graph.layers if isinstance(l, ConvLayer) and l.name not in firsts]
    n_lower = math.ceil(len(convs) * lower_fraction)
    rules: dict[str, Rule] = {name: make_rule("zbox") for name in firsts}
    for i, layer in enumerate(convs):
        rules[layer.name] = lower if i < n_lower else upper
        if grouped is not None and layer.geometry.groups > 1:
            rules[layer.name] = grouped
    for layer in graph.layers:
        if isinstance(layer, DenseLayer) and layer.name not in rules:
            rules[layer.name] = dense
    return rules


@register_preset("paper", "the paper's split: z^B first layer, γ=0.25 on the lower half of the "
                          "conv layers, ε=0.25 on the upper half, LRP-0 on dense layers")
def _paper(graph: LayerGraph) -> dict[str, Rule]:
    return _split_convs(graph, upper=make_rule("epsilon", 0.25), lower=make_rule("gamma", 0.25),
                        dense=make_rule("zero"))


@register_preset("epsilon-gamma-box", "z^B first layer, generalized γ=0.25 on every other conv, ε=1e-6 on "
                                      "dense layers and average pools (zennit's EpsilonGammaBox); for "
                                      "plain ReLU chains such as VGG")
def _epsilon_gamma_box(graph: LayerGraph) -> dict[str, Rule]:
    return _split_convs(graph, upper=make_rule("gamma", 0.25), lower=make_rule("gamma", 0.25),
                        dense=make_rule("epsilon", 1e-6))


@register_preset("epsilon-plus", "z⁺ on every conv, ε=1e-6 on dense layers (zennit's EpsilonPlus)")
def _epsilon_plus(graph: LayerGraph) -> dict[str, Rule]:
    return _split_convs(graph, upper=make_rule("zplus"), lower=make_rule("zplus"),
                        dense=make_rule("epsilon", 1e-6), box=False)


@register_preset("epsilon-alpha2-beta1", "α2β1 on every conv, ε=1e-6 on dense layers (zennit's EpsilonAlpha2Beta1)")
def _epsilon_alpha2_beta1(graph: LayerGraph) -> dict[str, Rule]:
    return _split_convs(graph, upper=make_rule("alphabeta", 2, 1), lower=make_rule("alphabeta", 2, 1),
                        dense=make_rule("epsilon", 1e-6), box=False)


@register_preset("conserving", "for residual, depthwise and BatchNorm-heavy nets: z^B first layer, z⁺ on "
                               "grouped/depthwise convs (zero-safe: its denominators are sums of terms ≥ 0), "
                               "generalized γ=0.25 on the other convs and on dense layers applied per position "
                               "(a ConvNeXt's 1×1 convolutions), ε=1e-6 on the other dense layers, all without "
                               "biases (outputs no input contributes to pass theirs on by w²), so relevance "
                               "is conserved")
def _conserving(graph: LayerGraph) -> dict[str, Rule]:
    """A dense layer applied per position or token (input rank > 2: a ConvNeXt's pointwise
    Linear, an MLP-Mixer's) is a 1×1 convolution and takes γ as the convolutions do. Under ε
    without its bias, such a layer after a LayerNorm reads signed values whose sums nearly
    cancel: single ratios grow without bound and the LayerNorm's bias takes the difference
    (a ConvNeXt's conservation ratio reached 10⁵); γ's denominators do not cancel."""
    gamma = make_rule("gamma", 0.25, bias=False)
    rules = _split_convs(graph, upper=gamma, lower=gamma, dense=make_rule("epsilon", 1e-6, bias=False),
                         grouped=make_rule("zplus", 0.0, bias=False))
    firsts = {l.name for l in first_layers(graph)}
    rules.update({l.name: gamma for l in graph.layers
                  if isinstance(l, DenseLayer) and l.rank > 2 and l.name not in firsts})
    return rules


def _transformer(graph: LayerGraph, bilinear: Rule) -> dict[str, Rule]:
    """AttnLRP's composite as LXT computes it (Gradient × Input, no stabiliser): LRP-0 with a
    zero-safe division on every linear layer (the patch embedding and the head too), LayerNorm
    (σ held constant), residual sums and constant additions (position embeddings absorb their
    share, as biases); ``bilinear`` on MatMuls of two activations; softmax and element-wise
    activations keep their handlers' treatment. (ε = 1e-6 instead moves the trained mnist-vit's
    heatmaps up to 69 % rel-L2 away from LXT's: attention's logits hold many near-cancelling
    sums; ``--rule '*=epsilon:1e-6'`` asks for it.)"""
    zero = make_rule("zero")
    rules: dict[str, Rule] = {}
    for layer in graph.layers:
        if isinstance(layer, (ConvLayer, DenseLayer, LayerNormLayer, MergeLayer, ReduceLayer)):
            rules[layer.name] = zero
        elif isinstance(layer, AffineLayer) and bool((layer.shift != 0).any()):
            rules[layer.name] = make_rule("shift")
        elif isinstance(layer, BilinearLayer):
            rules[layer.name] = bilinear
    return rules


@register_preset("attnlrp", "for transformers (AttnLRP, Achtibat et al. 2024, as LXT computes it): LRP-0 on "
                            "linear layers, residual sums and position embeddings, LayerNorm linear with σ "
                            "constant, softmax by its Taylor decomposition, MatMuls of two activations split "
                            "uniformly, activations identity")
def _attnlrp(graph: LayerGraph) -> dict[str, Rule]:
    return _transformer(graph, make_rule("uniform", 0.0))


@register_preset("cp-lrp", "for transformers (CP-LRP, Ali et al. 2022): as attnlrp, but the attention "
                           "weights are constants, so no relevance flows through softmax, queries and keys")
def _cp_lrp(graph: LayerGraph) -> dict[str, Rule]:
    return _transformer(graph, make_rule("cp", 0.0))


@dataclass(frozen=True)
class Choice:
    """The preset ``auto`` chose, and why."""

    preset: str
    reason: str


def choose_preset(graph: LayerGraph) -> Choice:
    """``attnlrp`` for transformers (attention: products of two activations, a softmax inside);
    ``epsilon-gamma-box`` for a plain chain of ReLU layers; ``conserving`` once residual sums,
    gates, LayerNorm without attention (a ConvNeXt: its convolutions want ``conserving``'s rules)
    or linear bottlenecks (a convolution reading signed values) appear. (Dense heads reading signed values, such as Keras' BatchNorm after a ReLU, do not
    count: ε treats them alike.)"""
    attention = [l.name for l in graph.layers if isinstance(l, (BilinearLayer, SoftmaxLayer))]
    if attention:
        return Choice("attnlrp", f"a transformer: {len(attention)} attention layer(s), e.g. '{attention[0]}'")
    firsts = {l.name for l in first_layers(graph)}
    merges = [l.name for l in graph.layers if isinstance(l, MergeLayer)]
    gates = [l.name for l in graph.layers if isinstance(l, GateLayer)]
    norms = [l.name for l in graph.layers if isinstance(l, LayerNormLayer)]
    signed = [l.name for l in graph.layers
              if isinstance(l, ConvLayer) and l.name not in firsts and not l.nonneg_input]
    found = [(f"{len(merges)} residual sum(s), e.g. '{merges[0]}'" if merges else ""),
             (f"{len(gates)} gate(s), e.g. '{gates[0]}'" if gates else ""),
             (f"{len(norms)} LayerNorm/InstanceNorm layer(s), e.g. '{norms[0]}'" if norms else ""),
             (f"{len(signed)} convolution(s) reading signed values (linear bottlenecks, smooth "
              f"activations), e.g. '{signed[0]}'" if signed else "")]
    found = [f for f in found if f]
    if found:
        return Choice("conserving", "; ".join(found))
    return Choice("epsilon-gamma-box", "a plain chain: every convolution after the first reads ReLU "
                                       "outputs, no residual sums or gates")


def preset_rules(graph: LayerGraph, preset: str) -> tuple[str, dict[str, Rule], str]:
    """(the preset that applies, its rules, why) for ``preset`` (``auto`` chooses)."""
    if preset == "auto":
        choice = choose_preset(graph)
        rules, reason = PRESETS[choice.preset][0](graph), choice.reason
        inner = inner_affine_layers(graph) if choice.preset == "epsilon-gamma-box" else []
        if inner:  # its rules keep biases; so does a BatchNorm no convolution took in
            rules.update({layer.name: make_rule("shift") for layer in inner})
            reason += (f"; {len(inner)} BatchNorm(s) after a concat or pool keep their shift as a bias "
                       f"(shift), e.g. '{inner[0].name}'")
        return choice.preset, rules, reason
    if preset not in PRESETS:
        from ..names import did_you_mean

        raise RuleError(f"unknown preset '{preset}'{did_you_mean(preset, ['auto', *PRESETS])}; valid presets: "
                        f"{', '.join(['auto'] + sorted(PRESETS))}")
    return preset, PRESETS[preset][0](graph), "chosen by name"


AUTO_DOC = ("the default: epsilon-gamma-box for plain ReLU chains, conserving for networks with residual "
            "sums, gates or linear bottlenecks, attnlrp for transformers (`lrpath plan` says which and why)")
