"""One sample's forward tensors as a batch of n views: several backward passes of the same
input (one per restricted relevance, one per deconvolved neuron) run as one batch without
running the model n times."""

from __future__ import annotations

import numpy as np

from ..graph.layers import LayerGraph, MaxPoolLayer


def replicate_forward(graph: LayerGraph, fwd: dict[str, np.ndarray], n: int, sample: int = 0) -> dict:
    """``fwd``'s tensors of ``sample`` broadcast to batch ``n`` (no copies); MaxPool switches,
    which index the flattened batch, are re-offset for each copy."""
    out = {}
    pools = {l.indices: l for l in graph.layers if isinstance(l, MaxPoolLayer)}
    for name, t in fwd.items():
        one = t[sample:sample + 1]
        if name in pools:
            src = pools[name].inputs[0]
            plane = int(np.prod(fwd[src].shape[1:])) if src in fwd else int(np.prod(graph.shapes[src][1:]))
            out[name] = (one - sample * plane) + (np.arange(n, dtype=np.int64) * plane).reshape((n,) + (1,) * (t.ndim - 1))
        else:
            out[name] = np.broadcast_to(one, (n,) + t.shape[1:])
    return out
