"""Relevance pictures: a diverging heatmap and an overlay on the input image.

The colour scale is symmetric around zero, so white always means "no relevance", red
evidence for the explained class and blue evidence against it, and the two sides are
comparable. The scale is a high percentile of |relevance| rather than the maximum, so a
few extreme pixels (common with LRP-epsilon) do not wash everything else out.
"""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image

from ..errors import InputError
from ..io.outputs import write_png


def relevance_map(rel: np.ndarray, layout: str) -> np.ndarray:
    """Sum relevance over channels: (C, H, W) or (H, W, C) → (H, W) float64.

    Summing keeps conservation (the map still adds up to the explained score); a batch
    axis of size 1 is accepted and dropped.
    """
    a = np.asarray(rel, dtype=np.float64)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3:
        raise InputError(f"relevance of one input must have 3 axes, got shape {a.shape}")
    layout = str(layout).lower()
    if layout not in ("nchw", "nhwc"):
        raise InputError(f"layout must be nchw or nhwc, got {layout!r}")
    return a.sum(axis=0 if layout == "nchw" else 2)


def scale_of(m: np.ndarray, clip_percentile: float = 99.5) -> float:
    """The value shown at full colour: a percentile of |m| (the maximum for sparse maps)."""
    mag = np.abs(np.asarray(m, dtype=np.float64))
    if mag.size == 0:
        return 0.0
    s = float(np.percentile(mag, clip_percentile))
    return s if s > 0 else float(mag.max())


