"""Any number of samples through a model exported for a fixed batch size (``torch.onnx.export``
without dynamic axes fixes it to the dummy input's batch): the batch is filled up to a
multiple of that size with copies of its last sample, run a chunk at a time, and the
results of the copies are dropped."""

from __future__ import annotations

import numpy as np


def fixed_batch(shape: tuple) -> int | None:
    """The model's fixed batch size, or None where its batch axis is open."""
    return shape[0] if shape and shape[0] else None


def padded(x: np.ndarray, fixed: int) -> np.ndarray:
    """``x`` with copies of its last sample appended up to a multiple of ``fixed`` samples."""
    short = -x.shape[0] % fixed
    return np.concatenate([x, np.repeat(x[-1:], short, axis=0)]) if short else x


def padded_targets(target, n: int):
    """Per-sample targets padded like the samples to ``n``; one target for all is kept."""
    if not isinstance(target, (list, tuple, np.ndarray)) or len(target) >= n:
        return target
    return list(target) + [target[-1]] * (n - len(target))


def first_samples(tensors: dict[str, np.ndarray], real: int) -> dict:
    """The first ``real`` samples of each (batch-first) tensor."""
    return {name: t if t.ndim == 0 or t.shape[0] == real else t[:real] for name, t in tensors.items()}


def run_in_chunks(run, x: np.ndarray, fixed: int) -> np.ndarray:
    """``run`` (one array out) over ``x`` in chunks of exactly ``fixed`` samples."""
    xp = padded(x, fixed)
    return np.concatenate([run(xp[i:i + fixed]) for i in range(0, xp.shape[0], fixed)])[:x.shape[0]]
