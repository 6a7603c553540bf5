"""Per-op handlers; importing this package fills the registry."""

from . import (activation, affine, bilinear, conv, dense, gate, merge, norm, pool, quantize, reduce,  # noqa: F401
               resize, shape, softmax)
from .registry import HANDLERS, handler_for

__all__ = ["HANDLERS", "handler_for"]
