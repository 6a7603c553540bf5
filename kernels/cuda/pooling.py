"""Switch unpooling (CUDA, numba): MaxPool's winner-take-all, by onnxruntime's indices.

ONNX MaxPool's ``Indices`` hold, per pooled value, the flat index of its maximum in the
whole NCHW input (batch and channel offsets included). The output is zeroed by one
grid-stride kernel, then one thread per pooled value adds it at its index with an atomic
add: overlapping windows can pick the same element, and atomics keep those sums race-free
while every thread still does O(1) work (a thread per plane looping over it would leave
most of the GPU idle on VGG16-sized maps). An index outside its own (sample, channel)
plane is dropped, as in the CPU form. With at most a few winners per element the sum's
order hardly matters; with two it is exact (``0 + a + b == 0 + b + a``).
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from .launch import MAX_BLOCKS, as_device, flat, grid1


@cuda.jit
def zero_kernel(out):
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < out.size:
        out[i] = 0
        i += step


@cuda.jit
def scatter_kernel(values, indices, per_plane, plane_out, out):
    """out[idx] += values[t] for t = (plane p, position), when idx lies in plane p's output."""
    t = cuda.grid(1)
    if t >= values.size:
        return
    base = (t // per_plane) * plane_out
    idx = indices[t]
    if idx >= base and idx < base + plane_out:
        cuda.atomic.add(out, idx, values[t])


def unpool(values, indices, in_shape: tuple[int, ...]):
    """Scatter ``values`` (N, C, oh, ow) to a new ``in_shape`` (N, C, H, W) array at ``indices``.

    ``indices`` are ONNX MaxPool indices (int64 on the host are copied as they are); the
    result is in ``values``' dtype.
    """
    values = as_device(values)
    indices = as_device(indices, np.int64) if not hasattr(indices, "copy_to_host") else indices
    if tuple(values.shape) != tuple(indices.shape):
        raise ValueError(f"unpool: values {tuple(values.shape)} and indices {tuple(indices.shape)} differ")
    in_shape = tuple(int(s) for s in in_shape)
    if tuple(values.shape[:2]) != in_shape[:2]:
        raise ValueError(f"unpool: values {tuple(values.shape)} do not pool {in_shape}")
    planes = in_shape[0] * in_shape[1]
    plane_out = int(np.prod(in_shape[2:], dtype=np.int64))
    out = cuda.device_array(in_shape, dtype=values.dtype)
    out_flat = flat(out)
    if out.size:
        b, t = grid1(out.size, cap=MAX_BLOCKS)
        zero_kernel[b, t](out_flat)
    if values.size and planes:
        per_plane = values.size // planes
        b, t = grid1(values.size)
        scatter_kernel[b, t](flat(values, "values"), flat(indices, "indices"), per_plane, plane_out, out_flat)
    return out
