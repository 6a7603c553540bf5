"""tune_allocator: the process-wide memory settings the CLI applies at start."""

from __future__ import annotations

import pytest

from lrpath_onnx import allocator

try:
    from numpy._core import multiarray
except ImportError:  # numpy < 2
    from numpy.core import multiarray


@pytest.fixture
def hugepage_state():
    """numpy's huge-page request as it was, put back after the test."""
    before = multiarray._set_madvise_hugepage(True)
    yield
    multiarray._set_madvise_hugepage(before)


def _current() -> bool:
    state = multiarray._set_madvise_hugepage(True)
    multiarray._set_madvise_hugepage(state)
    return state


def test_tune_allocator_turns_numpy_hugepage_request_off(hugepage_state, monkeypatch):
    monkeypatch.delenv("NUMPY_MADVISE_HUGEPAGE", raising=False)
    assert _current() is True
    allocator.tune_allocator()
    assert _current() is False


def test_tune_allocator_leaves_the_users_hugepage_choice(hugepage_state, monkeypatch):
    monkeypatch.setenv("NUMPY_MADVISE_HUGEPAGE", "1")
    allocator.tune_allocator()
    assert _current() is True
