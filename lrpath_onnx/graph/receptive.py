"""Receptive fields: the input elements that can change a neuron.

Computed from the graph itself: each layer's handler says which of its input elements an
output box reads (``OpHandler.input_boxes``: kernels, strides, pads and dilations of Conv
and pools, pads, transposes, resizes, concatenations), and the boxes are carried from the
neuron down to the input, joined where branches meet. A box is an inclusive (lo, hi) span
per non-batch axis; the answer is the bounding box (a dilated kernel's field has holes).
"""

from __future__ import annotations

from .layers import LayerGraph


def receptive_box(graph: LayerGraph, tensor: str, index: tuple[int, ...]) -> tuple | None:
    """The box of ``graph.input`` (its non-batch axes) that element ``index`` (no batch axis)
    of ``tensor`` reads, or None when it reads no input element."""
    return carry_box(graph, tensor, tuple((int(i), int(i)) for i in index))


def carry_box(graph: LayerGraph, tensor: str, box: tuple) -> tuple | None:
    """The input box that the elements ``box`` of ``tensor`` read."""
    graph.fill_open_shapes()
    pending = {tensor: box}
    for layer in reversed(graph.layers):
        b = pending.pop(layer.output, None)
        if b is None:
            continue
        for name, sub in zip(layer.inputs, layer.handler.input_boxes(layer, b, graph.shapes)):
            if sub is not None:
                pending[name] = union(pending[name], sub) if name in pending else sub
    return pending.get(graph.input)


def union(a: tuple, b: tuple) -> tuple:
    """The bounding box of two boxes."""
    return tuple((min(x0, y0), max(x1, y1)) for (x0, x1), (y0, y1) in zip(a, b))


def spatial_box(box: tuple, layout: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """(rows, columns) of an input box in the model's layout (``nchw`` or ``nhwc``)."""
    return (box[1], box[2]) if layout == "nchw" else (box[0], box[1])
