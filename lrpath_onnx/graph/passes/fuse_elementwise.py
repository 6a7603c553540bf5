"""Fuse element-wise patterns of one tensor into one activation: SiLU, Hardswish, GELU, Mish …

Exporters write many activations as small graphs rather than one op: SiLU as
``x · Sigmoid(x)``, GELU as ``x · (1 + Erf(x/√2))·½`` or with ``Tanh`` and ``Pow``, Mish as
``x · Tanh(Softplus(x))``, Hardswish as ``x · Clip(x + 3, 0, 6) / 6``. Whatever the spelling,
a product (or sum) of tensors that are all element-wise functions of one tensor ``x`` is
itself an element-wise function of ``x``: one activation, through which relevance passes
(zennit's rule for SiLU/GELU modules). The smallest such region is fused (the nearest
``x``), its layers kept as the activation's ``parts`` so its forward and derivative stay exact.
A product of two different tensors (a squeeze-excitation gate) is left for ``detect_gates``.
"""

from __future__ import annotations

from ..layers import ActivationLayer, AffineLayer, Layer, MergeLayer, ProductLayer
from . import PassContext

_ELEMENTWISE = (ActivationLayer, AffineLayer, ProductLayer, MergeLayer)


def _function_of(tensor: str, source: str, producer: dict[str, Layer], region: list[Layer]) -> bool:
    """Whether ``tensor`` is an element-wise function of ``source`` alone (collects the layers)."""
    if tensor == source:
        return True
    layer = producer.get(tensor)
    if not isinstance(layer, _ELEMENTWISE):
        return False
    if any(l is layer for l in region):
        return True
    if not all(_function_of(t, source, producer, region) for t in layer.inputs):
        return False
    region.append(layer)
    return True


def _candidates(layer: Layer, producer: dict[str, Layer]) -> list[str]:
    """Tensors behind ``layer`` through element-wise layers, nearest first."""
    seen, order, stack = set(), [], list(layer.inputs)
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        order.append(t)
        p = producer.get(t)
        if isinstance(p, _ELEMENTWISE):
            stack.extend(p.inputs)
    index = {l.output: i for i, l in enumerate(producer.values())}
    return sorted(order, key=lambda t: -index.get(t, -1))


def _name(region: list[Layer], taken: set[str]) -> str:
    """The exporter's module of the pattern (``features.3.act``) when its nodes share one."""
    mods = {l.name.rsplit("/", 1)[0] for l in region if "/" in l.name}
    if len(mods) == 1 and all("/" in l.name for l in region):
        mod = mods.pop()
        if mod not in taken:
            return mod
    return region[-1].name


def _recognise(region: list[Layer]) -> str:
    fns = {l.fn for l in region if isinstance(l, ActivationLayer)}
    if fns == {"sigmoid"}:
        return "silu"
    if fns in ({"hardsigmoid"}, {"clip"}, {"relu"}):
        return "hardswish"
    if fns == {"tanh", "softplus"}:
        return "mish"
    if "erf" in fns or "tanh" in fns:
        return "gelu"
    return "elementwise"


def run(layers: list[Layer], ctx: PassContext) -> list[Layer]:
    fused: dict[int, ActivationLayer] = {}
    dropped: set[int] = set()
    producer = {l.output: l for l in layers}
    taken = {l.name for l in layers}
    for layer in reversed(layers):  # the last product first: its region holds any inner one
        if not isinstance(layer, (ProductLayer, MergeLayer)) or len(layer.inputs) < 2 or id(layer) in dropped:
            continue
        for source in _candidates(layer, producer):
            region: list[Layer] = []
            if not all(_function_of(t, source, producer, region) for t in layer.inputs):
                continue
            region.append(layer)
            inside = {id(l) for l in region}
            reads = {}
            for l in region:
                for t in l.inputs:
                    reads[t] = reads.get(t, 0) + 1
            if any(ctx.consumers.get(l.output, 0) != reads.get(l.output, 0) for l in region if l is not layer):
                break  # an intermediate tensor is used elsewhere: leave the pattern as it is
            order = [l for l in layers if id(l) in inside]
            fn = _recognise(order)
            name = _name(order, taken)
            taken.add(name)
            act = ActivationLayer(name=name, op=layer.op if fn == "elementwise" else fn, inputs=[source],
                                  output=layer.output, nodes=[n for l in order for n in l.nodes],
                                  handler=_activation_handler(), fn=fn, params={}, parts=order)
            fused[id(layer)] = act
            dropped |= inside - {id(layer)}
            break
    return [fused.get(id(l), l) for l in layers if id(l) not in dropped]


def _activation_handler():
    from ...ops.activation import ActivationHandler
    from ...ops.registry import HANDLERS

    return next(h for h in HANDLERS.values() if isinstance(h, ActivationHandler))
