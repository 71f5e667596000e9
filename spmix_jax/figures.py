"""Figures: confusion matrices, and grids of real SPMix training pairs as in the paper's figures.

Figures are drawn on `matplotlib.figure.Figure` with an explicit Agg canvas, never through
pyplot, so no display is needed and the global matplotlib backend is left alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np
from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from input_pipeline import pipeline, sources
from spmix_jax import augment, mixing, saliency
from spmix_jax.models import decode_variant


def _save(fig: Figure, path: str | os.PathLike, dpi: int) -> epath.Path:
    out = epath.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    with out.open("wb") as f:
        fig.savefig(f, format="png", dpi=dpi)
    return out


def render_mix(
    primary: np.ndarray, secondary: np.ndarray, ratios: np.ndarray, patch_size: int
) -> np.ndarray:
    """Pixel-level picture of the token mix: every patch blended with its own ratio.

    out[n, y, x] = r[n, p] * primary[n, y, x] + (1 - r[n, p]) * secondary[n, y, x], where p is
    the row-major index of the patch holding pixel (y, x) (the token order of the patch
    embedding). Images (N, H, W, 3), ratios (N, P) with P = (H / patch) * (W / patch).
    """
    primary = np.asarray(primary, dtype=np.float32)
    secondary = np.asarray(secondary, dtype=np.float32)
    ratios = np.asarray(ratios, dtype=np.float32)
    if primary.ndim != 4 or primary.shape != secondary.shape:
        raise ValueError(
            f"primary and secondary must be equal (N, H, W, C) arrays, got {primary.shape} and "
            f"{secondary.shape}"
        )
    n, h, w, _ = primary.shape
    if patch_size <= 0 or h % patch_size or w % patch_size:
        raise ValueError(f"image size {h}x{w} is not a multiple of patch_size {patch_size}")
    gh, gw = h // patch_size, w // patch_size
    if ratios.shape != (n, gh * gw):
        raise ValueError(f"ratios must have shape ({n}, {gh * gw}), got {ratios.shape}")
    r = ratios.reshape(n, gh, gw)
    r = np.repeat(np.repeat(r, patch_size, axis=1), patch_size, axis=2)[..., None]
    return r * primary + (1.0 - r) * secondary


def saliency_overlay(
    image: np.ndarray, saliency: np.ndarray, alpha: float = 0.5, cmap: str = "jet"
) -> np.ndarray:
    """Blends a colour-mapped saliency map over an RGB image; returns float RGB in [0, 1].

    image (..., H, W, 3) in [0, 1] (clipped), saliency (..., H, W); each map is min-max scaled
    per image (a constant map shows as the colour map's lowest colour).
    """
    image = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    saliency = np.asarray(saliency, dtype=np.float32)
    if image.shape[-1] != 3 or image.shape[:-1] != saliency.shape:
        raise ValueError(
            f"image must be (..., H, W, 3) matching saliency (..., H, W); got {image.shape} and "
            f"{saliency.shape}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    lo = saliency.min(axis=(-2, -1), keepdims=True)
    hi = saliency.max(axis=(-2, -1), keepdims=True)
    span = hi - lo
    scaled = np.where(span > 0, (saliency - lo) / np.where(span > 0, span, 1.0), 0.0)
    heat = matplotlib.colormaps[cmap](scaled)[..., :3].astype(np.float32)
    return (1.0 - alpha) * image + alpha * heat


def confusion_matrix_figure(
    cm: np.ndarray | Sequence[Sequence[int]],
    class_names: Sequence[str],
    path: str | os.PathLike,
    *,
    normalize: bool = True,
    title: str = "",
    dpi: int = 100,
) -> epath.Path:
    """Writes a confusion-matrix PNG (rows = true class); returns the path.

    Each cell shows its count and, with `normalize`, the row-normalised fraction (the recall
    share), which also sets the colour; empty rows are shown as zeros.
    """
    cm = np.asarray(cm)
    c = len(class_names)
    if cm.shape != (c, c):
        raise ValueError(f"cm must have shape ({c}, {c}) for {c} class names, got {cm.shape}")
    if np.any(cm < 0):
        raise ValueError("cm must hold non-negative counts")
    rows = cm.sum(axis=1, keepdims=True).astype(np.float64)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, np.float64), where=rows > 0)
    shown = frac if normalize else cm.astype(np.float64)

    side = 1.2 + 0.75 * c
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.add_subplot(1, 1, 1)
    vmax = 1.0 if normalize else max(float(np.max(shown)), 1.0)
    im = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=vmax)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(c), labels=[str(x) for x in class_names], rotation=45, ha="right")
    ax.set_yticks(range(c), labels=[str(x) for x in class_names])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    for i in range(c):
        for j in range(c):
            text = f"{int(cm[i, j])}\n{frac[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
            colour = "white" if shown[i, j] > 0.5 * vmax else "black"
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=8)
    fig.tight_layout()
    return _save(fig, path, dpi)


def _label_name(labels: Sequence[int] | np.ndarray | None, i: int, names: Sequence[str] | None):
    if labels is None:
        return ""
    label = int(np.asarray(labels)[i])
    if names is not None and 0 <= label < len(names):
        return str(names[label])
    return str(label)


def pair_grid_figure(
    path: str | os.PathLike,
    primary: np.ndarray,
    secondary: np.ndarray,
    sal_primary: np.ndarray,
    sal_secondary: np.ndarray,
    ratios: np.ndarray,
    mixed_rendering: np.ndarray | None = None,
    *,
    primary_labels: Sequence[int] | np.ndarray | None = None,
    secondary_labels: Sequence[int] | np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    patch_size: int,
    ratio_range: tuple[float, float] = (0.5, 0.8),
    dpi: int = 100,
) -> epath.Path:
    """Writes a PNG with one row per pair, as in the paper's figures; returns the path.

    Columns: primary image, secondary image, their saliency maps overlaid on the images, the
    per-patch ratio map (ratios (N, P) reshaped to the patch grid, colour range `ratio_range`,
    default [r_min, alpha] = [0.5, 0.8]) and the pixel-level rendering of the mix
    (`render_mix` when `mixed_rendering` is None). Images (N, H, W, 3) in [0, 1].
    """
    primary = np.asarray(primary, dtype=np.float32)
    secondary = np.asarray(secondary, dtype=np.float32)
    ratios = np.asarray(ratios, dtype=np.float32)
    if mixed_rendering is None:
        mixed_rendering = render_mix(primary, secondary, ratios, patch_size)
    else:
        render_mix(primary, secondary, ratios, patch_size)  # validates the shapes
    mixed_rendering = np.asarray(mixed_rendering, dtype=np.float32)
    if mixed_rendering.shape != primary.shape:
        raise ValueError(
            f"mixed_rendering must have shape {primary.shape}, got {mixed_rendering.shape}"
        )
    n, h, w, _ = primary.shape
    if n == 0:
        raise ValueError("pair_grid_figure needs at least one pair")
    overlay_p = saliency_overlay(primary, sal_primary)
    overlay_s = saliency_overlay(secondary, sal_secondary)
    grid = ratios.reshape(n, h // patch_size, w // patch_size)

    titles = [
        "primary",
        "secondary",
        "saliency (primary)",
        "saliency (secondary)",
        "patch ratio",
        "mix (pixels)",
    ]
    cell = 2.0
    fig = Figure(figsize=(cell * len(titles) + 0.6, cell * n * h / w + 0.4))
    axes = fig.subplots(n, len(titles), squeeze=False)
    for i in range(n):
        p_name = _label_name(primary_labels, i, class_names)
        s_name = _label_name(secondary_labels, i, class_names)
        panels = [primary[i], secondary[i], overlay_p[i], overlay_s[i], None, mixed_rendering[i]]
        for j, panel in enumerate(panels):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if panel is None:
                im = ax.imshow(grid[i], cmap="viridis", vmin=ratio_range[0], vmax=ratio_range[1])
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            else:
                ax.imshow(np.clip(panel, 0.0, 1.0))
            if i == 0:
                ax.set_title(titles[j], fontsize=9)
        if p_name:
            axes[i, 0].set_xlabel(p_name, fontsize=8)
        if s_name:
            axes[i, 1].set_xlabel(s_name, fontsize=8)
        if p_name:
            axes[i, 5].set_xlabel(f"label: {p_name}", fontsize=8)
    fig.tight_layout()
    return _save(fig, path, dpi)


def make_pair_figure(
    config: ml_collections.ConfigDict,
    workdir: str,
    variables=None,
    model=None,
    path: str | os.PathLike | None = None,
) -> epath.Path:
    """Draws `visualize.num_pairs` pairs from the training pipeline and writes `pairs.png`
    (or `path`: training logs one per periodic evaluation).

    Uses the evaluation view of each image (no random augmentation) so the figure is readable.
    Gradient saliency needs the trained `variables` and `model`; static methods do not.
    """
    split = sources.get_split(config.data, config.data.train_split)
    n = config.visualize.num_pairs
    it = pipeline.make_train_iterator(
        split,
        global_batch_size=max(n, 1),
        image_size=config.data.image_size,
        seed=config.seed,
        balanced_q=config.input.balanced_q,
        primary=config.mix.primary,
        process_index=0,
        process_count=1,
    )
    batch = next(it)
    size = config.model.image_size
    patch = decode_variant(config.model.variant).patch_size
    settings = augment.ViewSettings.from_config(config.augment)
    mean = np.asarray(settings.mean, np.float32)
    std = np.asarray(settings.std, np.float32)
    score_fn = None
    if config.saliency.method == "gradient":
        if variables is None or model is None:
            raise ValueError("Gradient saliency figures need trained parameters.")
        score_fn = lambda x: model.apply(  # noqa: E731
            variables, augment.normalize(x, settings), method=model.logits
        )
    views, sals = {}, {}
    for who in ("primary", "secondary"):
        normed = augment.eval_view(
            jnp.asarray(batch[f"{who}_image"]), out_size=size, settings=settings
        )
        view01 = jnp.clip(normed * std + mean, 0.0, 1.0)
        sals[who] = saliency.compute(
            config.saliency.method,
            view01,
            score_fn=score_fn,
            labels=jnp.asarray(batch[f"{who}_label"]),
            score=config.saliency.score,
        )
        views[who] = view01
    rng = jax.random.PRNGKey(config.seed)
    ratios_device = mixing.patch_ratios(
        sals["primary"],
        sals["secondary"],
        patch_size=patch,
        alpha=config.mix.alpha,
        r_min=config.mix.r_min,
        noise=config.mix.noise,
        rng=rng,
        mode=config.mix.ratio,
    )
    prim, sec = np.asarray(views["primary"]), np.asarray(views["secondary"])
    ratios = np.asarray(ratios_device)
    out = epath.Path(workdir) / "pairs.png" if path is None else epath.Path(path)
    pair_grid_figure(
        out,
        prim,
        sec,
        np.asarray(sals["primary"]),
        np.asarray(sals["secondary"]),
        ratios,
        render_mix(prim, sec, ratios, patch),
        primary_labels=batch["primary_label"],
        secondary_labels=batch["secondary_label"],
        class_names=list(split.class_names),
        patch_size=patch,
        ratio_range=(config.mix.r_min, config.mix.alpha),
    )
    return out
