"""Launch helpers shared by the CUDA kernel families: grid sizes, device copies, scratch.

Kernels launch one thread per output element on 1-D grids of ``THREADS`` threads unless a
family says otherwise; element-wise kernels use grid-stride loops with a capped grid.
"""

from __future__ import annotations

import math

import numpy as np
from numba import config, cuda

# Small grids are expected here (a dense layer at batch 1, a per-sample reduction): numba's
# low-occupancy warning would print on most launches of a relevance pass.
config.CUDA_LOW_OCCUPANCY_WARNINGS = False

#: True under numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), which runs every GPU thread
#: as a Python thread and every ``syncthreads`` as a barrier among them.
SIMULATED = bool(config.ENABLE_CUDASIM)


def block_threads(on_gpu: int) -> int:
    """Threads per block: ``on_gpu`` on a device, 16 in the simulator.

    Every kernel here is written for any power-of-two block (grid-stride loops, trees that
    halve down to one), so the simulator runs the same code on small blocks; with full
    blocks one simulated launch of a reduction takes most of a second.
    """
    return min(on_gpu, 16) if SIMULATED else on_gpu


#: threads per block of the 1-D kernels (8 warps).
THREADS = block_threads(256)
#: grid cap of grid-stride kernels: enough blocks to fill 132 SMs (H100) many times over.
MAX_BLOCKS = 132 * 32


def blocks(n: int, threads: int = THREADS) -> int:
    """Blocks of ``threads`` needed to cover ``n`` items (at least 1)."""
    return max(1, math.ceil(int(n) / threads))


def grid1(n: int, threads: int = THREADS, cap: int | None = None) -> tuple[int, int]:
    """(blocks, threads) for ``n`` items on a 1-D grid; ``cap`` limits blocks (grid-stride kernels)."""
    b = blocks(n, threads)
    return (min(b, cap) if cap else b), threads


def grid2(rows: int, cols: int, tile: tuple[int, int], threads: tuple[int, int]):
    """((blocks_x, blocks_y), threads) covering a ``rows`` x ``cols`` matrix with ``tile`` (rows, cols) per block."""
    return (blocks(cols, tile[1]), blocks(rows, tile[0])), (threads[1], threads[0])


def grid3(x: int, y: int, z: int, threads: int = THREADS):
    """((x, y, z), threads): one block per (x, y, z) triple, as the reduction kernels use."""
    return (max(1, int(x)), max(1, int(y)), max(1, int(z))), threads


def is_device(x) -> bool:
    """Whether ``x`` is a numba device array (real or the simulator's)."""
    return hasattr(x, "copy_to_host") and not isinstance(x, np.ndarray)


@cuda.jit
def _cast(src, out):
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < out.size:
        out[i] = src[i]
        i += step


def as_device(x, dtype=None, name: str = "array"):
    """``x`` as a device array of ``dtype`` (``x``'s own when None), copying host arrays once.

    Device arrays of another dtype are cast on the device. Casting needs a C-contiguous array.
    """
    if not is_device(x):
        return cuda.to_device(np.ascontiguousarray(x, dtype=dtype))
    if dtype is None or np.dtype(dtype) == np.dtype(x.dtype):
        return x
    src = contiguous(x, name)
    out = cuda.device_array(src.shape, dtype=np.dtype(dtype))
    if src.size:
        b, t = grid1(src.size, cap=MAX_BLOCKS)
        _cast[b, t](src.reshape(src.size), out.reshape(out.size))
    return out


def contiguous(x, name: str = "array"):
    """``x`` itself when it is a C-contiguous device array; a clear error otherwise."""
    if not x.is_c_contiguous():
        raise ValueError(f"{name}: a C-contiguous device array is required (got strides {x.strides})")
    return x


def flat(x, name: str = "array"):
    """A 1-D view of a C-contiguous device array."""
    return contiguous(x, name).reshape(int(np.prod(x.shape, dtype=np.int64)))


class DeviceWorkspace:
    """Reusable device scratch buffers (column buffers, split-K partials), one per (slot, dtype).

    Passing one workspace to repeated calls avoids a device allocation per call; without
    one, each call allocates its own buffers.
    """

    def __init__(self) -> None:
        self._buf: dict = {}

    def get(self, shape: tuple[int, ...], dtype, slot: str = "cols"):
        dtype = np.dtype(dtype)
        n = max(1, int(np.prod(shape, dtype=np.int64)))
        buf = self._buf.get((slot, dtype))
        if buf is None or buf.size < n:
            buf = self._buf[(slot, dtype)] = cuda.device_array(n, dtype=dtype)
        return buf[:n].reshape(tuple(int(s) for s in shape))


def scratch(ws: DeviceWorkspace | None, shape, dtype, slot: str):
    """A scratch device array from ``ws``, or a fresh one."""
    if ws is not None:
        return ws.get(shape, dtype, slot)
    return cuda.device_array(tuple(int(s) for s in shape), dtype=np.dtype(dtype))
