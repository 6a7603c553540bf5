"""Per-op handlers; importing this package fills the registry."""

from . import activation, affine, bilinear, conv, dense, gate, merge, norm, pool, reduce, resize, shape, softmax  # noqa: F401
from .registry import HANDLERS, handler_for

__all__ = ["HANDLERS", "handler_for"]
