"""Command-line inputs (images or ``.npy`` tensors) turned into model inputs, batch by batch."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, TypeVar

import numpy as np

from ..errors import InputError
from .images import Preprocess, load_image, load_npy, tensor_display

T = TypeVar("T")
_END = object()

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass
class Sample:
    """One model input with what is needed to write its results."""

    source: Path
    name: str            # output sub-folder, unique within the run
    tensor: np.ndarray   # model input without the batch axis
    display: np.ndarray  # uint8 RGB picture for overlays


def check_paths(paths: list[Path]) -> None:
    """Refuse missing inputs and folders before any work starts."""
    if not paths:
        raise InputError("no INPUT given (image files or .npy tensors)")
    for p in paths:
        if not p.exists():
            raise InputError(f"input not found: {p}")
        if p.is_dir():
            raise InputError(f"input is a directory, not a file: {p}")


def unique_names(paths: list[Path]) -> list[str]:
    """Output folder names from file stems; repeated stems get ``-2``, ``-3`` …"""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        stem = p.stem or "input"
        seen[stem] = seen.get(stem, 0) + 1
        out.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return out


class InputReader:
    """Reads inputs for a model: images through ``pre``, ``.npy`` files used as they are."""

    def __init__(self, input_shape: tuple, pre: Preprocess | None, layout: str,
                 max_pixels: int = 50_000_000) -> None:
        self.input_shape, self.pre, self.layout, self.max_pixels = input_shape, pre, layout, max_pixels
        if pre is not None:  # a model whose input is itself a decompression bomb is refused up front
            h, w = pre.size
            steps = [("the model's input", h * w)]
            if pre.resize:
                steps.append(("the resize before the crop (--resize)", pre.resize * pre.resize))
            for what, pixels in steps:
                if pixels > max_pixels:
                    raise InputError(f"{what} is {pixels:,} pixels, more than the limit of {max_pixels:,} "
                                     "(--max-pixels)")

    def read(self, path: Path, name: str) -> list[Sample]:
        if path.suffix.lower() == ".npy":
            # any number of samples: they are batched by --batch-size, and a model fixed to a
            # batch size is run that many at a time (``Analyzer.forward``)
            x = load_npy(path, (None, *self.input_shape[1:]))
            many = x.shape[0] > 1
            return [Sample(path, f"{name}-{i}" if many else name, x[i],
                           tensor_display(x[i], self.layout) if x[i].ndim == 3 else np.zeros((1, 1, 3), np.uint8))
                    for i in range(x.shape[0])]
        if self.pre is None:
            raise InputError(f"{path.name}: this model's input {self.input_shape} is not an image; "
                             "pass a .npy tensor instead")
        img = load_image(path, self.max_pixels)
        return [Sample(path, name, self.pre.apply(img), self.pre.display(img))]

    def batches(self, paths: list[Path], batch_size: int) -> Iterator[list[Sample]]:
        """Samples in groups of ``batch_size`` (a multi-sample .npy is split across groups)."""
        pending: list[Sample] = []
        for path, name in zip(paths, unique_names(paths)):
            pending.extend(self.read(path, name))
            while len(pending) >= batch_size:
                yield pending[:batch_size]
                pending = pending[batch_size:]
        if pending:
            yield pending


def list_images(folder: Path, recursive: bool = False, option: str = "--images") -> tuple[list[Path], int]:
    """Image files and ``.npy`` tensors in ``folder`` (and its subfolders with ``recursive``),
    sorted by path, and how many other entries were skipped (``option`` names it in errors)."""
    if not folder.is_dir():
        raise InputError(f"{option} {folder}: not a folder")
    entries = sorted(folder.rglob("*") if recursive else folder.iterdir())
    wanted = lambda p: p.is_file() and (p.suffix.lower() in IMAGE_SUFFIXES or p.suffix.lower() == ".npy")  # noqa: E731
    found = [p for p in entries if wanted(p)]
    skipped = sum(1 for p in entries if not wanted(p) and not (recursive and p.is_dir()))
    if not found:
        raise InputError(f"{option} {folder}: no images (.png, .jpg, …) or .npy files in it"
                         + ("" if recursive else " (--recursive looks into subfolders)"))
    return found, skipped


def read_ahead(items: Iterator[T]) -> Iterator[T]:
    """``items``, each produced on a worker thread while the caller works on the one before.

    Decoding and resizing a 12-megapixel photo takes 0.18-0.23 s, about 40 % of explaining it
    with VGG16 on two cores; read one batch ahead, it runs beside the analyzer instead
    (Pillow and numpy release the GIL). A reading error (``InputError``) reaches the caller
    where it would have without reading ahead: after every item before it. A caller that
    stops (an error, Ctrl-C) does not wait for the read in flight: it only reads files."""
    source = iter(items)
    ahead = _NextItem(source)
    while True:
        ahead.join()
        if ahead.error is not None:
            raise ahead.error
        if ahead.item is _END:
            return
        item = ahead.item
        ahead = _NextItem(source)
        yield item


class _NextItem(threading.Thread):
    """``next(source)`` on a daemon thread: its ``item`` (``_END`` when done) or ``error``."""

    def __init__(self, source: Iterator) -> None:
        super().__init__(name="lrpath-reader", daemon=True)
        self.source, self.item, self.error = source, _END, None
        self.start()

    def run(self) -> None:
        try:
            self.item = next(self.source, _END)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            self.error = exc
