"""Colour ops on float (H, W, 3) images in [0, 1] with PIL's uint8 semantics.

Thresholds and levels are in 0-255 units, as in PIL, but intermediate values stay continuous: PIL
rounds or truncates to uint8 after every op, these ops do not (differences are below one grey
level). The helpers that the fused RandAugment colour pass shares are public here.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

_GRAY = (0.299, 0.587, 0.114)  # PIL "L" conversion weights (ITU-R 601-2 luma)


def _levels(img: jax.Array) -> jax.Array:
    """The uint8 level (0-255, int32) each float value stands for."""
    return jnp.clip(jnp.round(img * 255.0), 0, 255).astype(jnp.int32)


def luminance(img: jax.Array) -> jax.Array:
    """PIL's "L" value (H, W) of an RGB image, unrounded."""
    return img[..., 0] * _GRAY[0] + img[..., 1] * _GRAY[1] + img[..., 2] * _GRAY[2]


def blend(degenerate: jax.Array, img: jax.Array, factor) -> jax.Array:
    """PIL `Image.blend(degenerate, img, factor)`, clipped to [0, 1]: every enhance op is one."""
    factor = jnp.asarray(factor, jnp.float32)
    return jnp.clip(degenerate + factor * (img - degenerate), 0.0, 1.0)


