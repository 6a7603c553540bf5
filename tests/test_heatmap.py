"""Relevance pictures: channel sums, diverging colours, overlays and PNG writing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lrpath_onnx.errors import InputError
from lrpath_onnx.viz.heatmap import (
    heatmap_rgb,
    normalise,
    overlay_rgb,
    relevance_map,
    save_png,
)


def _ref_colours(v: np.ndarray) -> np.ndarray:
    """Float64 reference: (1, 1-v, 1-v) for v >= 0, (1+v, 1+v, 1) for v < 0, times 255."""
    out = np.empty(v.shape + (3,))
    for idx in np.ndindex(v.shape):
        x = v[idx]
        out[idx] = (1.0, 1.0 - x, 1.0 - x) if x >= 0 else (1.0 + x, 1.0 + x, 1.0)
    return np.rint(out * 255.0)


def _ref_gray(img: np.ndarray) -> np.ndarray:
    g = np.rint(0.299 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2])
    return np.repeat(g[..., None], 3, axis=2)


# ---------------------------------------------------------------- relevance_map
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_relevance_map_sums_channels(seed):
    rel = np.random.default_rng(seed).standard_normal((3, 5, 7)).astype(np.float32)
    m = relevance_map(rel, "nchw")
    assert m.shape == (5, 7) and m.dtype == np.float64
    np.testing.assert_allclose(m, rel.astype(np.float64).sum(axis=0), rtol=0, atol=1e-12)
    m2 = relevance_map(rel.transpose(1, 2, 0), "NHWC")
    np.testing.assert_allclose(m2, m, rtol=0, atol=1e-12)
    np.testing.assert_allclose(relevance_map(rel[None], "nchw"), m)
    assert m.sum() == pytest.approx(float(rel.astype(np.float64).sum()))


def test_relevance_map_rejects_bad_shape_and_layout():
    with pytest.raises(InputError, match="3 axes"):
        relevance_map(np.zeros((4, 4)), "nchw")
    with pytest.raises(InputError, match="layout"):
        relevance_map(np.zeros((1, 4, 4)), "chw")


# ---------------------------------------------------------------- heatmap_rgb
def test_heatmap_colours_at_extremes_and_zero():
    m = np.array([[2.0, 0.0, -2.0], [1.0, -1.0, 0.5]])
    rgb = heatmap_rgb(m, clip_percentile=100)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    assert tuple(rgb[0, 0]) == (255, 0, 0)
    assert tuple(rgb[0, 1]) == (255, 255, 255)
    assert tuple(rgb[0, 2]) == (0, 0, 255)
    assert tuple(rgb[1, 0]) == (255, 128, 128)  # v = 0.5 → 255 * 0.5 = 127.5 → 128
    assert tuple(rgb[1, 1]) == (128, 128, 255)
    assert tuple(rgb[1, 2]) == (255, 191, 191)  # v = 0.25 → 191.25


def test_heatmap_all_zero_is_white():
    rgb = heatmap_rgb(np.zeros((4, 5)))
    assert (rgb == 255).all()


def test_heatmap_sparse_map_falls_back_to_max():
    m = np.zeros((30, 30))
    m[3, 4] = 5.0
    m[7, 8] = -2.5
    assert np.percentile(np.abs(m), 99.5) == 0
    rgb = heatmap_rgb(m, clip_percentile=99.5)
    assert tuple(rgb[3, 4]) == (255, 0, 0)
    assert tuple(rgb[7, 8]) == (128, 128, 255)
    assert (rgb[0, 0] == 255).all()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_heatmap_matches_reference_with_percentile_clip(seed):
    m = np.random.default_rng(seed).standard_normal((16, 12)) * 3.0
    s = np.percentile(np.abs(m), 90)
    v = np.clip(m / s, -1, 1)
    np.testing.assert_allclose(normalise(m, 90), v, rtol=0, atol=1e-12)
    rgb = heatmap_rgb(m, clip_percentile=90)
    np.testing.assert_array_equal(rgb, _ref_colours(v).astype(np.uint8))
    # symmetric: flipping the sign swaps red and blue
    flipped = heatmap_rgb(-m, clip_percentile=90)
    np.testing.assert_array_equal(flipped, rgb[..., ::-1])
    # the strongest 10 % are saturated
    strong = np.abs(m) >= s
    assert ((rgb[strong] == [255, 0, 0]).all(axis=1) | (rgb[strong] == [0, 0, 255]).all(axis=1)).all()


def test_heatmap_rejects_bad_input():
    with pytest.raises(InputError, match="NaN"):
        heatmap_rgb(np.array([[np.nan, 1.0]]))
    with pytest.raises(InputError, match="2 axes"):
        heatmap_rgb(np.zeros((2, 2, 2)))
    with pytest.raises(InputError, match="percentile"):
        heatmap_rgb(np.ones((2, 2)), clip_percentile=0)


# ---------------------------------------------------------------- overlay_rgb
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_overlay_zero_relevance_shows_gray_image(seed):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (10, 8, 3), dtype=np.uint8)
    m = np.zeros((10, 8))
    m[2:4, 3:5] = rng.uniform(0.5, 1.0, (2, 2))
    m[6, 1] = -0.7
    out = overlay_rgb(img, m, alpha=0.6)
    gray = _ref_gray(img.astype(np.float64))
    zero = m == 0
    np.testing.assert_array_equal(out[zero], gray[zero].astype(np.uint8))
    assert not np.array_equal(out[~zero], gray[~zero].astype(np.uint8))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_overlay_matches_formula(seed):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    m = rng.standard_normal((6, 9))
    alpha = 0.6
    out = overlay_rgb(img, m, alpha=alpha, clip_percentile=100)
    v = np.clip(m / np.abs(m).max(), -1, 1)
    w = alpha * np.sqrt(np.abs(v))[..., None]  # sqrt: weak relevance of either sign stays visible
    # the reference blends the unrounded colours
    heat = np.stack([np.where(v >= 0, 1.0, 1 + v), np.where(v >= 0, 1 - v, 1 + v),
                     np.where(v >= 0, 1 - v, 1.0)], axis=-1) * 255.0
    ref = np.rint((1 - w) * _ref_gray(img.astype(np.float64)) + w * heat)
    np.testing.assert_array_equal(out, ref.astype(np.uint8))
    # at the strongest pixel, with alpha = 1, the colour is pure red or blue
    full = overlay_rgb(img, m, alpha=1.0, clip_percentile=100)
    i = np.unravel_index(np.argmax(np.abs(m)), m.shape)
    assert tuple(full[i]) in {(255, 0, 0), (0, 0, 255)}


def test_overlay_resizes_map_bilinear():
    img = np.full((8, 8, 3), 100, dtype=np.uint8)
    m = np.zeros((4, 4))
    m[0, 0] = 1.0
    out = overlay_rgb(img, m, alpha=1.0, clip_percentile=100)
    assert out.shape == (8, 8, 3)
    assert tuple(out[0, 0]) == (255, 0, 0)  # the corner keeps the full value
    assert tuple(out[7, 7]) == (100, 100, 100)  # far away: relevance 0 → gray image
    assert tuple(out[0, 0]) != tuple(out[0, 2])  # smooth falloff, not a hard block


def test_overlay_all_zero_map_and_gray_input():
    gray_img = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = overlay_rgb(gray_img, np.zeros((3, 4)))
    np.testing.assert_array_equal(out, np.repeat(gray_img[..., None], 3, axis=2))


def test_overlay_rejects_bad_alpha_and_image():
    with pytest.raises(InputError, match="alpha"):
        overlay_rgb(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2)), alpha=1.5)
    with pytest.raises(InputError, match="RGB"):
        overlay_rgb(np.zeros((2, 2, 4), np.uint8), np.zeros((2, 2)))


# ---------------------------------------------------------------- save_png
@pytest.mark.parametrize("seed", [0, 1])
def test_save_png_roundtrip(tmp_path, seed):
    rgb = np.random.default_rng(seed).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    path = tmp_path / "heat.png"
    save_png(path, rgb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heat.png"]
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "RGB" and img.size == (5, 7)
        np.testing.assert_array_equal(np.asarray(img), rgb)


def test_save_png_scale_to_uses_nearest(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    path = tmp_path / "mnist.png"
    save_png(path, rgb, scale_to=224)
    with Image.open(path) as img:
        assert img.size == (224, 224)
        big = np.asarray(img)
    np.testing.assert_array_equal(big, np.repeat(np.repeat(rgb, 8, axis=0), 8, axis=1))


def test_save_png_scale_to_non_divisible_and_large(tmp_path):
    rgb = np.zeros((30, 50, 3), dtype=np.uint8)
    save_png(tmp_path / "a.png", rgb, scale_to=100)
    with Image.open(tmp_path / "a.png") as img:
        assert img.size == (200, 120)  # factor ceil(100 / 30) = 4; short side 120 >= 100
    save_png(tmp_path / "b.png", rgb, scale_to=10)
    with Image.open(tmp_path / "b.png") as img:
        assert img.size == (50, 30)  # already large enough: untouched


def test_save_png_rejects_float(tmp_path):
    with pytest.raises(InputError, match="uint8"):
        save_png(tmp_path / "x.png", np.zeros((3, 3, 3)))
    assert list(tmp_path.iterdir()) == []
