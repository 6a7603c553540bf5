"""Reconstructions people can read, as Zeiler & Fergus show them: each one cropped to its
neuron's receptive field (``graph.receptive``), scaled up to one tile size, beside the patch of
the input the neuron sees. A block-1 neuron's field is a few pixels wide, a block-5 neuron's
most of the image; on the full frame the former would be a speck on grey."""

from __future__ import annotations

import numpy as np

from ..api import Analyzer
from ..graph.receptive import carry_box, receptive_box, spatial_box
from ..paths.neurons import activation_tensor
from .reconstruct import Neuron, picture

Box = tuple[tuple[int, int], tuple[int, int]]


def neuron_box(an: Analyzer, nr: Neuron, layout: str, whole_map: bool = False) -> Box | None:
    """(rows, columns) of the input the neuron reads, inclusive; its channel's whole map
    with ``whole_map`` (or for a neuron without a position)."""
    tensor = activation_tensor(an, an.graph.find(nr.layer))
    shape = an.graph.shapes[tensor][1:]
    if whole_map or nr.y is None:
        box = carry_box(an.graph, tensor, ((nr.channel, nr.channel),) + tuple((0, d - 1) for d in shape[1:]))
    else:
        box = receptive_box(an.graph, tensor, (nr.channel, nr.y, nr.x))
    return None if box is None else spatial_box(box, layout)


def crop(image: np.ndarray, box: Box | None, input_hw: tuple[int, int]) -> np.ndarray:
    """``image`` (H, W, …) cut to ``box``, given in the model input's pixels (``input_hw``);
    a picture of another size has the box scaled to it."""
    if box is None:
        return image
    (y0, y1), (x0, x1) = box
    sy, sx = image.shape[0] / input_hw[0], image.shape[1] / input_hw[1]
    top, bottom = int(np.floor(y0 * sy)), max(int(np.ceil((y1 + 1) * sy)), int(np.floor(y0 * sy)) + 1)
    left, right = int(np.floor(x0 * sx)), max(int(np.ceil((x1 + 1) * sx)), int(np.floor(x0 * sx)) + 1)
    return image[top:bottom, left:right]


def to_hwc(rec: np.ndarray, layout: str) -> np.ndarray:
    return rec.transpose(1, 2, 0) if layout == "nchw" else rec


def pair(an: Analyzer, nr: Neuron, rec: np.ndarray, display: np.ndarray, layout: str, order: str = "rgb",
         whole_map: bool = False) -> tuple[np.ndarray, np.ndarray, Box | None]:
    """(input patch, reconstruction picture, box): both cut to the neuron's receptive field.
    The reconstruction is normalised within the crop (around grey, as ``picture``)."""
    box = neuron_box(an, nr, layout, whole_map)
    hwc = to_hwc(rec, layout)
    input_hw = hwc.shape[:2]
    cut = crop(hwc, box, input_hw)
    pic = picture(cut.transpose(2, 0, 1) if layout == "nchw" else cut, layout, order)
    return crop(display, box, input_hw), pic, box


def box_text(box: Box | None) -> str:
    if box is None:
        return "whole input"
    (y0, y1), (x0, x1) = box
    return f"{y1 - y0 + 1}x{x1 - x0 + 1} px at ({y0}, {x0})"


def box_json(box: Box | None) -> dict | None:
    return None if box is None else {"rows": list(box[0]), "cols": list(box[1])}
