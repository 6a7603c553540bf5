"""Image loading, preprocessing, input-shape inference, z-bounds and .npy inputs."""

from __future__ import annotations

import pickle
import warnings
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lrpath_onnx.io.images as images
from lrpath_onnx.errors import InputError
from lrpath_onnx.io.images import (
    Preprocess,
    load_image,
    load_npy,
    preprocess_from_input_shape,
    tensor_display,
    to_gray,
    to_rgb,
    z_bounds,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_with_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares width x height but carries only a few bytes of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                     + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))
    return path


# ---------------------------------------------------------------- load_image: modes
def test_16bit_gray_scaled_by_actual_max(tmp_path):
    a = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as raw:
        assert raw.mode in ("I;16", "I")
    img = load_image(tmp_path / "g16.png")
    assert img.mode == "L"
    np.testing.assert_array_equal(np.asarray(img), [[0, 64], [128, 255]])  # 63.75, 127.5
    np.testing.assert_array_equal(np.asarray(to_rgb(img))[..., 1], [[0, 64], [128, 255]])


def test_32bit_int_and_negative_and_float(tmp_path):
    i32 = Image.fromarray(np.array([[0, 35000], [70000, 70000]], dtype=np.int32))
    assert i32.mode == "I"
    np.testing.assert_array_equal(np.asarray(to_gray(i32)), [[0, 128], [255, 255]])
    neg = Image.fromarray(np.array([[-100, 0], [100, 300]], dtype=np.int32))
    np.testing.assert_array_equal(np.asarray(to_gray(neg)), [[0, 64], [128, 255]])  # (v+100)/400
    f = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32)
    Image.fromarray(f).save(tmp_path / "f.tif")
    img = load_image(tmp_path / "f.tif")
    assert img.mode == "L"
    np.testing.assert_array_equal(np.asarray(img), [[0, 64], [128, 255]])
    rgb = np.asarray(to_rgb(Image.fromarray(f)))
    assert rgb.shape == (2, 2, 3) and (rgb[..., 0] == rgb[..., 2]).all()


def test_float_image_with_nan_is_input_error():
    with pytest.raises(InputError, match="NaN"):
        to_gray(Image.fromarray(np.array([[np.nan, 1.0]], dtype=np.float32)))


def test_cmyk(tmp_path):
    img = Image.new("CMYK", (3, 2), (0, 255, 0, 0))
    img.save(tmp_path / "cmyk.tif")
    out = load_image(tmp_path / "cmyk.tif")
    assert out.mode == "RGB" and out.size == (3, 2)
    assert (np.asarray(out) == [255, 0, 255]).all()
    img.save(tmp_path / "cmyk.jpg", quality=95)
    out = np.asarray(load_image(tmp_path / "cmyk.jpg"), dtype=int)
    assert np.abs(out - [255, 0, 255]).max() <= 8


def test_palette_with_transparency_composited_on_white(tmp_path):
    pal = Image.new("P", (4, 1))
    pal.putpalette([255, 0, 0, 0, 200, 0] + [0] * 762)
    pal.putdata([0, 1, 1, 0])
    pal.save(tmp_path / "pal.png", transparency=0)
    out = np.asarray(load_image(tmp_path / "pal.png"))
    np.testing.assert_array_equal(out, [[[255, 255, 255], [0, 200, 0], [0, 200, 0], [255, 255, 255]]])
    pal.save(tmp_path / "pal.gif", transparency=0)
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "pal.gif")), out)
    pal.save(tmp_path / "opaque.png")
    opaque = np.asarray(load_image(tmp_path / "opaque.png"))
    assert tuple(opaque[0, 0]) == (255, 0, 0)


def test_rgba_alpha_composited_on_white(tmp_path):
    a = np.array([[[100, 50, 0, 128], [10, 20, 30, 0], [10, 20, 30, 255]]], dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "rgba.png")
    out = np.asarray(load_image(tmp_path / "rgba.png"))
    # c * a/255 + 255 * (1 - a/255): 177.196, 152.098, 127.0
    np.testing.assert_array_equal(out, [[[177, 152, 127], [255, 255, 255], [10, 20, 30]]])


