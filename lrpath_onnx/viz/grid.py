"""A labelled grid of pictures: the input image first, then one tile per reconstruction."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..io.outputs import write_png
from .graph_draw import png_text


def _tile(rgb: np.ndarray, size: int) -> Image.Image:
    img = Image.fromarray(np.asarray(rgb, np.uint8))
    scale = size / max(img.size)
    resample = Image.NEAREST if scale >= 2 else Image.BILINEAR
    return img.resize((max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))), resample)


def draw_grid(path: str | os.PathLike, tiles: list[tuple[np.ndarray, str]], columns: int = 5,
              tile: int = 180, title: str = "") -> None:
    """Tiles (RGB array, label) in rows of ``columns``, labels under each, written atomically."""
    font = ImageFont.load_default(size=13)
    big = ImageFont.load_default(size=16)
    label_h, pad, top = 20, 10, (30 if title else 8)
    rows = (len(tiles) + columns - 1) // columns
    w = columns * (tile + pad) + pad
    h = top + rows * (tile + label_h + pad) + pad
    canvas = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 6), title, fill=(20, 20, 20), font=big)
    for i, (rgb, label) in enumerate(tiles):
        label = png_text(label)
        r, c = divmod(i, columns)
        x0, y0 = pad + c * (tile + pad), top + r * (tile + label_h + pad)
        img = _tile(rgb, tile)
        canvas.paste(img, (x0 + (tile - img.size[0]) // 2, y0 + (tile - img.size[1]) // 2))
        draw.rectangle([x0 - 1, y0 - 1, x0 + tile, y0 + tile], outline=(200, 200, 200))
        text = label if draw.textlength(label, font=font) <= tile else label[: max(3, int(len(label) * tile /
                                                                                     draw.textlength(label, font=font)) - 1)] + "…"
        draw.text((x0, y0 + tile + 3), text.replace("…", "..."), fill=(40, 40, 40), font=font)
    write_png(path, canvas)
