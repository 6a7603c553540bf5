"""BatchWriter: one batch's files written on a worker while the next batch is computed."""

from __future__ import annotations

import threading
import time

import pytest

from lrpath_onnx.errors import OutputError
from lrpath_onnx.io.batch_writer import BatchWriter


def _batch(events: list, k: int, delay: float = 0.0):
    def write():
        time.sleep(delay)
        events.append(("write", k, threading.current_thread() is threading.main_thread()))

    def then():
        events.append(("then", k, threading.current_thread() is threading.main_thread()))
    return write, then


def test_writes_run_on_the_worker_and_reports_in_order_on_the_caller():
    events: list = []
    with BatchWriter() as w:
        for k, delay in enumerate((0.05, 0.0, 0.02)):
            w.submit(*_batch(events, k, delay))
            events.append(("next", k, True))
    assert [e[:2] for e in events if e[0] == "then"] == [("then", 0), ("then", 1), ("then", 2)]
    assert all(not main for kind, _, main in events if kind == "write")
    assert all(main for kind, _, main in events if kind == "then")
    for k in range(3):  # each report after its own files, and the next batch starts before it
        assert events.index(("write", k, False)) < events.index(("then", k, True))
        assert events.index(("next", k, True)) < events.index(("then", k, True))


def test_inline_runs_here_and_now():
    events: list = []
    with BatchWriter() as w:
        w.submit(*_batch(events, 0), inline=True)
        assert events == [("write", 0, True), ("then", 0, True)]


def test_a_failed_write_reaches_the_caller_and_skips_its_report():
    events: list = []

    def fail():
        raise OutputError("cannot write heatmap.png: disk full")

    with pytest.raises(OutputError, match="disk full"):
        with BatchWriter() as w:
            w.submit(fail, lambda: events.append("then"))
            w.submit(*_batch(events, 1))
    assert events == []


def test_a_caller_error_lets_the_batch_in_flight_finish_and_report():
    events: list = []
    with pytest.raises(RuntimeError, match="bad image"):
        with BatchWriter() as w:
            w.submit(*_batch(events, 0, 0.05))
            raise RuntimeError("bad image")
    assert [e[:2] for e in events] == [("write", 0), ("then", 0)]


def test_an_inline_batch_waits_for_the_one_in_flight_and_runs_here():
    events: list = []
    with BatchWriter() as w:
        w.submit(*_batch(events, 0, 0.05))
        w.submit(*_batch(events, 1), inline=True)
        assert events == [("write", 0, False), ("then", 0, True), ("write", 1, True), ("then", 1, True)]


def test_a_failed_write_is_reported_before_a_later_caller_error():
    def fail():
        raise OutputError("cannot write heatmap.png: disk full")

    with pytest.raises(OutputError, match="disk full") as info:
        with BatchWriter() as w:
            w.submit(fail, lambda: None)
            raise RuntimeError("relevance became NaN")
    assert isinstance(info.value.__cause__, RuntimeError)


def test_an_interrupt_is_not_replaced_by_a_failed_write():
    def fail():
        raise OutputError("cannot write heatmap.png: disk full")

    with pytest.raises(KeyboardInterrupt):
        with BatchWriter() as w:
            w.submit(fail, lambda: None)
            raise KeyboardInterrupt


def test_explain_reports_a_background_write_failure_as_one_error(tmp_path, monkeypatch, capsys):
    """Through ``run_explain``, every batch written in the background: the batch before the
    failure is reported, the failure is an ``OutputError`` naming the folder (exit 2)."""
    import numpy as np

    from lrpath_onnx.cli import explain_cmd
    from lrpath_onnx.cli.session import open_session

    rng = np.random.default_rng(0)
    inputs = []
    for i in range(3):
        inputs.append(tmp_path / f"x{i}.npy")
        np.save(inputs[-1], rng.random((1, 28, 28), dtype=np.float32))
    out = tmp_path / "out"
    out.mkdir()
    (out / "x1").write_text("a file where x1's folder goes")
    monkeypatch.setattr(explain_cmd, "WRITE_BESIDE_S", 0.0)
    ses = open_session(("mnist-vgg", *inputs), out)
    with pytest.raises(OutputError, match=r"cannot create output folder .*x1: File exists"):
        explain_cmd.run_explain(ses, out, batch_size=1)
    printed = capsys.readouterr().out
    assert "x0: class" in printed and "x1: class" not in printed and "x2" not in printed
    assert (out / "x0" / "heatmap.png").exists() and not (out / "x2").exists()
