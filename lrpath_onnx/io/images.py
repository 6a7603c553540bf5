"""Turn image files (or saved tensors) into model inputs, and model inputs into pictures.

Images come from users, so every way a file can be wrong (missing, not an image,
truncated, absurdly large) becomes one ``InputError`` naming it, and every colour mode
Pillow can decode is converted rather than refused. Preprocessing follows the
torchvision convention (resize the short side, centre-crop, scale, normalise) so that
models exported from PyTorch see what they saw in training.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError

#: Pillow format names accepted by :func:`load_image` (JPEG includes phones' MPO files,
#: PPM covers pbm/pgm/ppm). Others are refused: some (EPS) would run external programs.
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
_WIDE_GRAY = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_GRAY = ("1", "L", "LA", "La") + _WIDE_GRAY
_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")


def load_image(path: str | os.PathLike[str], max_pixels: int = 50_000_000) -> Image.Image:
    """Read an image file into memory as an ``L`` (grayscale) or ``RGB`` Pillow image.

    The size is checked from the header before any pixel is decoded, so a small file that
    declares a huge picture (a decompression bomb) costs nothing. Grayscale sources stay
    grayscale so 16-bit data is not squeezed through RGB on its way to a 1-channel model.
    Accepts png, jpg, bmp, gif (first frame), tiff (first page), webp and pnm; anything
    missing, a folder, not such an image, truncated or over ``max_pixels`` (width *
    height) raises ``InputError``. The returned image is detached from the file.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"image file not found: {p}")
    if p.is_dir():
        raise InputError(f"image path is a folder, not a file: {p}")
    try:
        with warnings.catch_warnings():
            # our own limit below is authoritative; Pillow's warning would only be noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p, formats=FORMATS) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise InputError(
                        f"image {p} is {width}x{height} = {width * height} pixels, "
                        f"more than the limit of {max_pixels}"
                    )
                img.load()
                img = upright(img)
                return to_gray(img) if img.mode in _GRAY else to_rgb(img)
    except Image.DecompressionBombError as exc:
        raise InputError(f"image {p} is too large to decode safely: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InputError(f"not a supported image ({', '.join(FORMATS).lower()}): {p}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(f"cannot read image {p}: {exc}") from exc


def upright(img: Image.Image) -> Image.Image:
    """The image the way people see it: the EXIF orientation a phone camera writes (rotated,
    mirrored) applied to the pixels, before anything else looks at them."""
    try:
        return ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError):  # a broken EXIF block: the stored pixels, as before
        return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit ``RGB``.

    Transparent pixels are composited onto white (what a viewer shows), and 16/32-bit or
    float grayscale is scaled by its actual maximum, since such files rarely use their
    full range and clipping would turn them white.
    """
    if img.mode in _WIDE_GRAY:
        return _scale_to_l(img).convert("RGB")
    if img.mode == "1":
        return img.convert("L").convert("RGB")
    if img.mode in _ALPHA or "transparency" in img.info:
        return _flatten(img.convert("RGBA"), "RGB")
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise InputError(f"cannot convert colour mode {img.mode} to RGB") from exc


def to_gray(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit ``L``, with the same rules as :func:`to_rgb`."""
    if img.mode in _WIDE_GRAY:
        return _scale_to_l(img)
    if img.mode in ("LA", "La"):
        return _flatten(img.convert("LA"), "L")
    if img.mode in ("1", "L") and "transparency" not in img.info:
        return img.convert("L")
    return to_rgb(img).convert("L")


def _scale_to_l(img: Image.Image) -> Image.Image:
    """Map a wide grayscale image to 0..255 by its maximum (shifted first if negative)."""
    a = np.asarray(img).astype(np.float64)
    if not np.isfinite(a).all():
        raise InputError("image holds NaN or infinite pixel values")
    lo = min(float(a.min()), 0.0) if a.size else 0.0
    span = (float(a.max()) - lo) if a.size else 0.0
    out = np.zeros(a.shape) if span == 0 else (a - lo) * 255.0 / span
    return Image.fromarray(np.rint(out).astype(np.uint8))


