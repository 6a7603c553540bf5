"""Forward tensors re-batched without running the model again: one sample's as a batch of n
views (several backward passes of the same input, one per restricted relevance or
deconvolved neuron, run as one batch), and the runs of a fixed-batch model joined into one
batch. MaxPool switches index the flattened batch, so both renumber them."""

from __future__ import annotations

import numpy as np

from ..graph.layers import LayerGraph, MaxPoolLayer


def _switch_planes(graph: LayerGraph, fwd: dict[str, np.ndarray]) -> dict[str, int]:
    """Per switch tensor in ``fwd``: how many elements one sample of its pool's input holds."""
    planes = {}
    for lay in graph.layers:
        if isinstance(lay, MaxPoolLayer) and lay.indices in fwd:
            src = lay.inputs[0]
            planes[lay.indices] = int(np.prod(fwd[src].shape[1:] if src in fwd else graph.shapes[src][1:]))
    return planes


def replicate_forward(graph: LayerGraph, fwd: dict[str, np.ndarray], n: int, sample: int = 0) -> dict:
    """``fwd``'s tensors of ``sample`` broadcast to batch ``n`` (no copies); MaxPool switches
    are re-offset for each copy."""
    out = {}
    planes = _switch_planes(graph, fwd)
    for name, t in fwd.items():
        one = t[sample:sample + 1]
        if name in planes:
            plane = planes[name]
            out[name] = (one - sample * plane) + (np.arange(n, dtype=np.int64) * plane).reshape((n,) + (1,) * (t.ndim - 1))
        else:
            out[name] = np.broadcast_to(one, (n,) + t.shape[1:])
    return out


def join_runs(graph: LayerGraph, runs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The forward tensors of consecutive runs (a model fixed to a batch size, run that many
    samples at a time) as one batch: each run numbers its switches from its own first sample,
    so they are moved past the samples of the runs before it."""
    planes = _switch_planes(graph, runs[0])
    out = {}
    for name in runs[0]:
        if name in planes:
            pieces, first = [], 0
            for run in runs:
                pieces.append(run[name] + first * planes[name])
                first += run[name].shape[0]
            out[name] = np.concatenate(pieces)
        else:
            out[name] = np.concatenate([run[name] for run in runs])
    return out
