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


def test_a_caller_that_fails_does_not_wait_for_the_read_in_flight():
    release = threading.Event()
    readers: list[threading.Thread] = []

    def produce():
        readers.append(threading.current_thread())
        yield "first"
        readers.append(threading.current_thread())
        release.wait(timeout=60)  # a slow read (NFS, a huge photo)
        yield "second"

    def consume():
        with pytest.raises(RuntimeError, match="explain failed"):
            for _ in read_ahead(produce()):
                raise RuntimeError("explain failed")

    caller = threading.Thread(target=consume)
    caller.start()
    caller.join(timeout=20)
    stuck = caller.is_alive()
    release.set()
    caller.join()
    assert not stuck, "the failing caller waited for the read in flight"
    for t in readers:  # the readers end once their read does, and none is the caller's thread
        t.join(timeout=20)
        assert not t.is_alive() and t is not caller and t is not threading.main_thread()


def test_empty_input():
    assert list(read_ahead(iter(()))) == []