def _flatten(img: Image.Image, mode: str) -> Image.Image:
    """Composite an ``RGBA``/``LA`` image onto white: ``c * a + 255 * (1 - a)``."""
    a = np.asarray(img).astype(np.float64)
    alpha = a[..., -1:] / 255.0
    out = np.rint(a[..., :-1] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return Image.fromarray(out[..., 0] if mode == "L" else out)


def per_channel(values: tuple[float, ...], channels: int, name: str) -> np.ndarray:
    """Broadcast ``mean``/``std`` to one value per channel: length 1 or C (or, for a one-channel
    input, an RGB triple of equal values, as grey images are normalised; any other count is a
    typo worth one line, not a silent broadcast)."""
    v = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if v.ndim != 1 or not np.isfinite(v).all():
        raise InputError(f"{name} must be a list of finite numbers, got {values!r}")
    if len(v) == channels:
        return v
    if len(v) == 1 or (channels == 1 and len(v) == 3 and np.all(v == v[0])):
        return np.full(channels, v[0])
    raise InputError(f"{name} has {len(v)} values but the model input has {channels} channels")


@dataclass
class Preprocess:
    """How to turn a picture into one model input (without the batch axis).

    Attributes
    ----------
    size : tuple of int
        Target ``(H, W)``.
    layout : str
        ``"nchw"`` or ``"nhwc"``.
    channels : int
        1 (grayscale) or 3 (colour).
    resize : int or None
        Short side before the centre crop; None means ``max(H, W)``.
    fit : str
        ``"crop"`` (resize, then centre-crop) or ``"stretch"`` (resize straight to size).
    scale, mean, std : float, tuple of float
        Each value becomes ``(pixel * scale - mean) / std`` per channel.
    channel_order : str
        ``"rgb"`` or ``"bgr"`` (Caffe-style models); mean/std are in this order.
    """

    size: tuple[int, int]
    layout: str = "nchw"
    channels: int = 3
    resize: int | None = None
    fit: str = "crop"
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    channel_order: str = "rgb"

    def __post_init__(self) -> None:
        size = tuple(self.size) if isinstance(self.size, (tuple, list)) else ()
        if len(size) != 2 or not all(_positive_int(s) for s in size):
            raise InputError(f"size must be two positive integers (H, W), got {self.size!r}")
        self.size = (int(size[0]), int(size[1]))
        self.layout, self.fit, self.channel_order = (
            str(v).lower() for v in (self.layout, self.fit, self.channel_order)
        )
        for name, value, allowed in (
            ("layout", self.layout, ("nchw", "nhwc")),
            ("fit", self.fit, ("crop", "stretch")),
            ("channel order", self.channel_order, ("rgb", "bgr")),
            ("channels", self.channels, (1, 3)),
        ):
            if value not in allowed:
                raise InputError(f"{name} must be {' or '.join(map(str, allowed))}, got {value!r}")
        if self.resize is not None and not _positive_int(self.resize):
            raise InputError(f"resize must be a positive integer, got {self.resize!r}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise InputError(f"scale must be a positive finite number, got {self.scale!r}")
        if np.any(per_channel(self.std, self.channels, "std") == 0):
            raise InputError(f"std must not contain zero, got {self.std!r}")
        per_channel(self.mean, self.channels, "mean")

    def apply(self, img: Image.Image) -> np.ndarray:
        """The float32 model input for ``img``: (C, H, W) for nchw, (H, W, C) for nhwc."""
        pic = self.fit_image(to_gray(img) if self.channels == 1 else to_rgb(img))
        x = np.asarray(pic, dtype=np.float64).reshape(self.size + (self.channels,))
        if self.channel_order == "bgr":
            x = x[..., ::-1]
        mean = per_channel(self.mean, self.channels, "mean")
        std = per_channel(self.std, self.channels, "std")
        x = (x * self.scale - mean) / std
        if self.layout == "nchw":
            x = x.transpose(2, 0, 1)
        return np.ascontiguousarray(x, dtype=np.float32)

    def display(self, img: Image.Image) -> np.ndarray:
        """The uint8 RGB (H, W, 3) picture the model sees (same resize/crop), for overlays."""
        return np.asarray(self.fit_image(to_rgb(img)), dtype=np.uint8).copy()

    def fit_image(self, img: Image.Image) -> Image.Image:
        """Resize (and centre-crop) to ``size``, the way torchvision's Resize+CenterCrop do; the
        geometry an object mask must follow to stay on its object."""
        h, w = self.size
        if self.fit == "stretch":
            return img.resize((w, h), Image.BILINEAR)
        iw, ih = img.size
        short = self.resize if self.resize is not None else max(h, w)
        if iw <= ih:
            nw, nh = short, int(short * ih / iw)
        else:
            nw, nh = int(short * iw / ih), short
        if nw < w or nh < h:  # a resize smaller than the crop: grow until the crop fits
            grow = max(w / nw, h / nh)
            nw, nh = max(w, math.ceil(nw * grow)), max(h, math.ceil(nh * grow))
        if (nw, nh) != (iw, ih):
            img = img.resize((nw, nh), Image.BILINEAR)
        top, left = int(round((nh - h) / 2.0)), int(round((nw - w) / 2.0))
        return img.crop((left, top, left + w, top + h))


def _positive_int(v: object) -> bool:
    """True for a positive integer (numpy ints included, bools not)."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0


def _known(d: object) -> int | None:
    """A model dimension as an int, or None if symbolic/unknown."""
    return int(d) if _positive_int(d) else None


def _fmt(shape: tuple) -> str:
    """A shape for messages, with unknown dimensions as ``?``."""
    return "(" + ", ".join(str(d) if _known(d) else "?" for d in shape) + ")"


def preprocess_from_input_shape(shape: tuple, **overrides: object) -> Preprocess:
    """Guess layout, channels and size from a model input shape such as (N, 3, 224, 224).

    Axis 1 of size 1 or 3 means NCHW, else a last axis of 1 or 3 means NHWC; anything
    else is ambiguous and must be given explicitly (``layout=``). Explicit ``size`` or
    ``channels`` must agree with the dimensions the model fixes; unknown height/width
    (None or symbolic) need an explicit ``size``. Other overrides go to ``Preprocess``.
    """
    dims = [_known(d) for d in shape]
    if len(dims) == 3:
        dims = [None] + dims
    if len(dims) != 4:
        raise InputError(f"model input shape {_fmt(shape)} is not an image batch (4 axes)")
    layout = str(overrides.get("layout") or "").lower()
    if layout not in ("", "nchw", "nhwc"):
        raise InputError(f"layout must be nchw or nhwc, got {layout!r}")
    if not layout:
        if dims[1] in (1, 3):
            layout = "nchw"
        elif dims[3] in (1, 3):
            layout = "nhwc"
        else:
            raise InputError(f"cannot tell layout of input shape {_fmt(shape)}; give --layout")
    c, h, w = (dims[1], dims[2], dims[3]) if layout == "nchw" else (dims[3], dims[1], dims[2])
    channels = overrides.get("channels", c)
    if channels is None or (c is not None and channels != c):
        raise InputError(f"model input {_fmt(shape)} ({layout}) needs channels {c}, got {channels}")
    size = overrides.get("size")
    if size is None:
        if h is None or w is None:
            raise InputError(f"model input {_fmt(shape)} has unknown height/width; give --size")
        size = (h, w)
    elif h is not None and w is not None and tuple(size) != (h, w):
        raise InputError(f"size {tuple(size)} does not match model input {_fmt(shape)}")
    fields = {**overrides, "layout": layout, "channels": channels, "size": tuple(size)}
    return Preprocess(**fields)  # type: ignore[arg-type]


def z_bounds(pre: Preprocess) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest input values per channel (pixels 0 and 255 after normalising).

    These are the box bounds of the z^B rule for the first layer, shaped to broadcast
    against a batched model input: (1, C, 1, 1) for nchw, (1, 1, 1, C) for nhwc.
    """
    mean = per_channel(pre.mean, pre.channels, "mean")
    std = per_channel(pre.std, pre.channels, "std")
    a, b = (0.0 * pre.scale - mean) / std, (255.0 * pre.scale - mean) / std
    shape = (1, pre.channels, 1, 1) if pre.layout == "nchw" else (1, 1, 1, pre.channels)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    return lo.reshape(shape).astype(np.float32), hi.reshape(shape).astype(np.float32)


def _matches(got: tuple[int, ...], want: list[int | None]) -> bool:
    """Whether a shape fits a pattern whose None entries match anything."""
    return len(got) == len(want) and all(w is None or g == w for g, w in zip(got, want))


def load_npy(path: str | os.PathLike[str], expected_shape: tuple) -> np.ndarray:
    """Load a saved model input (``np.save``) as float32 with batch axis, never unpickling.

    ``expected_shape`` is the model input shape with batch axis (None or symbolic dims
    accept anything); the file may omit the batch axis. The header is checked through a
    memory map before the data are read, so a wrong or huge file is refused cheaply.
    Object, non-numeric, wrongly shaped or non-finite arrays raise ``InputError``.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"tensor file not found: {p}" if not p.exists() else f"not a file: {p}")
    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"cannot read {p} as a numeric .npy array (no pickles): {exc}") from exc
    if not isinstance(arr, np.ndarray):
        arr.close()
        raise InputError(f"{p} is an .npz archive; save one array with np.save")
    if arr.dtype.kind not in "iuf":
        raise InputError(f"{p} holds dtype {arr.dtype}; only integer or float arrays are accepted")
    want = [_known(d) for d in expected_shape]
    if _matches(arr.shape, want):
        shape = arr.shape
    elif _matches(arr.shape, want[1:]):
        shape = (1,) + arr.shape
    elif len(want) == 4 and arr.ndim == 2 and (want[1] == 1 or want[3] == 1) and \
            (_matches(arr.shape, want[2:]) or _matches(arr.shape, want[1:3])):
        # a single-channel image saved without its channel axis: unambiguous, so added
        shape = (1, 1) + arr.shape if want[1] == 1 and _matches(arr.shape, want[2:]) else (1,) + arr.shape + (1,)
    else:
        got, want_s = tuple(arr.shape), _fmt(expected_shape)
        raise InputError(f"{p} has shape {got}, expected {want_s} (batch axis optional)")
    with np.errstate(over="ignore"):  # values beyond float32 become inf, refused below
        x = np.array(arr, dtype=np.float32).reshape(shape)
    del arr  # release the memory map
    if x.size == 0:
        raise InputError(f"{p} holds no values")
    if not np.isfinite(x).all():
        raise InputError(f"{p} holds NaN or infinite values")
    return np.ascontiguousarray(x)


def tensor_display(x: np.ndarray, layout: str, channel_order: str = "rgb") -> np.ndarray:
    """A uint8 RGB (H, W, 3) picture of one model input (no batch axis), for overlays.

    The tensor is min-max normalised as a whole (its preprocessing is unknown); one
    channel is shown gray, three as colour, any other count as the channel mean.
    """
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 3:
        raise InputError(f"a single model input has 3 axes, got shape {a.shape}")
    hwc = a.transpose(1, 2, 0) if str(layout).lower() == "nchw" else a
    if not np.isfinite(hwc).all():
        raise InputError("tensor holds NaN or infinite values")
    if hwc.shape[2] == 3:
        if str(channel_order).lower() == "bgr":
            hwc = hwc[..., ::-1]
    else:
        hwc = np.repeat(hwc.mean(axis=2, keepdims=True), 3, axis=2)
    lo, hi = (float(hwc.min()), float(hwc.max())) if hwc.size else (0.0, 0.0)
    out = np.zeros(hwc.shape) if hi == lo else (hwc - lo) * 255.0 / (hi - lo)
    return np.rint(out).astype(np.uint8)
