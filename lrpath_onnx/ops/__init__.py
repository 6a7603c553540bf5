"""Per-op handlers; importing this package fills the registry."""

from . import activation, affine, conv, dense, gate, merge, pool, resize, shape  # noqa: F401
from .registry import HANDLERS, handler_for

__all__ = ["HANDLERS", "handler_for"]
