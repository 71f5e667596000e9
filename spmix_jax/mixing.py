"""SPMix per-patch ratios and token mixing (docs/method.md sections 5-6), pixel baselines (11).

All functions are pure, batched and jittable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

RATIO_MODES = ("patch", "global", "random")
_EPS = 1e-6
# The released code standardises a saliency map per pixel as (S - mean) / std with these
# constants before adding its noise; `mix.noise` is measured in these units.
NOISE_MEAN = 0.144
NOISE_STD = 0.137


def patch_means(saliency: jax.Array, patch_size: int) -> jax.Array:
    """(B, H, W) -> (B, P): mean over each patch, patches in row-major order (as ViT tokens)."""
    b, h, w = saliency.shape
    if h % patch_size or w % patch_size:
        raise ValueError(
            f"Saliency map {h}x{w} is not divisible into {patch_size}x{patch_size} patches."
        )
    gh, gw = h // patch_size, w // patch_size
    s = saliency.astype(jnp.float32).reshape(b, gh, patch_size, gw, patch_size)
    return s.mean(axis=(2, 4)).reshape(b, gh * gw)


def minmax_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """Per-row min-max to [0, 1]; a constant row maps to zeros (never NaN)."""
    lo = x.min(axis=axis, keepdims=True)
    hi = x.max(axis=axis, keepdims=True)
    span = hi - lo
    safe = jnp.where(span > _EPS, span, 1.0)
    return jnp.where(span > _EPS, (x - lo) / safe, jnp.zeros_like(x))


def patch_scores(
    saliency: jax.Array,
    *,
    patch_size: int,
    r_min: float = 0.5,
    noise: float = 0.0,
    rng: jax.Array | None = None,
) -> jax.Array:
    """Steps 1-3 of docs/method.md section 5: noise, patch means, min-max, map to [r_min, 1].

    With `noise > 0` the map is first standardised per pixel, (S - 0.144) / 0.137, and every
    pixel gets its own U[-noise, noise) draw, as in the released code: pooling averages the noise
    down, so it only breaks ties between equally salient patches. The standardisation does not
    change the result (min-max is affine-invariant); it fixes the scale `noise` is measured in.
    """
    s = saliency.astype(jnp.float32)
    if noise > 0:
        if rng is None:
            raise ValueError("patch_scores: noise > 0 needs an rng key.")
        s = (s - NOISE_MEAN) / NOISE_STD
        s = s + jax.random.uniform(rng, s.shape, minval=-noise, maxval=noise)
    return r_min + (1.0 - r_min) * minmax_normalize(patch_means(s, patch_size))


def patch_ratios(
    sal_primary: jax.Array,
    sal_secondary: jax.Array,
    *,
    patch_size: int,
    alpha: float = 0.8,
    r_min: float = 0.5,
    noise: float = 0.0,
    rng: jax.Array | None = None,
    mode: str = "patch",
) -> jax.Array:
    """Per-patch share of the primary image, (B, P), every value in [r_min, alpha].

    r_p = min(alpha, max(s_p(primary), s_p(secondary))): wherever either image shows lesion the
    primary keeps the larger share, so the secondary's lesion features are suppressed.
    """
    if mode not in RATIO_MODES:
        raise ValueError(f"Unknown mix.ratio {mode!r}; expected one of {RATIO_MODES}.")
    if not 0.0 <= r_min <= alpha <= 1.0:
        raise ValueError(f"Need 0 <= r_min <= alpha <= 1, got r_min={r_min}, alpha={alpha}.")
    if sal_primary.shape != sal_secondary.shape:
        raise ValueError(f"Saliency shapes differ: {sal_primary.shape} vs {sal_secondary.shape}.")
    if mode == "random":
        if rng is None:
            raise ValueError("mix.ratio='random' needs an rng key.")
        num = patch_means(sal_primary, patch_size).shape
        return jax.random.uniform(rng, num, minval=r_min, maxval=alpha)
    rng_p: jax.Array | None = None
    rng_s: jax.Array | None = None
    if rng is not None:
        rng_p, rng_s = jax.random.split(rng)
    s_p = patch_scores(sal_primary, patch_size=patch_size, r_min=r_min, noise=noise, rng=rng_p)
    s_s = patch_scores(sal_secondary, patch_size=patch_size, r_min=r_min, noise=noise, rng=rng_s)
    r = jnp.minimum(alpha, jnp.maximum(s_p, s_s))
    if mode == "global":
        r = jnp.broadcast_to(r.mean(axis=-1, keepdims=True), r.shape)
    return r


def mix_tokens(
    tokens_primary: jax.Array, tokens_secondary: jax.Array, ratios: jax.Array
) -> jax.Array:
    """T = r * E(x_primary) + (1 - r) * E(x_secondary) per patch; (B, P, D), tokens' dtype."""
    if tokens_primary.shape != tokens_secondary.shape:
        raise ValueError(
            f"Token shapes differ: {tokens_primary.shape} vs {tokens_secondary.shape}."
        )
    if ratios.shape != tokens_primary.shape[:2]:
        raise ValueError(
            f"ratios shape {ratios.shape} must be (B, P) = {tokens_primary.shape[:2]}."
        )
    r = ratios[..., None].astype(tokens_primary.dtype)
    return r * tokens_primary + (1 - r) * tokens_secondary


