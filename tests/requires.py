"""The reference tools some test modules compare with (torch, zennit, LXT, transformers)."""

from __future__ import annotations

import importlib.util
import os

import pytest


def require(*packages: tuple[str, str]) -> None:
    """Skip the calling test module where a ``(package, how to install it)`` is missing; in CI
    fail instead, since the README's test command installs every one of them."""
    for pkg, how in packages:
        if importlib.util.find_spec(pkg) is None:
            if os.environ.get("CI"):
                raise RuntimeError(f"{pkg} is missing in CI ({how}): the README's test command installs it")
            pytest.skip(f"{pkg} is not installed here ({how}); CI runs these tests", allow_module_level=True)