def test_la_stays_gray_and_is_composited(tmp_path):
    a = np.array([[[100, 128], [7, 255], [0, 0]]], dtype=np.uint8)
    Image.fromarray(a, mode="LA").save(tmp_path / "la.png")
    out = load_image(tmp_path / "la.png")
    assert out.mode == "L"
    np.testing.assert_array_equal(np.asarray(out), [[177, 7, 255]])


def test_pgm_gray(tmp_path):
    Image.fromarray(np.array([[0, 7, 255]], dtype=np.uint8)).save(tmp_path / "g.pgm")
    out = load_image(tmp_path / "g.pgm")
    assert out.mode == "L"
    np.testing.assert_array_equal(np.asarray(out), [[0, 7, 255]])


def test_one_bit(tmp_path):
    img = Image.new("1", (3, 1))
    img.putdata([0, 1, 0])
    img.save(tmp_path / "bw.bmp")
    out = load_image(tmp_path / "bw.bmp")
    assert out.mode == "L"
    np.testing.assert_array_equal(np.asarray(out), [[0, 255, 0]])
    np.testing.assert_array_equal(np.asarray(to_rgb(img))[0, 1], [255, 255, 255])


@pytest.mark.parametrize("ext", ["png", "bmp", "gif", "tiff", "webp", "ppm"])
def test_lossless_formats_roundtrip(tmp_path, ext):
    rgb = np.random.default_rng(3).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    src = Image.fromarray(rgb)
    if ext == "gif":
        src = src.quantize(colors=256)
        rgb = np.asarray(src.convert("RGB"))
    path = tmp_path / f"img.{ext}"
    src.save(path, **({"lossless": True} if ext == "webp" else {}))
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (6, 5)
    np.testing.assert_array_equal(np.asarray(out), rgb)


def test_jpeg_and_one_pixel(tmp_path):
    Image.new("RGB", (16, 16), (200, 30, 60)).save(tmp_path / "c.jpg", quality=95)
    out = np.asarray(load_image(tmp_path / "c.jpg"), dtype=int)
    assert np.abs(out - [200, 30, 60]).max() <= 3
    Image.new("RGB", (1, 1), (10, 20, 30)).save(tmp_path / "one.png")
    one = load_image(tmp_path / "one.png")
    assert one.size == (1, 1)
    x = Preprocess(size=(224, 224)).apply(one)
    assert x.shape == (3, 224, 224)
    np.testing.assert_allclose(x[:, 100, 100], np.array([10, 20, 30]) / 255, rtol=1e-6)


