"""Tests of spmix_jax.visualize: hand-computed patch mix, overlays, and written PNG files."""

import numpy as np
import pytest
from PIL import Image

from spmix_jax import figures


def test_render_mix_two_by_two_patches_by_hand():
    # 4x4 images, 2x2 patches -> 4 patches in row-major order: TL, TR, BL, BR.
    primary = np.ones((1, 4, 4, 3), np.float32)
    secondary = np.zeros((1, 4, 4, 3), np.float32)
    secondary[..., 1] = 0.5  # green channel of the secondary is 0.5
    ratios = np.array([[0.5, 0.6, 0.7, 0.8]], np.float32)
    out = figures.render_mix(primary, secondary, ratios, patch_size=2)
    # Red/blue: r*1 + (1-r)*0 = r. Green: r*1 + (1-r)*0.5 = 0.5 + 0.5 r.
    r_map = np.array(
        [
            [0.5, 0.5, 0.6, 0.6],
            [0.5, 0.5, 0.6, 0.6],
            [0.7, 0.7, 0.8, 0.8],
            [0.7, 0.7, 0.8, 0.8],
        ]
    )
    np.testing.assert_allclose(out[0, ..., 0], r_map, atol=1e-6)
    np.testing.assert_allclose(out[0, ..., 2], r_map, atol=1e-6)
    np.testing.assert_allclose(out[0, ..., 1], 0.5 + 0.5 * r_map, atol=1e-6)


def test_render_mix_non_square_and_bad_shapes():
    rng = np.random.default_rng(0)
    a, b = rng.random((2, 2, 4, 6, 3))
    r = rng.uniform(0.5, 0.8, size=(2, 6))  # 2 x 3 patches of size 2
    out = figures.render_mix(a, b, r, 2)
    grid = r.reshape(2, 2, 3)
    for y in range(4):
        for x in range(6):
            w = grid[:, y // 2, x // 2][:, None]
            np.testing.assert_allclose(
                out[:, y, x], w * a[:, y, x] + (1 - w) * b[:, y, x], atol=1e-6
            )
    with pytest.raises(ValueError, match="multiple of patch_size"):
        figures.render_mix(a, b, r, 4)
    with pytest.raises(ValueError, match="ratios"):
        figures.render_mix(a, b, r[:, :5], 2)


def test_saliency_overlay_values():
    image = np.full((2, 3, 3), 0.2, np.float32)
    sal = np.array([[0.0, 1.0, 2.0], [0.0, 0.0, 2.0]])
    out = figures.saliency_overlay(image, sal, alpha=1.0)
    # alpha = 1: pure colour map; min -> the map's first colour, max -> its last.
    import matplotlib

    jet = matplotlib.colormaps["jet"]
    np.testing.assert_allclose(out[0, 0], jet(0.0)[:3], atol=1e-6)
    np.testing.assert_allclose(out[0, 2], jet(1.0)[:3], atol=1e-6)
    np.testing.assert_allclose(out[0, 1], jet(0.5)[:3], atol=1e-6)
    out0 = figures.saliency_overlay(image, sal, alpha=0.0)
    np.testing.assert_allclose(out0, image, atol=1e-6)
    half = figures.saliency_overlay(image, np.zeros((2, 3)), alpha=0.5)  # constant map
    np.testing.assert_allclose(half, 0.5 * image + 0.5 * np.array(jet(0.0)[:3]), atol=1e-6)
    with pytest.raises(ValueError, match="saliency"):
        figures.saliency_overlay(image, sal[:, :2])


def _read_png(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return np.asarray(im.convert("RGB"))


def test_confusion_matrix_figure_writes_png(tmp_path):
    cm = [[5, 1, 0], [2, 7, 1], [0, 0, 4]]
    path = figures.confusion_matrix_figure(
        cm, ["MEL", "NV", "BCC"], tmp_path / "figs" / "cm.png", title="eval"
    )
    pixels = _read_png(path)
    assert 150 < pixels.shape[0] < 1000 and 150 < pixels.shape[1] < 1200
    assert pixels.std() > 10  # not a blank canvas
    path2 = figures.confusion_matrix_figure(
        np.array(cm), ["MEL", "NV", "BCC"], tmp_path / "cm_counts.png", normalize=False
    )
    assert _read_png(path2).shape == pixels.shape
    with pytest.raises(ValueError, match="shape"):
        figures.confusion_matrix_figure(cm, ["MEL", "NV"], tmp_path / "bad.png")


def test_pair_grid_figure_writes_png(tmp_path):
    rng = np.random.default_rng(1)
    n, size, patch = 3, 32, 8
    primary = rng.random((n, size, size, 3)).astype(np.float32)
    secondary = rng.random((n, size, size, 3)).astype(np.float32)
    sal_p = rng.random((n, size, size)).astype(np.float32)
    sal_s = rng.random((n, size, size)).astype(np.float32)
    ratios = rng.uniform(0.5, 0.8, size=(n, (size // patch) ** 2)).astype(np.float32)
    mixed = figures.render_mix(primary, secondary, ratios, patch)
    path = figures.pair_grid_figure(
        tmp_path / "pairs.png",
        primary,
        secondary,
        sal_p,
        sal_s,
        ratios,
        mixed,
        primary_labels=[5, 6, 3],
        secondary_labels=np.array([1, 1, 0]),
        class_names=("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"),
        patch_size=patch,
    )
    pixels = _read_png(path)
    # Six columns of ~2 inches at 100 dpi; three rows.
    assert pixels.shape[1] > pixels.shape[0] > 300
    assert pixels.std() > 10
    # Without a precomputed rendering the figure renders the mix itself.
    path2 = figures.pair_grid_figure(
        tmp_path / "pairs2.png",
        primary[:1],
        secondary[:1],
        sal_p[:1],
        sal_s[:1],
        ratios[:1],
        patch_size=patch,
    )
    assert _read_png(path2).shape[0] < pixels.shape[0]
    with pytest.raises(ValueError, match="mixed_rendering"):
        figures.pair_grid_figure(
            tmp_path / "bad.png",
            primary,
            secondary,
            sal_p,
            sal_s,
            ratios,
            mixed[:, :16],
            patch_size=patch,
        )
