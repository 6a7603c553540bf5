"""read_ahead: the next batch of inputs is read on a worker while the caller works."""

from __future__ import annotations

import threading

import pytest

from lrpath_onnx.errors import InputError
from lrpath_onnx.io.inputs import read_ahead


def test_items_in_order_read_on_a_worker():
    threads = []

    def produce():
        for k in range(4):
            threads.append(threading.current_thread())
            yield k

    assert list(read_ahead(produce())) == [0, 1, 2, 3]
    assert threads and all(t is not threading.main_thread() for t in threads)


def test_the_next_item_is_read_while_the_caller_holds_this_one():
    read = [threading.Event() for _ in range(3)]

    def produce():
        for k in range(3):
            read[k].set()
            yield k

    for item in read_ahead(produce()):  # without reading ahead, item + 1 is only read after this body
        if item + 1 < 3:
            assert read[item + 1].wait(timeout=10)


def test_a_reading_error_comes_after_the_items_before_it():
    def produce():
        yield "a"
        yield "b"
        raise InputError("cannot read image c.jpg: truncated")

    got = []
    with pytest.raises(InputError, match="c.jpg"):
        for item in read_ahead(produce()):
            got.append(item)
    assert got == ["a", "b"]


def test_the_caller_stopping_early_closes_the_worker():
    before = {t.name for t in threading.enumerate()}
    gen = read_ahead(iter(range(10)))
    assert next(gen) == 0
    gen.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("lrpath-reader") and t.name not in before]


def test_empty_input():
    assert list(read_ahead(iter(()))) == []