def normalise(m: np.ndarray, clip_percentile: float = 99.5, scale: float | None = None) -> np.ndarray:
    """Scale a map to [-1, 1] symmetrically: ``m / s`` clipped, s = percentile of |m| (or the
    given ``scale``, to draw several maps on one scale).

    When the percentile is zero (a sparse map) the maximum of |m| is used instead; an
    all-zero map stays zero.
    """
    a = np.asarray(m, dtype=np.float64)
    if a.ndim != 2:
        raise InputError(f"a relevance map must have 2 axes (H, W), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise InputError("relevance map holds NaN or infinite values")
    if not (0 < clip_percentile <= 100):
        raise InputError(f"clip percentile must be in (0, 100], got {clip_percentile!r}")
    if a.size == 0:
        return a.copy()
    s = scale_of(a, clip_percentile) if scale is None else float(scale)
    if s == 0:
        return np.zeros_like(a)
    return np.clip(a / s, -1.0, 1.0)


def _colours(v: np.ndarray) -> np.ndarray:
    """White→red for v > 0, white→blue for v < 0, as float RGB in [0, 255]."""
    pos, neg = np.clip(v, 0, 1), np.clip(-v, 0, 1)
    rgb = np.empty(v.shape + (3,))
    rgb[..., 0] = 1.0 - neg
    rgb[..., 1] = 1.0 - pos - neg
    rgb[..., 2] = 1.0 - pos
    return rgb * 255.0


def heatmap_rgb(m: np.ndarray, clip_percentile: float = 99.5, scale: float | None = None) -> np.ndarray:
    """Diverging uint8 (H, W, 3) heatmap: +max red (255, 0, 0), 0 white, -max blue (0, 0, 255).

    See :func:`normalise` for the symmetric scale.
    """
    v = normalise(m, clip_percentile, scale)
    return np.rint(_colours(v)).astype(np.uint8)


def with_scale_bar(rgb: np.ndarray, m: np.ndarray, clip_percentile: float = 99.5, scale: float | None = None,
                   width: int = 224, note: str = "") -> np.ndarray:
    """The heatmap enlarged to at least ``width`` pixels with a colour bar under it: the values of
    full blue and full red, and how much of the relevance is positive and negative."""
    from PIL import ImageDraw

    from .graph_draw import _font, png_text

    img = Image.fromarray(np.ascontiguousarray(rgb))
    if img.size[0] < width:
        k = math.ceil(width / img.size[0])
        img = img.resize((img.size[0] * k, img.size[1] * k), Image.NEAREST)
    w, h = img.size
    s = scale_of(m, clip_percentile) if scale is None else float(scale)
    a = np.asarray(m, np.float64)
    pos, neg = float(a[a > 0].sum()), float(-a[a < 0].sum())
    total = pos + neg
    lines = [f"red {pos / total:.0%} of |R|, blue {neg / total:.0%}" if total > 0 else "no relevance"]
    lines += [part.strip() for part in note.split(";") if part.strip()]
    fs = max(11, min(15, w // 22))
    bar_h, pad = max(10, fs), 4
    out = Image.new("RGB", (w, h + bar_h + (fs + 3) * (1 + len(lines)) + 3 * pad), "white")
    out.paste(img, (0, 0))
    grad = np.rint(_colours(np.linspace(-1, 1, w - 2 * pad)[None, :].repeat(bar_h, 0))).astype(np.uint8)
    out.paste(Image.fromarray(grad), (pad, h + pad))
    draw = ImageDraw.Draw(out)
    font = _font(fs)
    y = h + bar_h + 2 * pad
    for text, anchor, x in ((f"−{s:.3g}", "la", pad), ("0", "ma", w // 2), (f"+{s:.3g}", "ra", w - pad)):
        draw.text((x, y), png_text(text), fill=(30, 30, 30), font=font, anchor=anchor)
    for i, text in enumerate(lines):
        draw.text((pad, y + (fs + 3) * (i + 1)), png_text(text), fill=(30, 30, 30), font=font)
    return np.asarray(out)


def _resize_map(m: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a float map (Pillow mode ``F``) to (height, width)."""
    img = Image.fromarray(np.ascontiguousarray(m, dtype=np.float32))
    return np.asarray(img.resize((width, height), Image.BILINEAR), dtype=np.float64)


def gray_rgb(image_rgb: np.ndarray) -> np.ndarray:
    """Luma (ITU-R 601: 0.299 R + 0.587 G + 0.114 B) of an RGB picture, as float (H, W, 3).

    The overlay shows the image in gray so the red/blue of the heatmap is not confused
    with colours of the photo.
    """
    img = np.asarray(image_rgb, dtype=np.float64)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise InputError(f"image must be (H, W, 3) RGB, got shape {img.shape}")
    luma = np.rint(img @ np.array([0.299, 0.587, 0.114]))
    return np.repeat(luma[..., None], 3, axis=2)


def overlay_rgb(
    image_rgb: np.ndarray, m: np.ndarray, alpha: float = 0.75, clip_percentile: float = 99.5
) -> np.ndarray:
    """Blend the heatmap onto a gray version of the image where relevance is strong.

    Each pixel's blend weight is ``alpha * sqrt|v|`` (v the normalised relevance), so pixels
    without relevance show the gray image unchanged, the strongest show mostly colour, and
    weak relevance of either sign (often the negative side) stays visible.
    A map of another size than the image is resized bilinearly first.

    Parameters
    ----------
    image_rgb : numpy.ndarray
        uint8 (H, W, 3) picture (or (H, W) gray).
    m : numpy.ndarray
        (h, w) relevance map.
    alpha : float
        Weight of the heatmap at the strongest relevance, in [0, 1].
    clip_percentile : float
        As in :func:`heatmap_rgb`.

    Returns
    -------
    numpy.ndarray
        uint8 (H, W, 3).
    """
    if not (0.0 <= alpha <= 1.0):
        raise InputError(f"overlay alpha must be in [0, 1], got {alpha!r}")
    gray = gray_rgb(image_rgb)
    rel = np.asarray(m, dtype=np.float64)
    if rel.ndim != 2:
        raise InputError(f"a relevance map must have 2 axes (H, W), got shape {rel.shape}")
    if rel.shape != gray.shape[:2]:
        if not np.isfinite(rel).all():
            raise InputError("relevance map holds NaN or infinite values")
        rel = _resize_map(rel, *gray.shape[:2])
    v = normalise(rel, clip_percentile)
    weight = alpha * np.sqrt(np.abs(v))[..., None]
    out = (1.0 - weight) * gray + weight * _colours(v)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def save_png(path: str | os.PathLike[str], rgb: np.ndarray, scale_to: int | None = None) -> None:
    """Write a uint8 picture as PNG atomically, optionally enlarged for small inputs.

    ``scale_to`` enlarges by a whole factor with nearest-neighbour (so a 28×28 map shows
    crisp pixels instead of blur) until the short side is at least ``scale_to``.
    """
    a = np.asarray(rgb)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or a.size == 0:
        raise InputError(f"picture must be (H, W), (H, W, 3) or (H, W, 4), got shape {a.shape}")
    if a.dtype != np.uint8:
        raise InputError(f"picture must be uint8, got {a.dtype}")
    img = Image.fromarray(np.ascontiguousarray(a))
    if scale_to is not None:
        short = min(a.shape[:2])
        if short < scale_to:
            k = math.ceil(scale_to / short)
            img = img.resize((a.shape[1] * k, a.shape[0] * k), Image.NEAREST)
    write_png(path, img)
