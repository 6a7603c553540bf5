"""Object regions for the relevance-in-region check: mask images or boxes, brought to the
model's input grid through the same resize/crop as the image itself."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from ..errors import InputError
from ..io.images import Preprocess, upright
from ..io.inputs import IMAGE_SUFFIXES


def find_masks(folder: Path, inputs: list[Path]) -> dict[Path, Path]:
    """The mask file of every input (same stem, any image suffix), all checked before any work."""
    if not folder.is_dir():
        raise InputError(f"--masks {folder}: not a folder")
    by_stem: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            by_stem.setdefault(p.stem, p)
    missing = [p.name for p in inputs if p.stem not in by_stem]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise InputError(f"--masks {folder}: no mask for {', '.join(missing[:3])}{more} (expected e.g. "
                         f"{Path(missing[0]).stem}.png)")
    found = {p: by_stem[p.stem] for p in inputs}
    for mask in found.values():  # headers only: a file that is no image is refused before any work
        try:
            with Image.open(mask):
                pass
        except (OSError, UnidentifiedImageError) as e:
            raise InputError(f"mask {mask}: not a readable image ({e})") from None
    return found


def _box(v: object, where: str) -> tuple[float, float, float, float]:
    if not (isinstance(v, list) and len(v) == 4 and all(isinstance(c, (int, float)) and not isinstance(c, bool)
                                                         and math.isfinite(c) for c in v)):
        raise InputError(f"{where}: a box is [x0, y0, x1, y1] in pixels, got {v!r}")
    x0, y0, x1, y1 = (float(c) for c in v)
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"{where}: box {v} is empty (need x0 < x1 and y0 < y1)")
    return x0, y0, x1, y1


def read_boxes(path: Path, inputs: list[Path]) -> dict[Path, list[tuple[float, float, float, float]]]:
    """``{"file name": [x0, y0, x1, y1] or [[...], ...]}`` in the input's own pixels (boxes of
    one image are joined); every input needs an entry."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"--boxes {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"--boxes {path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise InputError(f"--boxes {path}: expected an object mapping file names to boxes")
    out = {}
    for p in inputs:
        v = data.get(p.name, data.get(str(p)))
        if v is None:
            raise InputError(f"--boxes {path}: no box for {p.name}")
        boxes = v if v and isinstance(v[0], list) else [v]
        out[p] = [_box(b, f"--boxes {path} [{p.name}]") for b in boxes]
    return out


def _fit(img: Image.Image, pre: Preprocess | None, hw: tuple[int, int], name: str) -> np.ndarray:
    if pre is not None:
        img = pre.fit_image(img)
    elif img.size != (hw[1], hw[0]):
        raise InputError(f"region of {name}: {img.size[0]}x{img.size[1]} pixels, but the input tensor is "
                         f"{hw[1]}x{hw[0]} (tensor inputs need regions at the tensor's size)")
    return np.asarray(img, dtype=np.uint8) >= 128


def mask_from_file(mask: Path, pre: Preprocess | None, hw: tuple[int, int], name: str) -> np.ndarray:
    """Boolean (H, W) object mask at the model's input size (mask pixels ≥ 128 are the object)."""
    try:
        with Image.open(mask) as im:
            img = upright(im).convert("L")
    except (OSError, UnidentifiedImageError) as e:
        raise InputError(f"mask {mask}: not a readable image ({e})") from None
    return _fit(img, pre, hw, name)


def mask_from_boxes(image: Path, boxes, pre: Preprocess | None, hw: tuple[int, int]) -> np.ndarray:
    """Boolean (H, W) mask of the union of ``boxes`` (given in ``image``'s pixels) at the model's size."""
    if image.suffix.lower() == ".npy":
        size = (hw[1], hw[0])
    else:
        try:
            with Image.open(image) as im:
                size = upright(im).size  # boxes are drawn on the image as people see it
        except (OSError, UnidentifiedImageError) as e:
            raise InputError(f"{image}: not a readable image ({e})") from None
    canvas = Image.new("L", size, 0)
    draw = ImageDraw.Draw(canvas)
    for x0, y0, x1, y1 in boxes:
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=255)  # x1/y1 exclusive, like array slices
    return _fit(canvas, pre, hw, image.name)


@dataclass
class RegionSource:
    """Where each image's object region comes from, made into a mask only when the image is
    audited (so 50 000 masks never sit in memory, and a Ray worker can make its own)."""

    pre: Preprocess | None
    hw: tuple[int, int]
    masks: dict[Path, Path] | None = None
    boxes: dict[Path, list] | None = None

    def mask(self, image: Path) -> np.ndarray:
        if self.masks is not None:
            return mask_from_file(self.masks[image], self.pre, self.hw, image.name)
        return mask_from_boxes(image, self.boxes[image], self.pre, self.hw)
