"""Write one batch's files on a worker thread while the next batch is explained.

A sample's files (relevance.npy, two PNGs, explanation.json) take 25-45 ms on one core;
written in line, the second core sat idle meanwhile. Here at most one batch is in flight,
so memory holds one batch's results more at most; its errors reach the caller's thread
(``OutputError``: one line, exit 2, as before) and its ``then`` (summary lines, progress)
runs there too, in batch order, once the files exist.

Where a batch is explained in a few milliseconds (mnist-vgg at batch 1: 7 ms), the
analyzer's many short calls each wait for the GIL behind the writer's Python: 1.17-1.24x
slower in the background, so such batches are written in line (``inline``).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor


class BatchWriter:
    """``submit(write, then)``: ``write()`` on the worker, ``then()`` afterwards on this thread.

    ``inline=True`` runs both here and now (fast batches; batches whose results are large,
    e.g. every layer's relevance kept). The worker thread starts with the first batch sent."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="lrpath-writer")
        self._pending: tuple[Future, Callable[[], None]] | None = None

    def submit(self, write: Callable[[], None], then: Callable[[], None], inline: bool = False) -> None:
        """Finish the batch in flight, then start this one (``inline``: here and now)."""
        self.flush()
        if inline:
            write()
            then()
            return
        self._pending = (self._pool.submit(write), then)

    def flush(self) -> None:
        """Wait for the batch in flight; raise its error, else run its ``then``."""
        if self._pending is None:
            return
        future, then = self._pending
        self._pending = None
        future.result()
        then()

    def __enter__(self) -> BatchWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.flush()
            elif self._pending is not None:  # the caller failed: finish the batch in flight first
                future, then = self._pending
                self._pending = None
                error = future.exception()
                if error is None:
                    then()
                elif issubclass(exc_type, Exception):  # the write failed first: its error is the one to report
                    raise error from exc
        finally:
            self._pool.shutdown(wait=True)