# ---------------------------------------------------------------- load_image: refusals
def test_missing_and_directory(tmp_path):
    with pytest.raises(InputError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(InputError, match="folder"):
        load_image(tmp_path)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_bytes_not_an_image(tmp_path, seed):
    path = tmp_path / "noise.png"
    path.write_bytes(np.random.default_rng(seed).bytes(512))
    with pytest.raises(InputError, match="noise.png"):
        load_image(path)


def test_unsupported_format_refused(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "x.pcx")
    with pytest.raises(InputError, match="not a supported image"):
        load_image(tmp_path / "x.pcx")
    Image.new("RGB", (4, 4)).save(tmp_path / "x.tga")
    with pytest.raises(InputError, match="x.tga"):
        load_image(tmp_path / "x.tga")


def test_truncated_png(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.png"):
        load_image(tmp_path / "cut.png")


def test_max_pixels_checked_on_small_real_image(tmp_path):
    Image.new("RGB", (10, 10)).save(tmp_path / "s.png")
    with pytest.raises(InputError, match=r"s\.png is 10x10 = 100 pixels.*limit of 99"):
        load_image(tmp_path / "s.png", max_pixels=99)
    assert load_image(tmp_path / "s.png", max_pixels=100).size == (10, 10)


def test_crafted_header_refused_before_decoding(tmp_path):
    before = Image.MAX_IMAGE_PIXELS
    # below Pillow's own limit, above ours: our check must fire (data would be truncated)
    path = _png_with_header(tmp_path / "big.png", 8000, 7000)
    with pytest.raises(InputError, match="56000000 pixels"):
        load_image(path)
    # far above Pillow's limit: its DecompressionBombError becomes an InputError
    bomb = _png_with_header(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(InputError, match="bomb.png"):
        load_image(bomb, max_pixels=10**12)
    assert Image.MAX_IMAGE_PIXELS == before


def test_pillow_bomb_limits_follow_our_limit(tmp_path, monkeypatch):
    """Pillow's warning (over its limit) does not leak; its error (over twice) is an InputError."""
    Image.new("RGB", (10, 10), (1, 2, 3)).save(tmp_path / "s.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60)  # 100 pixels: warning zone
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(tmp_path / "s.png").getpixel((0, 0)) == (1, 2, 3)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)  # 100 > 2 * 40: Pillow refuses
    with pytest.raises(InputError, match=r"s\.png is too large"):
        load_image(tmp_path / "s.png")


# ---------------------------------------------------------------- Preprocess
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_apply_known_pixels_formula(seed):
    rgb = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    pre = Preprocess(size=(4, 4), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    x = pre.apply(Image.fromarray(rgb))
    assert x.dtype == np.float32 and x.shape == (3, 4, 4)
    ref = ((rgb.astype(np.float64) / 255 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
    np.testing.assert_allclose(x, ref, rtol=1e-6, atol=1e-6)
    nhwc = Preprocess(size=(4, 4), layout="nhwc", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    np.testing.assert_allclose(nhwc.apply(Image.fromarray(rgb)), ref.transpose(1, 2, 0), atol=1e-6)


def test_apply_bgr_caffe_style():
    img = Image.new("RGB", (2, 2), (10, 20, 30))
    mean = (103.939, 116.779, 123.68)  # in BGR order
    pre = Preprocess(size=(2, 2), scale=1.0, mean=mean, std=(1.0,), channel_order="bgr")
    x = pre.apply(img)
    np.testing.assert_allclose(x[:, 0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-6)


def test_apply_gray_model_and_broadcast_mean():
    img = Image.fromarray(np.array([[[255, 0, 0], [0, 0, 0]]], dtype=np.uint8))
    pre = Preprocess(size=(1, 2), resize=1, channels=1, mean=(0.1307,), std=(0.3081,))
    x = pre.apply(img)
    assert x.shape == (1, 1, 2)
    luma = 76  # Pillow's L of pure red: 255 * 299/1000 = 76.2
    np.testing.assert_allclose(x[0, 0], [(luma / 255 - 0.1307) / 0.3081, -0.1307 / 0.3081], rtol=1e-6)
    default = Preprocess(size=(1, 2), resize=1, channels=1)  # default (0,0,0)/(1,1,1) broadcast to 1
    np.testing.assert_allclose(default.apply(img)[0, 0], [luma / 255, 0.0], rtol=1e-6)


def test_centre_crop_without_resize():
    cols = np.tile(np.arange(8, dtype=np.uint8) * 30, (4, 1))  # 4 high, 8 wide
    img = Image.fromarray(np.stack([cols] * 3, axis=-1))
    pre = Preprocess(size=(4, 4), scale=1.0)
    np.testing.assert_array_equal(pre.apply(img)[0, 0], [60, 90, 120, 150])
    np.testing.assert_array_equal(pre.display(img)[0, :, 0], [60, 90, 120, 150])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_resize_then_crop_matches_torchvision_recipe(seed):
    rgb = np.random.default_rng(seed).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    img = Image.fromarray(rgb)
    pre = Preprocess(size=(224, 224), resize=256, scale=1.0)
    ref = np.asarray(img.resize((384, 256), Image.BILINEAR).crop((80, 16, 304, 240)))
    np.testing.assert_array_equal(pre.display(img), ref)
    np.testing.assert_array_equal(pre.apply(img), ref.transpose(2, 0, 1).astype(np.float32))
    # resize None: short side to max(H, W), then crop
    pre2 = Preprocess(size=(224, 224), scale=1.0)
    ref2 = np.asarray(img.resize((336, 224), Image.BILINEAR).crop((56, 0, 280, 224)))
    np.testing.assert_array_equal(pre2.display(img), ref2)


def test_stretch_and_small_resize():
    rgb = np.random.default_rng(5).integers(0, 256, (50, 80, 3), dtype=np.uint8)
    img = Image.fromarray(rgb)
    pre = Preprocess(size=(32, 24), fit="stretch")
    ref = np.asarray(img.resize((24, 32), Image.BILINEAR))
    np.testing.assert_array_equal(pre.display(img), ref)
    small = Preprocess(size=(40, 40), resize=20)  # resize smaller than the crop: grown to fit
    assert small.display(img).shape == (40, 40, 3)
    tall = Preprocess(size=(30, 60))
    assert tall.apply(img).shape == (3, 30, 60)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"size": (0, 4)}, "size"),
        ({"size": (4,)}, "size"),
        ({"size": (4, 4), "layout": "chw"}, "layout"),
        ({"size": (4, 4), "channels": 2}, "channels"),
        ({"size": (4, 4), "std": (1.0, 0.0, 1.0)}, "std"),
        ({"size": (4, 4), "mean": (0.1, 0.2)}, "mean has 2 values"),
        ({"size": (4, 4), "mean": (0.5, 0.5)}, "mean has 2 values"),  # equal values, still not 1 or 3
        ({"size": (4, 4), "std": (0.5, 0.5, 0.5, 0.5)}, "std has 4 values"),
        ({"size": (4, 4), "channels": 1, "mean": IMAGENET_MEAN}, "mean has 3 values"),
        ({"size": (4, 4), "fit": "pad"}, "fit"),
        ({"size": (4, 4), "resize": -3}, "resize"),
        ({"size": (4, 4), "channel_order": "gbr"}, "channel order"),
        ({"size": (4, 4), "scale": float("nan")}, "scale"),
    ],
)
def test_preprocess_validation(kwargs, match):
    with pytest.raises(InputError, match=match):
        Preprocess(**kwargs)


# ---------------------------------------------------------------- input shapes
@pytest.mark.parametrize(
    "shape, layout, channels, size",
    [
        ((1, 3, 224, 224), "nchw", 3, (224, 224)),
        ((None, 3, 224, 224), "nchw", 3, (224, 224)),
        (("batch", 224, 224, 3), "nhwc", 3, (224, 224)),
        ((1, 1, 28, 28), "nchw", 1, (28, 28)),
        ((1, 28, 28, 1), "nhwc", 1, (28, 28)),
        ((1, 3, 32, 64), "nchw", 3, (32, 64)),
        ((3, 8, 8), "nchw", 3, (8, 8)),
    ],
)
def test_preprocess_from_input_shape(shape, layout, channels, size):
    pre = preprocess_from_input_shape(shape, mean=(0.5,), std=(0.5,))
    assert (pre.layout, pre.channels, pre.size) == (layout, channels, size)
    np.testing.assert_array_equal(pre.mean, (0.5,))


def test_input_shape_unknown_or_ambiguous():
    with pytest.raises(InputError, match="--size"):
        preprocess_from_input_shape((None, 3, None, None))
    pre = preprocess_from_input_shape((None, 3, None, None), size=(100, 120), resize=128)
    assert pre.size == (100, 120) and pre.resize == 128
    with pytest.raises(InputError, match="layout"):
        preprocess_from_input_shape((1, 5, 5, 5))
    with pytest.raises(InputError, match="layout"):
        preprocess_from_input_shape((1, None, 7, None))
    with pytest.raises(InputError, match="does not match"):
        preprocess_from_input_shape((1, 3, 224, 224), size=(256, 256))
    with pytest.raises(InputError, match="channels"):
        preprocess_from_input_shape((1, 3, 224, 224), channels=1)
    with pytest.raises(InputError, match="4 axes"):
        preprocess_from_input_shape((1, 10))
    forced = preprocess_from_input_shape((1, 3, 3, 3), layout="nhwc")
    assert (forced.layout, forced.channels, forced.size) == ("nhwc", 3, (3, 3))


# ---------------------------------------------------------------- z_bounds
def test_z_bounds_imagenet():
    pre = Preprocess(size=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    lo, hi = z_bounds(pre)
    assert lo.shape == hi.shape == (1, 3, 1, 1) and lo.dtype == np.float32
    np.testing.assert_allclose(lo.ravel(), [-2.117904, -2.035714, -1.804444], atol=1e-6)
    np.testing.assert_allclose(hi.ravel(), [2.248908, 2.428571, 2.64], atol=1e-6)
    lo2, hi2 = z_bounds(Preprocess(size=(4, 4), layout="nhwc", mean=IMAGENET_MEAN,
                                   std=IMAGENET_STD))
    assert lo2.shape == (1, 1, 1, 3)
    np.testing.assert_array_equal(lo2.ravel(), lo.ravel())


def test_z_bounds_match_extreme_pixels_and_negative_std():
    pre = Preprocess(size=(1, 2), fit="stretch", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    img = Image.fromarray(np.array([[[0, 0, 0], [255, 255, 255]]], dtype=np.uint8))
    x = pre.apply(img)
    lo, hi = z_bounds(pre)
    np.testing.assert_allclose(x[:, 0, 0], lo.ravel(), rtol=1e-6)
    np.testing.assert_allclose(x[:, 0, 1], hi.ravel(), rtol=1e-6)
    flip = Preprocess(size=(2, 2), channels=1, scale=1.0, mean=(127.5,), std=(-127.5,))
    lo, hi = z_bounds(flip)
    assert lo.shape == (1, 1, 1, 1)
    assert (lo.item(), hi.item()) == (-1.0, 1.0)  # min/max ordered


# ---------------------------------------------------------------- load_npy
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_load_npy_with_and_without_batch(tmp_path, seed):
    arr = np.random.default_rng(seed).standard_normal((3, 8, 8))
    np.save(tmp_path / "x.npy", arr)
    x = load_npy(tmp_path / "x.npy", (1, 3, 8, 8))
    assert x.shape == (1, 3, 8, 8) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0], arr.astype(np.float32))
    np.save(tmp_path / "b.npy", np.stack([arr, arr]).astype(np.float16))
    xb = load_npy(tmp_path / "b.npy", (None, 3, 8, 8))
    assert xb.shape == (2, 3, 8, 8)
    np.testing.assert_array_equal(xb[1], arr.astype(np.float16).astype(np.float32))
    np.save(tmp_path / "i.npy", np.arange(64, dtype=np.uint8).reshape(1, 8, 8))
    xi = load_npy(tmp_path / "i.npy", ("N", 1, "H", "W"))
    assert xi.shape == (1, 1, 8, 8) and xi[0, 0, 7, 7] == 63.0


def test_load_npy_rejections(tmp_path):
    np.save(tmp_path / "o.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="o.npy"):
        load_npy(tmp_path / "o.npy", (1, 2))
    (tmp_path / "p.npy").write_bytes(pickle.dumps([1.0, 2.0]))
    with pytest.raises(InputError, match="p.npy"):
        load_npy(tmp_path / "p.npy", (1, 2))
    np.save(tmp_path / "w.npy", np.zeros((3, 7, 8), np.float32))
    with pytest.raises(InputError, match=r"\(3, 7, 8\), expected \(\?, 3, 8, 8\)"):
        load_npy(tmp_path / "w.npy", (None, 3, 8, 8))
    np.save(tmp_path / "b2.npy", np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(InputError, match=r"\(2, 3, 8, 8\), expected \(1, 3, 8, 8\)"):
        load_npy(tmp_path / "b2.npy", (1, 3, 8, 8))
    for name, bad in [("nan", np.nan), ("inf", np.inf)]:
        a = np.zeros((3, 2, 2))
        a[1, 1, 0] = bad
        np.save(tmp_path / f"{name}.npy", a)
        with pytest.raises(InputError, match="NaN or infinite"):
            load_npy(tmp_path / f"{name}.npy", (1, 3, 2, 2))
    np.save(tmp_path / "big.npy", np.full((3, 2, 2), 1e300))  # overflows float32
    with pytest.raises(InputError, match="NaN or infinite"):
        load_npy(tmp_path / "big.npy", (1, 3, 2, 2))
    for dt in (np.complex64, np.bool_):
        np.save(tmp_path / "d.npy", np.zeros((3, 2, 2), dt))
        with pytest.raises(InputError, match="dtype"):
            load_npy(tmp_path / "d.npy", (1, 3, 2, 2))
    np.savez(tmp_path / "z.npz", x=np.zeros((3, 2, 2)))
    with pytest.raises(InputError, match="npz"):
        load_npy(tmp_path / "z.npz", (1, 3, 2, 2))
    with pytest.raises(InputError, match="missing.npy"):
        load_npy(tmp_path / "missing.npy", (1, 3, 2, 2))
    with pytest.raises(InputError, match="not a file"):
        load_npy(tmp_path, (1, 3, 2, 2))


def test_load_npy_never_allows_pickle(tmp_path, monkeypatch):
    calls = []
    real_load = np.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("allow_pickle"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(images.np, "load", spy)
    np.save(tmp_path / "x.npy", np.zeros((1, 2, 2)))
    load_npy(tmp_path / "x.npy", (1, 1, 2, 2))
    assert calls == [False]
    assert "allow_pickle=True" not in Path(images.__file__).read_text()


# ---------------------------------------------------------------- tensor_display
def test_tensor_display_gray_rgb_and_other():
    x1 = np.array([[[-1.0, 0.0], [1.0, 3.0]]])  # (1, 2, 2)
    d1 = tensor_display(x1, "nchw")
    assert d1.shape == (2, 2, 3) and d1.dtype == np.uint8
    np.testing.assert_array_equal(d1[..., 0], [[0, 64], [128, 255]])
    assert (d1[..., 0] == d1[..., 2]).all()
    x3 = np.zeros((2, 1, 3))  # nhwc
    x3[0, 0] = [1.0, 0.0, 0.5]
    d3 = tensor_display(x3, "nhwc")
    np.testing.assert_array_equal(d3[0, 0], [255, 0, 128])
    np.testing.assert_array_equal(d3[1, 0], [0, 0, 0])
    np.testing.assert_array_equal(tensor_display(x3, "nhwc", channel_order="bgr")[0, 0], [128, 0, 255])
    x5 = np.stack([np.full((2, 2), float(c)) for c in range(5)])
    x5[:, 0, 0] += 5.0
    d5 = tensor_display(x5, "nchw")
    np.testing.assert_array_equal(d5[..., 1], [[255, 0], [0, 0]])
    assert (tensor_display(np.ones((3, 4, 4)), "nchw") == 0).all()
    with pytest.raises(InputError, match="3 axes"):
        tensor_display(np.zeros((1, 3, 4, 4)), "nchw")


@pytest.mark.parametrize("seed", [0, 1])
def test_tensor_display_inverts_preprocess_up_to_rounding(seed):
    rgb = np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    rgb[0, 0], rgb[0, 1] = 0, 255  # full range so min-max normalisation is the identity
    x = Preprocess(size=(6, 6)).apply(Image.fromarray(rgb))
    np.testing.assert_array_equal(tensor_display(x, "nchw"), rgb)
