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


@pytest.fixture
def drawn(monkeypatch):
    """Captures every figure the module saves, so tests can read what each panel shows."""
    figs = []
    save = figures._save

    def capture(fig, path, dpi):
        figs.append(fig)
        return save(fig, path, dpi)

    monkeypatch.setattr(figures, "_save", capture)
    return figs


def _panels(fig):
    """The figure's plotting axes in row-major order (colour bars left out)."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def test_confusion_matrix_figure_shows_the_matrix(tmp_path, drawn):
    cm = [[5, 1, 0], [2, 7, 1], [0, 0, 4]]
    path = figures.confusion_matrix_figure(
        cm, ["MEL", "NV", "BCC"], tmp_path / "figs" / "cm.png", title="eval"
    )
    pixels = _read_png(path)
    (ax,) = _panels(drawn[-1])
    # The colours are the recall shares (row-normalised), on a fixed 0..1 scale.
    frac = np.asarray(cm, np.float64) / np.sum(cm, axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), frac)
    assert ax.images[0].get_clim() == (0.0, 1.0)
    # Every cell is labelled with its count and share, rows = true class.
    texts = {
        (round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts
    }
    for i in range(3):
        for j in range(3):
            assert texts[(i, j)] == f"{cm[i][j]}\n{frac[i, j]:.2f}"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["MEL", "NV", "BCC"]
    assert ax.get_ylabel() == "true" and ax.get_xlabel() == "predicted" and ax.get_title() == "eval"
    # Counts mode: colours are the counts themselves, cells show counts only.
    path2 = figures.confusion_matrix_figure(
        np.array(cm), ["MEL", "NV", "BCC"], tmp_path / "cm_counts.png", normalize=False
    )
    (ax2,) = _panels(drawn[-1])
    np.testing.assert_array_equal(np.asarray(ax2.images[0].get_array()), cm)
    assert ax2.images[0].get_clim() == (0.0, 7.0)
    assert sorted(t.get_text() for t in ax2.texts) == sorted(str(v) for row in cm for v in row)
    assert _read_png(path2).shape == pixels.shape
    with pytest.raises(ValueError, match="shape"):
        figures.confusion_matrix_figure(cm, ["MEL", "NV"], tmp_path / "bad.png")


def test_pair_grid_figure_shows_each_pair(tmp_path, drawn):
    rng = np.random.default_rng(1)
    n, size, patch = 3, 32, 8
    primary = rng.random((n, size, size, 3)).astype(np.float32)
    secondary = rng.random((n, size, size, 3)).astype(np.float32)
    sal_p = rng.random((n, size, size)).astype(np.float32)
    sal_s = rng.random((n, size, size)).astype(np.float32)
    ratios = rng.uniform(0.5, 0.8, size=(n, (size // patch) ** 2)).astype(np.float32)
    mixed = figures.render_mix(primary, secondary, ratios, patch)
    names = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
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
        class_names=names,
        patch_size=patch,
    )
    pixels = _read_png(path)
    assert pixels.shape[1] > pixels.shape[0] > 300  # six columns, three rows
    axes = np.array(_panels(drawn[-1])).reshape(n, 6)
    assert [ax.get_title() for ax in axes[0]] == [
        "primary",
        "secondary",
        "saliency (primary)",
        "saliency (secondary)",
        "patch ratio",
        "mix (pixels)",
    ]
    overlay_p = figures.saliency_overlay(primary, sal_p)
    overlay_s = figures.saliency_overlay(secondary, sal_s)
    for i in range(n):
        shown = [np.asarray(ax.images[0].get_array()) for ax in axes[i]]
        np.testing.assert_allclose(shown[0], primary[i])
        np.testing.assert_allclose(shown[1], secondary[i])
        np.testing.assert_allclose(shown[2], overlay_p[i], atol=1e-6)
        np.testing.assert_allclose(shown[3], overlay_s[i], atol=1e-6)
        # The ratio panel is the pair's ratios on the patch grid (row-major token order), drawn
        # on the [r_min, alpha] colour scale.
        np.testing.assert_array_equal(shown[4], ratios[i].reshape(4, 4))
        assert axes[i, 4].images[0].get_clim() == (0.5, 0.8)
        np.testing.assert_allclose(shown[5], mixed[i])
        assert axes[i, 0].get_xlabel() == names[[5, 6, 3][i]]
        assert axes[i, 1].get_xlabel() == names[[1, 1, 0][i]]
        assert axes[i, 5].get_xlabel() == f"label: {names[[5, 6, 3][i]]}"
    # Without a precomputed rendering the figure renders the mix itself.
    figures.pair_grid_figure(
        tmp_path / "pairs2.png",
        primary[:1],
        secondary[:1],
        sal_p[:1],
        sal_s[:1],
        ratios[:1],
        patch_size=patch,
    )
    (row,) = np.array(_panels(drawn[-1])).reshape(1, 6)
    np.testing.assert_allclose(np.asarray(row[5].images[0].get_array()), mixed[0], atol=1e-6)
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
