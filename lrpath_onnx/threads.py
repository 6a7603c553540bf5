"""Thread control: one pool for everything the backward pass runs on the CPU.

OpenBLAS's own worker threads keep spinning after each call and halve the speed of the
numba kernels that follow on a small machine (measured: numba kernels 2x faster with
single-threaded BLAS on the 2-core CI machine). So during a backward pass BLAS runs
single-threaded and the backend splits large products over its own thread pool instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .runtime.stacked_gemm import StackedGemm

_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
            "openblas_set_num_threads64_", "openblas_set_num_threads")
_GETTERS = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
            "openblas_get_num_threads64_", "openblas_get_num_threads")


_CORENAMES = ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename",
              "openblas_get_corename64_", "openblas_get_corename")


def _openblas_libs():
    """The loaded OpenBLAS libraries (numpy's), as ctypes handles."""
    try:
        maps = open("/proc/self/maps").read().splitlines()
    except OSError:
        return
    for path in sorted({l.split()[-1] for l in maps if "openblas" in l.lower() and l.split()[-1].startswith("/")}):
        try:
            yield ctypes.CDLL(path)
        except OSError:
            continue


def openblas_core() -> str | None:
    """The kernel family numpy's OpenBLAS runs (``SkylakeX``, ``Haswell``…), None where unknown.
    A benchmark says it: ``OPENBLAS_CORETYPE`` may pin older kernels (half the GEMM speed of
    AVX-512 ones on a Zen 5)."""
    np.ones(1) @ np.ones(1)
    for lib in _openblas_libs():
        fn = next((getattr(lib, n) for n in _CORENAMES if hasattr(lib, n)), None)
        if fn is not None:
            fn.restype = ctypes.c_char_p
            return fn().decode(errors="replace").strip() or None
    return None


def _openblas():
    """(get, set) functions of the OpenBLAS numpy uses, or None where it is another BLAS."""
    for lib in _openblas_libs():
        get = next((getattr(lib, n) for n in _GETTERS if hasattr(lib, n)), None)
        put = next((getattr(lib, n) for n in _SETTERS if hasattr(lib, n)), None)
        if get is not None and put is not None:
            get.restype = ctypes.c_int
            put.argtypes = [ctypes.c_int]
            return get, put
    return None


#: products with a right operand of at least this many elements are split by columns
SPLIT_ELEMENTS = 1 << 22
#: convolution GEMMs (im2col's columns) are split from this many elements
SPLIT_GEMM_ELEMENTS = 1 << 16


class ThreadControl:
    """A pool of ``workers`` threads and a way to make BLAS single-threaded meanwhile."""

    def __init__(self, workers: int | None = None, mlas: bool = True) -> None:
        np.ones(1) @ np.ones(1)  # make sure numpy's BLAS is loaded before looking for it
        cap = os.environ.get("LRPATH_THREADS", "")  # e.g. a Ray actor given one CPU of several
        workers = workers or (int(cap) if cap.isdigit() and int(cap) > 0 else None)
        self.workers = max(1, workers or len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                           else os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(self.workers) if self.workers > 1 else None
        self._blas = _openblas()
        #: float32 stacks on onnxruntime's MLAS GEMM (``runtime.stacked_gemm``); False: numpy's BLAS
        self.stacked_gemm = StackedGemm(self.workers) if mlas else None

    @contextlib.contextmanager
    def blas_single(self):
        """Within the block numpy's OpenBLAS uses one thread (restored after)."""
        if self._blas is None or self.pool is None:
            yield
            return
        get, put = self._blas
        before = get()
        put(1)
        try:
            yield
        finally:
            put(before)

    def matmul(self, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Stacked ``a @ b`` into ``out``: float32 stacks on MLAS, else the stack split over
        the pool's threads."""
        if self.stacked_gemm is not None and self.stacked_gemm.takes(a, b, out):
            return self.stacked_gemm(a, b, out)
        if self.pool is None or a.shape[0] < 2:
            return np.matmul(a, b, out=out)
        n = a.shape[0]
        cuts = np.linspace(0, n, self.workers + 1).astype(int)
        futures = [self.pool.submit(np.matmul, a[lo:hi], b[lo:hi], out=out[lo:hi])
                   for lo, hi in zip(cuts[:-1], cuts[1:]) if hi > lo]
        for f in futures:
            f.result()
        return out

    def matmul_columns(self, a: np.ndarray, b: np.ndarray, out: np.ndarray,
                       min_elements: int | None = None) -> np.ndarray:
        """2-D ``a @ b`` into ``out``, ``b``'s columns split over the pool's threads from
        ``min_elements`` (``SPLIT_ELEMENTS`` by default): a product that streams a large
        matrix (a dense layer's transposed weights: VGG16's fc6 reads 411 MB) then reads it
        on every core (batch 8: 98 → 52 ms)."""
        limit = SPLIT_ELEMENTS if min_elements is None else min_elements
        if self.pool is None or b.size < limit or b.shape[1] < 2 * self.workers:
            return np.matmul(a, b, out=out)
        futures = [self.pool.submit(np.matmul, a, b[:, lo:hi], out=out[:, lo:hi])
                   for lo, hi in self._column_ranges(b.shape[1])]
        for f in futures:
            f.result()
        return out

    def matmul_split(self, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``matmul_columns`` from ``SPLIT_GEMM_ELEMENTS``: im2col's products (exact rules, 1x1
        and strided convolutions), which ran on one core while BLAS is single-threaded
        (VGG16's z^B layer at batch 8, with its two bound terms in one product too: 14 → 10 ms
        per image)."""
        return self.matmul_columns(a, b, out, SPLIT_GEMM_ELEMENTS)

    def _column_ranges(self, n: int) -> list[tuple[int, int]]:
        """One non-empty range of ``n`` columns per worker."""
        cuts = np.linspace(0, n, self.workers + 1).astype(int)
        return [(lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:]) if hi > lo]