# --- pixel-level baselines (docs/method.md section 11) ---------------------------------------
# Each returns (mixed images, lam) where lam is the share of the *first* image's label, so the
# soft target is lam * onehot(y1) + (1 - lam) * onehot(y2); balanced_mixup alone returns its
# paper's lam, the share of the second (class-balanced) image. The mixers below turn every lam
# into the primary's label share.


def soft_targets(labels1: jax.Array, labels2: jax.Array, lam: jax.Array, num_classes: int):
    """lam * onehot(y1) + (1 - lam) * onehot(y2), float32 (B, C)."""
    lam = lam.astype(jnp.float32)[:, None]
    return lam * jax.nn.one_hot(labels1, num_classes) + (1 - lam) * jax.nn.one_hot(
        labels2, num_classes
    )


def mixup(rng: jax.Array, x1: jax.Array, x2: jax.Array, a: float = 1.0):
    """Mixup: lam ~ Beta(a, a) per example; x = lam x1 + (1 - lam) x2."""
    lam = jax.random.beta(rng, a, a, (x1.shape[0],))
    lb = lam[:, None, None, None].astype(x1.dtype)
    return lb * x1 + (1 - lb) * x2, lam


def balanced_mixup(rng: jax.Array, x_instance: jax.Array, x_balanced: jax.Array, a: float = 0.2):
    """Balanced-MixUp (Galdran et al. 2021): x = (1 - lam) x_instance + lam x_balanced.

    lam ~ Beta(a, 1) per example is the *balanced* image's weight (returned as such): for the
    paper's a = 0.1-0.2 it is small, so the instance image dominates and the class-balanced one
    only regularises.
    """
    lam = jax.random.beta(rng, a, 1.0, (x_instance.shape[0],))
    lb = lam[:, None, None, None].astype(x_instance.dtype)
    return (1 - lb) * x_instance + lb * x_balanced, lam


