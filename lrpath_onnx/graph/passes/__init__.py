"""Canonicalisation passes over the parsed layers, run in a declared order.

Each pass is a small module with one concern and its own tests; ``PASSES`` says the order
and why. A pass takes the layer list (topological order) and a ``PassContext`` and returns
the new list; the facts passes mark on layers (non-negative inputs, sign sources, shapes)
come last, once the layers are final.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ...errors import UnsupportedOpError
from ..layers import Layer


@dataclass
class PassContext:
    """What passes may look at: ONNX-level consumer counts (graph outputs included), the
    explained output tensor, static shapes (passes may fill open ones), and where to put
    unsupported-op reports."""

    consumers: dict[str, int]
    output: str
    shapes: dict[str, tuple]
    errors: list[UnsupportedOpError] = field(default_factory=list)

    def single_use(self, tensor: str) -> bool:
        """Read by exactly one node, and not the explained output."""
        return self.consumers.get(tensor, 0) == 1 and tensor != self.output


Pass = Callable[[list[Layer], PassContext], list[Layer]]


def _passes() -> list[tuple[str, Pass]]:
    from . import (complete_shapes, detect_gates, fold_affine, fold_pads, fuse_elementwise, mark_attention,
                   mark_nonnegative, mark_sign_sources)

    return [
        # patterns first: x·sigmoid(x) must be one activation before affine folding looks at its parts
        ("fuse_elementwise", fuse_elementwise.run),
        # products left over are gates (squeeze-excitation) or refused
        ("detect_gates", detect_gates.run),
        # BN / bias Adds into the Conv/dense beside them, zero Pads into the Conv after them
        ("fold_affine", fold_affine.run),
        ("fold_pads", fold_pads.run),
        # facts on the final layers
        ("complete_shapes", complete_shapes.run),
        ("mark_nonnegative", mark_nonnegative.run),
        ("mark_sign_sources", mark_sign_sources.run),
        ("mark_attention", mark_attention.run),
    ]


def run_passes(layers: list[Layer], ctx: PassContext) -> list[Layer]:
    """Every pass in order."""
    for _, fn in _passes():
        layers = fn(layers, ctx)
    return layers


def pass_names() -> list[str]:
    return [name for name, _ in _passes()]
