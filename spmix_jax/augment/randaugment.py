"""timm's RandAugment (rand-m10-n2-mstd0.5 style) split into a geometric and a colour part.

The geometric ops become canvas -> canvas affine maps that the query view composes with the crop
and resamples once; the colour ops run afterwards as one fused pass per drawn op. The op table and
its magnitudes are those of docs/method.md section 3.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from spmix_jax.augment import colour, geometry

# RandAugment op table, indexed by the op ids that `randaugment_from_uniforms` draws.
RANDAUGMENT_OPS = (
    "Rotate",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
    "PosterizeTpu",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "Equalize",
    "Invert",
)
NUM_GEOMETRIC_OPS = 5  # ids 0-4 are geometric
RANDAUGMENT_FILL = (201, 145, 151)  # fill colour of the geometric ops, RGB 0-255
RANDAUGMENT_PROB = 0.5  # each drawn op is applied with this probability
MAX_LEVEL = 10.0

_NAME = {n: i for i, n in enumerate(RANDAUGMENT_OPS)}
_LUT_OPS = [_NAME[n] for n in ("PosterizeTpu", "Solarize", "SolarizeAdd", "Equalize", "Invert")]
_BLEND_OPS = [_NAME[n] for n in ("Color", "Contrast", "Brightness", "Sharpness")]


class RandAugmentDraw(NamedTuple):
    """One image's RandAugment choices: n ops in the order they apply."""

    op: jax.Array  # (n,) int32 index into RANDAUGMENT_OPS
    apply: jax.Array  # (n,) bool, each op applied with probability RANDAUGMENT_PROB
    level: jax.Array  # (n,) float32 magnitude in [0, MAX_LEVEL]
    sign: jax.Array  # (n,) float32 +-1 for the geometric ops


def randaugment_from_uniforms(
    uniforms: jax.Array, magnitude: float, magnitude_std: float
) -> RandAugmentDraw:
    """RandAugment choices from `uniforms` (n, 4) in [0, 1): op, apply, level, sign per row.

    Ops uniformly WITH replacement from the 14, each applied with probability 0.5, level
    m ~ N(magnitude, magnitude_std) clipped to [0, 10] (drawn by the inverse normal CDF), sign +-1.
    Taking uniforms lets a view draw all its randomness in one block.
    """
    u = jnp.asarray(uniforms, jnp.float32)
    num_ops = len(RANDAUGMENT_OPS)
    op = jnp.minimum(jnp.floor(u[:, 0] * num_ops).astype(jnp.int32), num_ops - 1)
    apply = u[:, 1] < RANDAUGMENT_PROB
    normal = jax.scipy.special.ndtri(jnp.clip(u[:, 2], 1e-7, 1.0 - 1e-7))
    level = jnp.clip(magnitude + magnitude_std * normal, 0.0, MAX_LEVEL)
    sign = jnp.where(u[:, 3] < 0.5, -1.0, 1.0).astype(jnp.float32)
    return RandAugmentDraw(op=op, apply=apply, level=level, sign=sign)


def randaugment_matrix(op, level, sign, size: int) -> jax.Array:
    """The canvas map of geometric op `op` at `level` (identity for the colour ops).

    Rotate (level/10)*30 degrees, shear (level/10)*0.3, translate (level/10)*0.45 * size, each
    times `sign`.
    """
    frac = jnp.asarray(level, jnp.float32) / MAX_LEVEL * sign
    mats = jnp.stack(
        [
            geometry.rotate_matrix(frac * 30.0, size, size),
            geometry.shear_x_matrix(frac * 0.3),
            geometry.shear_y_matrix(frac * 0.3),
            geometry.translate_x_matrix(frac * 0.45 * size),
            geometry.translate_y_matrix(frac * 0.45 * size),
            jnp.eye(3, dtype=jnp.float32),
        ]
    )
    return mats[jnp.clip(jnp.asarray(op, jnp.int32), 0, NUM_GEOMETRIC_OPS)]


def _one_of(op: jax.Array, ops: list[int]) -> jax.Array:
    """Whether `op` is one of `ops`, as scalar comparisons (`jnp.isin` is a reduction kernel)."""
    return functools.reduce(jnp.logical_or, [op == o for o in ops])


def randaugment_colour(
    img: jax.Array,
    op,
    level,
    mask: jax.Array | None = None,
    reference: jax.Array | None = None,
) -> jax.Array:
    """Applies colour op `op` at `level` (docs/method.md section 3); geometric ops are identity.

    PosterizeTpu keeps int((level/10)*4) bits, Solarize inverts levels >= int((level/10)*256),
    SolarizeAdd adds int((level/10)*110) below 128, the enhance ops use factor (level/10)*1.8+0.1.
    Contrast's mean and Equalize's histogram are taken from `reference` (default `img`),
    restricted to `mask` if given. Under `vmap` every op would be evaluated anyway, so instead of
    a switch the ops are fused: the level ops (posterize, solarize, solarize_add, equalize,
    invert) are one 256-entry table, the enhance ops (color, contrast, brightness, sharpness) one
    blend with a selected degenerate image.
    """
    op = jnp.asarray(op, jnp.int32)
    level = jnp.asarray(level, jnp.float32)
    ref = img if reference is None else reference
    i = np.arange(256, dtype=np.int32)
    bits = jnp.floor(level / MAX_LEVEL * 4).astype(jnp.int32)
    threshold = jnp.floor(level / MAX_LEVEL * 256).astype(jnp.int32)
    add = jnp.floor(level / MAX_LEVEL * 110).astype(jnp.int32)
    luts = jnp.stack(
        [
            jnp.broadcast_to(i & colour.posterize_mask(bits), (3, 256)),
            jnp.broadcast_to(jnp.where(i >= threshold, 255 - i, i), (3, 256)),
            jnp.broadcast_to(jnp.where(i < 128, jnp.minimum(i + add, 255), i), (3, 256)),
            colour.equalize_lut(ref, mask),
            np.broadcast_to(255 - i, (3, 256)),
        ]
    )
    lut_index = sum(jnp.where(op == o, k, 0) for k, o in enumerate(_LUT_OPS))
    is_lut = _one_of(op, _LUT_OPS)

    degenerate = jnp.where(
        op == _NAME["Color"],
        colour.luminance(img)[..., None],
        jnp.where(
            op == _NAME["Contrast"],
            colour.mean_luminance(ref, mask),
            jnp.where(op == _NAME["Brightness"], 0.0, colour.smooth(img)),
        ),
    )
    is_blend = _one_of(op, _BLEND_OPS)
    blended = colour.blend(degenerate, img, level / MAX_LEVEL * 1.8 + 0.1)
    levelled = colour.apply_lut(img, luts[lut_index])
    return jnp.where(is_lut, levelled, jnp.where(is_blend, blended, img))