def mean_luminance(img: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """PIL's contrast mean: the mean luminance rounded to an 8-bit level (over `mask` if given)."""
    gray = luminance(img)
    if mask is None:
        mean = jnp.mean(gray)
    else:
        weight = mask.astype(jnp.float32)
        mean = jnp.sum(gray * weight) / jnp.maximum(jnp.sum(weight), 1.0)
    return jnp.floor(mean * 255.0 + 0.5) / 255.0


def grayscale(img: jax.Array) -> jax.Array:
    """PIL `convert('L')` replicated to three channels (torchvision RandomGrayscale)."""
    return jnp.repeat(luminance(img)[..., None], 3, axis=-1)


def brightness(img: jax.Array, factor) -> jax.Array:
    """PIL `ImageEnhance.Brightness(img).enhance(factor)`: blend with black."""
    return blend(jnp.zeros_like(img), img, factor)


def contrast(img: jax.Array, factor, mask: jax.Array | None = None) -> jax.Array:
    """PIL `ImageEnhance.Contrast`: blend with a grey of the (rounded) mean luminance.

    `mask` (H, W) restricts the mean to those pixels (used where part of the canvas is not yet
    content of this stage); None uses every pixel, as PIL.
    """
    return blend(jnp.broadcast_to(mean_luminance(img, mask), img.shape), img, factor)


def saturation(img: jax.Array, factor) -> jax.Array:
    """PIL `ImageEnhance.Color` (torchvision adjust_saturation): blend with the luminance."""
    return blend(grayscale(img), img, factor)


def smooth(img: jax.Array) -> jax.Array:
    """PIL `ImageFilter.SMOOTH` ([[1,1,1],[1,5,1],[1,1,1]] / 13); the 1-pixel border is kept."""
    h, w = img.shape[:2]
    if h < 3 or w < 3:
        return img
    # Shifted reads of a padded copy and a select for the border, rather than slices of the
    # interior written back with `.at[].set`: the same sums, but XLA fuses them into one kernel
    # instead of one per slice (the compile cost of RandAugment under `vmap`).
    padded = jnp.pad(img, ((1, 1), (1, 1), (0, 0)))
    total = 4.0 * img
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            total = total + padded[dy : dy + h, dx : dx + w]
    inner = np.zeros((h, w, 1), bool)  # a constant: computed in the program, it is a kernel
    inner[1:-1, 1:-1] = True
    return jnp.where(inner, total / 13.0, img)


def sharpness(img: jax.Array, factor) -> jax.Array:
    """PIL `ImageEnhance.Sharpness`: blend with the SMOOTH-filtered image."""
    return blend(smooth(img), img, factor)


def posterize_mask(bits: jax.Array) -> jax.Array:
    """The 8-bit mask that keeps the top `bits` bits (0 <= bits <= 8) of a level."""
    return (255 << (8 - bits)) & 255


def posterize(img: jax.Array, bits) -> jax.Array:
    """PIL `ImageOps.posterize`: keep the top `bits` bits of every 8-bit level (0 bits: black)."""
    bits = jnp.clip(jnp.asarray(bits, jnp.int32), 0, 8)
    return (_levels(img) & posterize_mask(bits)).astype(jnp.float32) / 255.0


def solarize(img: jax.Array, threshold) -> jax.Array:
    """PIL `ImageOps.solarize`: invert levels >= threshold (0-255 units; 256: no change)."""
    return jnp.where(_levels(img) >= threshold, 1.0 - img, img)


def solarize_add(img: jax.Array, add, threshold=128) -> jax.Array:
    """timm `solarize_add`: add `add` levels to levels below `threshold`, clip at 255."""
    added = jnp.minimum(img + jnp.asarray(add, jnp.float32) / 255.0, 1.0)
    return jnp.where(_levels(img) < threshold, added, img)


def invert(img: jax.Array) -> jax.Array:
    """PIL `ImageOps.invert`."""
    return 1.0 - img


def equalize_lut(img: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """PIL's equalize lookup table, (C, 256) int32 (see `equalize`)."""
    h, w, c = img.shape
    levels = _levels(img)
    weight = jnp.ones((h, w), jnp.int32) if mask is None else mask.astype(jnp.int32)
    index = _table_index(levels)
    weights = jnp.broadcast_to(weight[..., None], levels.shape)
    hist = jnp.zeros(256 * c, jnp.int32).at[index.reshape(-1)].add(weights.reshape(-1))
    hist = hist.reshape(c, 256)
    # Pixels below each level, as a product with a strictly triangular 0/1 matrix: counts stay
    # below 2**24, exact in float32, and one matrix product compiles to one kernel where an
    # integer cumsum compiles to several. The total count comes from it too (a reduction over
    # the levels would be two kernels more).
    strictly_below = jnp.asarray(np.triu(np.ones((256, 256), np.float32), k=1))
    below = jnp.dot(
        hist.astype(jnp.float32), strictly_below, precision=jax.lax.Precision.HIGHEST
    ).astype(jnp.int32)
    total = below[:, 255] + hist[:, 255]
    last = 255 - jnp.argmax(hist[:, ::-1] > 0, axis=1)
    last_count = jnp.take_along_axis(hist, last[:, None], axis=1)[:, 0]
    # Every count is non-negative: truncating division is floor division, without the sign
    # fix-up that `//` compiles into kernels of its own.
    div = jax.lax.div
    step = div(total - last_count, 255)
    safe = jnp.maximum(step, 1)[:, None]
    lut = jnp.clip(div(div(step, 2)[:, None] + below, safe), 0, 255)
    # PIL also keeps a channel with at most one occupied level; its step is 0 as well.
    keep = step == 0
    return jnp.where(keep[:, None], np.arange(256, dtype=np.int32)[None, :], lut)


def apply_lut(img: jax.Array, lut: jax.Array) -> jax.Array:
    """Maps every 8-bit level of channel c through lut[c] (C, 256)."""
    # A plain gather from the flattened table, where `take_along_axis` adds index arithmetic and
    # clamping to the kernel.
    return lut.reshape(-1)[_table_index(_levels(img))].astype(jnp.float32) / 255.0


def _table_index(levels: jax.Array) -> jax.Array:
    """Where level l of channel c sits in a flattened (C, 256) table: l + 256 c (int32).

    The channel offsets are a numpy constant: computed in the program they are a kernel.
    """
    return levels + np.arange(0, 256 * levels.shape[-1], 256, dtype=np.int32)


def equalize(img: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """PIL `ImageOps.equalize(img, mask)`: per-channel histogram equalisation on 8-bit levels.

    lut[i] = (step // 2 + #pixels below level i) // step with step = (#pixels - #pixels in the
    top occupied level) // 255; a channel with one occupied level or step 0 is unchanged. `mask`
    (H, W) restricts the histogram, the table maps every pixel (as PIL).
    """
    return apply_lut(img, equalize_lut(img, mask))


def blur_radius(sigma: float) -> int:
    """The static tap radius ceil(3 * sigma) (at least 1) of a blur with a concrete sigma."""
    return max(1, math.ceil(3.0 * float(sigma)))


def gaussian_blur(img: jax.Array, sigma, radius: int | None = None) -> jax.Array:
    """Separable Gaussian blur, taps |k| <= radius, edges replicated.

    `radius` must be static; None takes `blur_radius(sigma)`, which needs a concrete sigma.
    """
    if radius is None:
        try:
            radius = blur_radius(sigma)
        except (TypeError, jax.errors.ConcretizationTypeError) as err:
            raise ValueError("gaussian_blur needs a static `radius` when sigma is traced") from err
    radius = int(radius)
    if radius < 1:
        raise ValueError(f"gaussian_blur radius must be >= 1, got {radius}")
    sigma = jnp.maximum(jnp.asarray(sigma, jnp.float32), 1e-3)
    taps = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = jnp.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    h, w = img.shape[:2]
    padded = jnp.pad(img, ((radius, radius), (0, 0), (0, 0)), mode="edge")
    rows = kernel[0] * padded[0:h]
    for k in range(1, 2 * radius + 1):
        rows = rows + kernel[k] * padded[k : k + h]
    padded = jnp.pad(rows, ((0, 0), (radius, radius), (0, 0)), mode="edge")
    out = kernel[0] * padded[:, 0:w]
    for k in range(1, 2 * radius + 1):
        out = out + kernel[k] * padded[:, k : k + w]
    return out


def color_jitter(
    img: jax.Array, factors: jax.Array, order: jax.Array, reference: jax.Array | None = None
) -> jax.Array:
    """torchvision ColorJitter without hue: brightness, contrast, saturation in `order`.

    `factors` (3,) are the (brightness, contrast, saturation) factors, `order` (3,) a permutation
    of 0, 1, 2 naming the op applied at each position. All three are blends with a degenerate
    image (black, mean grey, luminance), so each position is one blend. `reference`, if given, is
    the image whose mean luminance contrast uses (it goes through the same ops alongside): the
    query view passes the un-warped crop so that the mean is torchvision's, not the warped
    canvas'.
    """
    return _jitter(img, factors, order, reference)[0]


def color_jitter_with_reference(
    img: jax.Array, factors: jax.Array, order: jax.Array, reference: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """`color_jitter(img, ..., reference)` and the jittered reference, `color_jitter(reference)`.

    The reference goes through the same blends with its own mean, so it comes out as its own
    jitter: the query view gets both from one pass instead of jittering its canvas twice.
    """
    out, ref = _jitter(img, factors, order, reference)
    assert ref is not None
    return out, ref


def _jitter(
    img: jax.Array, factors: jax.Array, order: jax.Array, ref: jax.Array | None
) -> tuple[jax.Array, jax.Array | None]:
    def degenerate(x: jax.Array, op: jax.Array, mean: jax.Array) -> jax.Array:
        return jnp.where(op == 0, 0.0, jnp.where(op == 1, mean, luminance(x)))[..., None]

    # Each position's factor in one gather: indexing `factors` at each position would compile
    # to a gather kernel per use.
    factor_at = factors[order]
    for position in range(3):
        op = order[position]
        factor = factor_at[position]
        mean = mean_luminance(img if ref is None else ref)
        out = blend(degenerate(img, op, mean), img, factor)
        if ref is not None:
            ref = blend(degenerate(ref, op, mean), ref, factor)
        img = out
    return img, ref
