"""Keep freed memory in the process, so large arrays are not page-faulted afresh each time.

Explaining VGG16 allocates and frees hundreds of MB of activations and relevance per
batch. glibc returns big blocks to the kernel on free (mmap/trim), and the next batch
pays for page faults and zeroing again: measured 10,500 page faults and 1.05 s of
system time per batch of 8 on the 2-core CI machine, against 4 faults and 0.05 s with
the settings below (0.62 → 0.51 s per image). The ``lrpath`` command applies them at
start; API users may call ``tune_allocator()`` themselves (it affects the whole process).

numpy also asks the kernel for 2 MB pages for every array of 4 MB or more
(``madvise(MADV_HUGEPAGE)``). Where transparent huge pages are granted on request
(``defrag`` ``madvise``, the common default), each first touch of such an array may stop
to compact memory: on the 2-core machines, reading VGG16's 528 MB of weights took
0.62–1.68 s with it and 0.42–0.48 s without, and the first two batches of 8 took 1.2 s
longer, while steady batches ran as fast either way (0.482 against 0.486 s per image).
So ``tune_allocator`` turns that request off too, unless ``NUMPY_MADVISE_HUGEPAGE`` says
otherwise.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
_LIMIT = (1 << 31) - 1  # INT_MAX: mallopt takes an int


def tune_allocator() -> bool:
    """Serve large blocks from the heap and never trim it (glibc only), and let numpy's
    large arrays use ordinary pages; True if the heap settings applied."""
    _no_numpy_hugepages()
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(M_MMAP_THRESHOLD, _LIMIT) == 1
    ok &= mallopt(M_TRIM_THRESHOLD, _LIMIT) == 1
    ok &= mallopt(M_TOP_PAD, 256 << 20) == 1
    return bool(ok)


def _no_numpy_hugepages() -> None:
    """Stop numpy's huge-page request for new arrays, unless the user set NUMPY_MADVISE_HUGEPAGE."""
    if "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        return
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    setter = getattr(multiarray, "_set_madvise_hugepage", None)
    if setter is not None:
        setter(False)
