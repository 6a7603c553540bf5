"""Forward tensors copied to the GPU in the background, in the order the backward pass reads them.

A batch's forward tensors come from onnxruntime as host arrays: VGG16's are 48 MB per image,
1.5 GB at batch 32, whose copy from pageable memory (about 7 GB/s on an H200's host) took 40 %
of a relevance pass when it ran before it. The backward pass needs the last layers' small
tensors first and the first layers' large ones last, so a thread copies them in that order
on a stream of its own, which does not wait for the kernels of the default stream, while
the main thread launches the kernels of the layers whose tensors are there. The first use
of a tensor (``PendingArray.d``) waits until its copy has been issued and makes the default
stream wait for it on the GPU (no host wait for the copy itself).

numba allocates every device array on the main thread; the copy thread only copies and
records events. Under numba's simulator the copies run the same way (they are synchronous
there).
"""

from __future__ import annotations

import threading

import numpy as np
from numba import config, cuda

from .device_array import DeviceArray

_STREAMS: dict = {}


def copy_stream():
    """A CUDA stream that does not synchronise with the legacy default stream, one per context."""
    ctx = cuda.current_context()
    key = id(ctx)
    if key not in _STREAMS:
        if config.ENABLE_CUDASIM:
            _STREAMS[key] = cuda.stream()
        else:  # numba's own streams synchronise with stream 0: ask the driver for a non-blocking one
            from numba.cuda.cudadrv.driver import binding, driver

            handle = driver.cuStreamCreate(binding.CUstream_flags.CU_STREAM_NON_BLOCKING.value)
            _STREAMS[key] = (cuda.external_stream(int(handle)), handle)  # the handle lives with the process
    entry = _STREAMS[key]
    return entry[0] if isinstance(entry, tuple) else entry


def _event():
    """A CUDA event for ordering only (the simulator's take no arguments)."""
    return cuda.event() if config.ENABLE_CUDASIM else cuda.event(timing=False)


class PendingArray(DeviceArray):
    """A device array whose contents are still being copied from the host."""

    def __init__(self, d, issued: threading.Event, done, failed: list) -> None:
        self._d, self._issued, self._done, self._failed = d, issued, done, failed
        self._pending = True

    @property
    def d(self):
        if self._pending:
            self._issued.wait()
            if self._failed:
                raise self._failed[0]
            self._done.wait(cuda.default_stream())
            self._pending = False
        return self._d

    shape = property(lambda self: tuple(self._d.shape))
    dtype = property(lambda self: np.dtype(self._d.dtype))
    ndim = property(lambda self: len(self._d.shape))
    size = property(lambda self: int(np.prod(self._d.shape)))


def upload_in_background(tensors: dict[str, np.ndarray], order: list[str]) -> dict[str, DeviceArray]:
    """Device arrays for ``tensors``, their copies issued by a thread in ``order`` (names not
    in it last); each array waits for its own copy on first use."""
    names = [n for n in order if n in tensors] + [n for n in tensors if n not in set(order)]
    stream = copy_stream()
    jobs, out = [], {}
    for name in names:
        host = np.ascontiguousarray(tensors[name])
        dev = cuda.device_array(host.shape, dtype=host.dtype)
        issued, done, failed = threading.Event(), _event(), []
        jobs.append((host, dev, issued, done, failed))
        out[name] = PendingArray(dev, issued, done, failed)

    def copy_all() -> None:
        for host, dev, issued, done, failed in jobs:
            try:
                if host.size:
                    dev.copy_to_device(host, stream=stream)
                    done.record(stream)
            except BaseException as exc:  # raised in the main thread at the array's first use
                failed.append(exc)
            finally:
                issued.set()

    threading.Thread(target=copy_all, name="lrpath-upload", daemon=True).start()
    return {name: out[name] for name in tensors}