def _box_mask(cy, cx, cut_h, cut_w, h, w):
    """Boolean (B, H, W) mask of boxes centred at (cy, cx), clipped to the image."""
    y0 = jnp.clip(cy - cut_h // 2, 0, h)
    y1 = jnp.clip(cy + cut_h // 2, 0, h)
    x0 = jnp.clip(cx - cut_w // 2, 0, w)
    x1 = jnp.clip(cx + cut_w // 2, 0, w)
    yy = jnp.arange(h)[None, :, None]
    xx = jnp.arange(w)[None, None, :]
    return (
        (yy >= y0[:, None, None])
        & (yy < y1[:, None, None])
        & (xx >= x0[:, None, None])
        & (xx < x1[:, None, None])
    )


def _cut_size(lam, h, w):
    cut = jnp.sqrt(1.0 - lam)
    return (cut * h).astype(jnp.int32), (cut * w).astype(jnp.int32)


def cutmix(rng: jax.Array, x1: jax.Array, x2: jax.Array, a: float = 1.0):
    """CutMix: a box of area (1 - lam) from x2 pasted into x1; lam corrected to the true area."""
    b, h, w = x1.shape[:3]
    k_lam, k_y, k_x = jax.random.split(rng, 3)
    lam = jax.random.beta(k_lam, a, a, (b,))
    cut_h, cut_w = _cut_size(lam, h, w)
    cy = jax.random.randint(k_y, (b,), 0, h)
    cx = jax.random.randint(k_x, (b,), 0, w)
    mask = _box_mask(cy, cx, cut_h, cut_w, h, w)
    mixed = jnp.where(mask[..., None], x2, x1)
    return mixed, 1.0 - mask.mean(axis=(1, 2))


def saliencymix(rng: jax.Array, x1: jax.Array, x2: jax.Array, sal2: jax.Array, a: float = 1.0):
    """SaliencyMix: the box around the peak of x2's saliency is pasted into x1 at the same place."""
    b, h, w = x1.shape[:3]
    lam = jax.random.beta(rng, a, a, (b,))
    cut_h, cut_w = _cut_size(lam, h, w)
    peak = jnp.argmax(sal2.reshape(b, -1), axis=-1)
    cy, cx = peak // w, peak % w
    mask = _box_mask(cy, cx, cut_h, cut_w, h, w)
    mixed = jnp.where(mask[..., None], x2, x1)
    return mixed, 1.0 - mask.mean(axis=(1, 2))


# --- one mixer per `mix.method`, chosen once by the train step ---------------------------------


class MixedView(NamedTuple):
    """What the encoder sees for one view of a batch of pairs, and the label share it carries.

    SPMix embeds `images` (the primary view) and `partner` (the secondary view) and mixes their
    tokens with `ratios`; pixel baselines and no mixing give the finished images and no partner.
    """

    images: jax.Array  # (B, H, W, 3) normalised
    partner: jax.Array | None  # (B, H, W, 3) SPMix's secondary view, or None
    ratios: jax.Array | None  # (B, P) SPMix's per-patch share of the primary, or None
    label_share: jax.Array | None  # (B,) share of the primary's label for soft targets, or None
    share_mean: jax.Array  # () mean share of the primary (logged as `mix_ratio_mean`)


Mixer = Callable[..., MixedView]


def _spmix(rng, primary, secondary, sal_primary, sal_secondary, *, cfg: Any, patch_size: int):
    r = patch_ratios(
        sal_primary,
        sal_secondary,
        patch_size=patch_size,
        alpha=cfg.alpha,
        r_min=cfg.r_min,
        noise=cfg.noise,
        rng=rng,
        mode=cfg.ratio,
    )
    return MixedView(primary, secondary, r, None, r.mean())


def _no_mix(rng, primary, secondary, sal_primary, sal_secondary, *, cfg: Any, patch_size: int):
    del rng, secondary, sal_primary, sal_secondary, cfg, patch_size
    return MixedView(primary, None, None, None, jnp.ones((), jnp.float32))


def _pixel(mixed: jax.Array, lam: jax.Array) -> MixedView:
    return MixedView(mixed, None, None, lam, lam.mean())


def _mixup(rng, primary, secondary, sal_primary, sal_secondary, *, cfg: Any, patch_size: int):
    return _pixel(*mixup(rng, primary, secondary, cfg.beta_a))


def _cutmix(rng, primary, secondary, sal_primary, sal_secondary, *, cfg: Any, patch_size: int):
    return _pixel(*cutmix(rng, primary, secondary, cfg.beta_a))


def _saliencymix(rng, primary, secondary, sal_primary, sal_secondary, *, cfg: Any, patch_size):
    return _pixel(*saliencymix(rng, primary, secondary, sal_secondary, cfg.beta_a))


def _balanced_mixup(rng, primary, secondary, sal_primary, sal_secondary, *, cfg: Any, patch_size):
    # lam ~ Beta(a, 1) weights the class-balanced image; the label share is the primary's.
    if cfg.primary == "instance":
        mixed, lam_balanced = balanced_mixup(rng, primary, secondary, cfg.beta_a)
        return _pixel(mixed, 1.0 - lam_balanced)
    return _pixel(*balanced_mixup(rng, secondary, primary, cfg.beta_a))


# name -> (mixer, whether it reads saliency maps). The config checks and the README use these names.
MIXERS: dict[str, tuple[Mixer, bool]] = {
    "spmix": (_spmix, True),
    "none": (_no_mix, False),
    "mixup": (_mixup, False),
    "cutmix": (_cutmix, False),
    "balanced_mixup": (_balanced_mixup, False),
    "saliencymix": (_saliencymix, True),
}
LABEL_MIXING = tuple(name for name in MIXERS if name not in ("spmix", "none"))


def get(method: str) -> tuple[Mixer, bool]:
    """(mixer, uses_saliency) for `mix.method`."""
    if method not in MIXERS:
        raise ValueError(f"mix.method={method!r} is not one of {tuple(MIXERS)}.")
    return MIXERS[method]
