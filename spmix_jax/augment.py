"""Device-side view augmentation (SPEC section 3), pure jax.numpy, batched with `jax.vmap`.

The host only decodes and resizes to an S x S uint8 square; everything else runs inside the jitted
step, keyed by the step RNG, one key per example.

Conventions
- Images are float32 (H, W, 3) in [0, 1]. Ops reproduce PIL's uint8 semantics (thresholds and
  levels in 0-255 units) but keep intermediate values continuous: PIL rounds or truncates to uint8
  after every op, this module does not (differences are below one grey level).
- An affine matrix is 3 x 3 and maps OUTPUT coordinates to INPUT coordinates, `(x, y, 1)` with x
  the column, in pixel-edge units (pixel (r, c) covers [c, c + 1) x [r, r + 1)); the first two
  rows are exactly PIL's `Image.transform(size, Image.AFFINE, data)` data tuple.
- Resampling is bilinear with edge-clamped neighbours; a point outside the source canvas
  ([0, W) x [0, H), tested before interpolation) takes the fill colour, as in PIL.

Query view: RandomResizedCrop, horizontal flip, colour jitter, RandAugment. Efficiency: the crop,
the flip and RandAugment's geometric ops (rotate, shear, translate) are composed into one affine
map per image, and the source is resampled ONCE, then the colour ops run. torchvision resamples
after each geometric op and runs RandAugment after the jitter; the differences are:
1. interpolation: one bilinear sample of the source instead of an antialiased resize followed by
   one resample per geometric op (the released code picks bilinear or bicubic at random; bilinear
   throughout is what this module does), and no antialiasing when the crop is shrunk (by at most
   S / model size, about 1.14 for S = 256 and 224-pixel views);
2. colour ops commute with geometry up to interpolation for the pointwise ops. For the ops with
   global statistics the statistics are taken where torchvision takes them: the jitter's contrast
   mean, and contrast's mean / equalize's histogram of a RandAugment op that precedes every
   geometric op, come from the un-warped crop canvas (resampled once more, carried through the
   same colour ops); after a geometric op they come from the warped canvas minus the pixels a
   later geometric op fills (exact for n = 2, since then no geometric op follows). Sharpness'
   3 x 3 neighbourhood is taken on the warped canvas;
3. the fill colour is exact: each geometric stage records where it brings in fill, and the fill
   is inserted at that stage, so it skips the jitter and every colour op that precedes the
   geometric op and goes through the ones after it, as in torchvision.
Colour jitter applies brightness, contrast and saturation in a random order per image (as
torchvision's ColorJitter); hue jitter is not supported (SPEC uses 0). `tests/test_augment.py`
compares whole views built from explicit parameters with the PIL chain (mean error <= 3 levels).

Key view: RandomResizedCrop + horizontal flip (one warp), colour jitter (random order), grayscale
with probability `grayscale_p`, Gaussian blur with probability `blur_p`. The blur is a separable
Gaussian truncated at radius ceil(3 * sigma_max) (13 taps for sigma_max = 2, the support of PIL's
three-pass box approximation used by `ImageFilter.GaussianBlur(radius=sigma)`), edges replicated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# RandAugment op table (SPEC section 3), indexed by the op ids that `sample_randaugment` draws.
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
CROP_ATTEMPTS = 10  # torchvision RandomResizedCrop tries 10 times before the centre-crop fallback

_GRAY = (0.299, 0.587, 0.114)  # PIL "L" conversion weights (ITU-R 601-2 luma)


# ------------------------------------------------------------------------------------------------
# Affine matrices (output -> input, pixel-edge coordinates).


def _affine(a, b, c, d, e, f) -> jax.Array:
    """A 3 x 3 matrix from PIL's six AFFINE coefficients (scalars may be traced)."""
    a, b, c, d, e, f = (jnp.asarray(t, jnp.float32) for t in (a, b, c, d, e, f))
    zero, one = jnp.zeros((), jnp.float32), jnp.ones((), jnp.float32)
    return jnp.stack([jnp.stack([a, b, c]), jnp.stack([d, e, f]), jnp.stack([zero, zero, one])])


def crop_matrix(top, left, height, width, out_height: int, out_width: int) -> jax.Array:
    """Crop box (top, left, height, width) of the source resized to out_height x out_width.

    The same sampling positions as PIL's `resize(..., box=...)`: output pixel centre x + 0.5 reads
    source position left + (x + 0.5) * width / out_width.
    """
    h = jnp.asarray(height, jnp.float32)
    w = jnp.asarray(width, jnp.float32)
    return _affine(w / out_width, 0.0, left, 0.0, h / out_height, top)


def flip_matrix(width) -> jax.Array:
    """Horizontal flip of a canvas `width` pixels wide (PIL `ImageOps.mirror`)."""
    return _affine(-1.0, 0.0, width, 0.0, 1.0, 0.0)


def rotate_matrix(degrees, height, width) -> jax.Array:
    """Counter-clockwise rotation about the canvas centre, as PIL's `Image.rotate(degrees)`."""
    angle = -jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    cx = jnp.asarray(width, jnp.float32) / 2.0
    cy = jnp.asarray(height, jnp.float32) / 2.0
    c = cos * -cx + sin * -cy + cx
    f = -sin * -cx + cos * -cy + cy
    return _affine(cos, sin, c, -sin, cos, f)


def shear_x_matrix(factor) -> jax.Array:
    """timm/PIL ShearX: input x = x + factor * y."""
    return _affine(1.0, factor, 0.0, 0.0, 1.0, 0.0)


def shear_y_matrix(factor) -> jax.Array:
    """timm/PIL ShearY: input y = factor * x + y."""
    return _affine(1.0, 0.0, 0.0, factor, 1.0, 0.0)


def translate_x_matrix(pixels) -> jax.Array:
    """timm/PIL TranslateX: input x = x + pixels (content moves left for positive pixels)."""
    return _affine(1.0, 0.0, pixels, 0.0, 1.0, 0.0)


def translate_y_matrix(pixels) -> jax.Array:
    """timm/PIL TranslateY: input y = y + pixels."""
    return _affine(1.0, 0.0, 0.0, 0.0, 1.0, pixels)


# ------------------------------------------------------------------------------------------------
# Resampling.


def _size2(out_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(out_size, int | np.integer):
        size = (int(out_size), int(out_size))
    else:
        size = tuple(int(s) for s in out_size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"out_size must be a positive int or (height, width), got {out_size!r}")
    return size


def _check_image(image: jax.Array) -> None:
    if image.ndim != 3:
        raise ValueError(f"expected one (H, W, C) image, got shape {image.shape}")


def _grid(out_h: int, out_w: int) -> jax.Array:
    """Output pixel centres as homogeneous (3, out_h, out_w) edge coordinates."""
    ys, xs = jnp.meshgrid(
        jnp.arange(out_h, dtype=jnp.float32) + 0.5,
        jnp.arange(out_w, dtype=jnp.float32) + 0.5,
        indexing="ij",
    )
    return jnp.stack([xs, ys, jnp.ones_like(xs)])


def _apply(matrix: jax.Array, points: jax.Array) -> jax.Array:
    return jnp.einsum("ij,jhw->ihw", matrix, points)


def _outside(points: jax.Array, height: int, width: int) -> jax.Array:
    u, v = points[0], points[1]
    return (u < 0) | (u >= width) | (v < 0) | (v >= height)


def _sample_bilinear(image: jax.Array, u: jax.Array, v: jax.Array) -> jax.Array:
    """Bilinear sample at edge coordinates (u, v) with edge-clamped neighbours (PIL's filter)."""
    h, w, c = image.shape
    x = jnp.clip(u, -1.0, w + 1.0) - 0.5
    y = jnp.clip(v, -1.0, h + 1.0) - 0.5
    x0, y0 = jnp.floor(x), jnp.floor(y)
    dx, dy = (x - x0)[..., None], (y - y0)[..., None]
    x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
    xa, xb = jnp.clip(x0, 0, w - 1), jnp.clip(x0 + 1, 0, w - 1)
    ya, yb = jnp.clip(y0, 0, h - 1), jnp.clip(y0 + 1, 0, h - 1)
    flat = image.reshape(h * w, c).astype(jnp.float32)
    top = flat[ya * w + xa] * (1 - dx) + flat[ya * w + xb] * dx
    bottom = flat[yb * w + xa] * (1 - dx) + flat[yb * w + xb] * dx
    return top * (1 - dy) + bottom * dy


def _fill_array(fill) -> jax.Array:
    return jnp.asarray(fill, jnp.float32).reshape(-1)


def warp_affine(
    image: jax.Array, matrix: jax.Array, out_size: int | Sequence[int], fill=None
) -> jax.Array:
    """Resamples `image` (H, W, C) through `matrix` (output -> input) bilinearly.

    `fill` (C values in [0, 1]) is used where the mapped point leaves the source, as PIL's
    `Image.transform(..., fillcolor=...)`; with `fill=None` the edge pixels extend instead (the
    right choice for a crop, whose box lies inside the source).
    """
    _check_image(image)
    out_h, out_w = _size2(out_size)
    points = _apply(jnp.asarray(matrix, jnp.float32), _grid(out_h, out_w))
    out = _sample_bilinear(image, points[0], points[1])
    if fill is not None:
        outside = _outside(points, image.shape[0], image.shape[1])
        out = jnp.where(outside[..., None], _fill_array(fill), out)
    return out


def resample_chain(
    image: jax.Array, base: jax.Array, stages: jax.Array, out_size: int
) -> tuple[jax.Array, jax.Array]:
    """Resamples once through `base @ stages[0] @ ... @ stages[-1]`, tracking where fill enters.

    `base` maps the out_size x out_size canvas to the source (crop, flip); `stages` (n, 3, 3) are
    canvas -> canvas maps of geometric ops applied in order stages[0], stages[1], ... Returns the
    content (out_size, out_size, C), sampled from the source with edges extended everywhere, and
    `outside` (n, out_size, out_size): True where stage k's map sends the traced point off the
    canvas, i.e. where stage k brings in fill. Writing the fill for k = 0..n-1 in order (later
    stages overwriting) reproduces sequential warps with fill, up to interpolation.
    """
    _check_image(image)
    if stages.ndim != 3 or stages.shape[1:] != (3, 3):
        raise ValueError(f"stages must have shape (n, 3, 3), got {stages.shape}")
    points = _grid(out_size, out_size)
    outside = []
    for k in range(stages.shape[0] - 1, -1, -1):
        points = _apply(stages[k], points)
        outside.append(_outside(points, out_size, out_size))
    outside = outside[::-1]
    points = _apply(base, points)
    content = _sample_bilinear(image, points[0], points[1])
    if outside:
        mask = jnp.stack(outside)
    else:
        mask = jnp.zeros((0, out_size, out_size), bool)
    return content, mask


# ------------------------------------------------------------------------------------------------
# Colour ops on float images in [0, 1] with PIL's uint8 semantics.


def _levels(img: jax.Array) -> jax.Array:
    """The uint8 level (0-255, int32) each float value stands for."""
    return jnp.clip(jnp.round(img * 255.0), 0, 255).astype(jnp.int32)


def _gray(img: jax.Array) -> jax.Array:
    return img[..., 0] * _GRAY[0] + img[..., 1] * _GRAY[1] + img[..., 2] * _GRAY[2]


def _blend(degenerate: jax.Array, img: jax.Array, factor) -> jax.Array:
    """PIL `Image.blend(degenerate, img, factor)`, clipped to [0, 1]."""
    factor = jnp.asarray(factor, jnp.float32)
    return jnp.clip(degenerate + factor * (img - degenerate), 0.0, 1.0)


def _mean_gray(img: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """PIL's contrast mean: the mean luminance rounded to an 8-bit level (over `mask` if given)."""
    gray = _gray(img)
    if mask is None:
        mean = jnp.mean(gray)
    else:
        weight = mask.astype(jnp.float32)
        mean = jnp.sum(gray * weight) / jnp.maximum(jnp.sum(weight), 1.0)
    return jnp.floor(mean * 255.0 + 0.5) / 255.0


def grayscale(img: jax.Array) -> jax.Array:
    """PIL `convert('L')` replicated to three channels (torchvision RandomGrayscale)."""
    return jnp.repeat(_gray(img)[..., None], 3, axis=-1)


def brightness(img: jax.Array, factor) -> jax.Array:
    """PIL `ImageEnhance.Brightness(img).enhance(factor)`: blend with black."""
    return _blend(jnp.zeros_like(img), img, factor)


def contrast(img: jax.Array, factor, mask: jax.Array | None = None) -> jax.Array:
    """PIL `ImageEnhance.Contrast`: blend with a grey of the (rounded) mean luminance.

    `mask` (H, W) restricts the mean to those pixels (used where part of the canvas is not yet
    content of this stage); None uses every pixel, as PIL.
    """
    return _blend(jnp.broadcast_to(_mean_gray(img, mask), img.shape), img, factor)


def saturation(img: jax.Array, factor) -> jax.Array:
    """PIL `ImageEnhance.Color` (torchvision adjust_saturation): blend with the luminance."""
    return _blend(grayscale(img), img, factor)


color = saturation


def _smooth(img: jax.Array) -> jax.Array:
    """PIL `ImageFilter.SMOOTH` ([[1,1,1],[1,5,1],[1,1,1]] / 13); the 1-pixel border is kept."""
    h, w = img.shape[:2]
    if h < 3 or w < 3:
        return img
    total = 4.0 * img[1:-1, 1:-1]
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            total = total + img[dy : dy + h - 2, dx : dx + w - 2]
    return img.at[1:-1, 1:-1].set(total / 13.0)


def sharpness(img: jax.Array, factor) -> jax.Array:
    """PIL `ImageEnhance.Sharpness`: blend with the SMOOTH-filtered image."""
    return _blend(_smooth(img), img, factor)


def posterize(img: jax.Array, bits) -> jax.Array:
    """PIL `ImageOps.posterize`: keep the top `bits` bits of every 8-bit level (0 bits: black)."""
    bits = jnp.clip(jnp.asarray(bits, jnp.int32), 0, 8)
    mask = (255 << (8 - bits)) & 255
    return (_levels(img) & mask).astype(jnp.float32) / 255.0


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


def _equalize_lut(img: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """PIL's equalize lookup table, (C, 256) int32."""
    h, w, c = img.shape
    levels = _levels(img)
    weight = jnp.ones((h, w), jnp.int32) if mask is None else mask.astype(jnp.int32)
    index = levels + 256 * jnp.arange(c, dtype=jnp.int32)
    weights = jnp.broadcast_to(weight[..., None], levels.shape)
    hist = jnp.zeros(256 * c, jnp.int32).at[index.reshape(-1)].add(weights.reshape(-1))
    hist = hist.reshape(c, 256)
    occupied = hist > 0
    last = 255 - jnp.argmax(occupied[:, ::-1], axis=1)
    last_count = jnp.take_along_axis(hist, last[:, None], axis=1)[:, 0]
    step = (hist.sum(axis=1) - last_count) // 255
    below = jnp.cumsum(hist, axis=1) - hist
    safe = jnp.maximum(step, 1)[:, None]
    lut = jnp.clip((step[:, None] // 2 + below) // safe, 0, 255)
    keep = (occupied.sum(axis=1) <= 1) | (step == 0)
    return jnp.where(keep[:, None], jnp.arange(256, dtype=jnp.int32)[None, :], lut)


def _apply_lut(img: jax.Array, lut: jax.Array) -> jax.Array:
    """Maps every 8-bit level of channel c through lut[c] (C, 256)."""
    h, w, c = img.shape
    out = jnp.take_along_axis(lut.T, _levels(img).reshape(h * w, c), axis=0)
    return out.reshape(h, w, c).astype(jnp.float32) / 255.0


def equalize(img: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """PIL `ImageOps.equalize(img, mask)`: per-channel histogram equalisation on 8-bit levels.

    lut[i] = (step // 2 + #pixels below level i) // step with step = (#pixels - #pixels in the
    top occupied level) // 255; a channel with one occupied level or step 0 is unchanged. `mask`
    (H, W) restricts the histogram, the table maps every pixel (as PIL).
    """
    return _apply_lut(img, _equalize_lut(img, mask))


def gaussian_blur(img: jax.Array, sigma, radius: int | None = None) -> jax.Array:
    """Separable Gaussian blur, taps |k| <= radius, edges replicated.

    `radius` must be static; None takes ceil(3 * sigma), which needs a concrete sigma.
    """
    if radius is None:
        try:
            radius = max(1, math.ceil(3.0 * float(sigma)))
        except (TypeError, jax.errors.ConcretizationTypeError) as err:
            raise ValueError("gaussian_blur needs a static `radius` when sigma is traced") from err
    radius = int(radius)
    if radius < 1:
        raise ValueError(f"gaussian_blur radius must be >= 1, got {radius}")
    sigma = jnp.maximum(jnp.asarray(sigma, jnp.float32), 1e-3)
    taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    kernel = jnp.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    h, w = img.shape[:2]
    padded = jnp.pad(img, ((radius, radius), (0, 0), (0, 0)), mode="edge")
    img = sum(kernel[k] * padded[k : k + h] for k in range(2 * radius + 1))
    padded = jnp.pad(img, ((0, 0), (radius, radius), (0, 0)), mode="edge")
    return sum(kernel[k] * padded[:, k : k + w] for k in range(2 * radius + 1))


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
    ref = reference
    for position in range(3):
        op = order[position]
        mean = _mean_gray(img if ref is None else ref)
        degenerate = jnp.where(op == 0, 0.0, jnp.where(op == 1, mean, _gray(img)))[..., None]
        out = _blend(degenerate, img, factors[op])
        if ref is not None:
            ref_degenerate = jnp.where(op == 0, 0.0, jnp.where(op == 1, mean, _gray(ref)))
            ref = _blend(ref_degenerate[..., None], ref, factors[op])
        img = out
    return img


# ------------------------------------------------------------------------------------------------
# RandAugment.


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
    """
    u = jnp.asarray(uniforms, jnp.float32)
    num_ops = len(RANDAUGMENT_OPS)
    op = jnp.minimum(jnp.floor(u[:, 0] * num_ops).astype(jnp.int32), num_ops - 1)
    apply = u[:, 1] < RANDAUGMENT_PROB
    normal = jax.scipy.special.ndtri(jnp.clip(u[:, 2], 1e-7, 1.0 - 1e-7))
    level = jnp.clip(magnitude + magnitude_std * normal, 0.0, MAX_LEVEL)
    sign = jnp.where(u[:, 3] < 0.5, -1.0, 1.0).astype(jnp.float32)
    return RandAugmentDraw(op=op, apply=apply, level=level, sign=sign)


def sample_randaugment(
    key: jax.Array, n: int, magnitude: float, magnitude_std: float
) -> RandAugmentDraw:
    """Draws n RandAugment ops (see `randaugment_from_uniforms`)."""
    uniforms = jax.random.uniform(key, (n, 4), jnp.float32)
    return randaugment_from_uniforms(uniforms, magnitude, magnitude_std)


def randaugment_matrix(op, level, sign, size: int) -> jax.Array:
    """The canvas map of geometric op `op` at `level` (identity for the colour ops).

    Rotate (level/10)*30 degrees, shear (level/10)*0.3, translate (level/10)*0.45 * size, each
    times `sign`.
    """
    frac = jnp.asarray(level, jnp.float32) / MAX_LEVEL * sign
    mats = jnp.stack(
        [
            rotate_matrix(frac * 30.0, size, size),
            shear_x_matrix(frac * 0.3),
            shear_y_matrix(frac * 0.3),
            translate_x_matrix(frac * 0.45 * size),
            translate_y_matrix(frac * 0.45 * size),
            jnp.eye(3, dtype=jnp.float32),
        ]
    )
    return mats[jnp.clip(jnp.asarray(op, jnp.int32), 0, NUM_GEOMETRIC_OPS)]


def _enhance_factor(level):
    return level / MAX_LEVEL * 1.8 + 0.1


def randaugment_colour(
    img: jax.Array,
    op,
    level,
    mask: jax.Array | None = None,
    reference: jax.Array | None = None,
) -> jax.Array:
    """Applies colour op `op` at `level` (SPEC table); geometric ops return `img` unchanged.

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
    name = {n: i for i, n in enumerate(RANDAUGMENT_OPS)}
    i = jnp.arange(256, dtype=jnp.int32)
    bits = jnp.floor(level / MAX_LEVEL * 4).astype(jnp.int32)
    threshold = jnp.floor(level / MAX_LEVEL * 256).astype(jnp.int32)
    add = jnp.floor(level / MAX_LEVEL * 110).astype(jnp.int32)
    luts = jnp.stack(
        [
            jnp.broadcast_to(i & ((255 << (8 - bits)) & 255), (3, 256)),
            jnp.broadcast_to(jnp.where(i >= threshold, 255 - i, i), (3, 256)),
            jnp.broadcast_to(jnp.where(i < 128, jnp.minimum(i + add, 255), i), (3, 256)),
            _equalize_lut(ref, mask),
            jnp.broadcast_to(255 - i, (3, 256)),
        ]
    )
    lut_ops = [name[n] for n in ("PosterizeTpu", "Solarize", "SolarizeAdd", "Equalize", "Invert")]
    lut_index = sum(jnp.where(op == o, k, 0) for k, o in enumerate(lut_ops))
    is_lut = jnp.isin(op, jnp.array(lut_ops))

    degenerate = jnp.where(
        op == name["Color"],
        _gray(img)[..., None],
        jnp.where(
            op == name["Contrast"],
            _mean_gray(ref, mask),
            jnp.where(op == name["Brightness"], 0.0, _smooth(img)),
        ),
    )
    blend_ops = [name[n] for n in ("Color", "Contrast", "Brightness", "Sharpness")]
    is_blend = jnp.isin(op, jnp.array(blend_ops))
    blended = _blend(degenerate, img, _enhance_factor(level))
    return jnp.where(is_lut, _apply_lut(img, luts[lut_index]), jnp.where(is_blend, blended, img))


# ------------------------------------------------------------------------------------------------
# RandomResizedCrop parameters.


def crop_params_from_uniforms(
    uniforms: jax.Array, height: int, width: int, scale: Sequence[float], ratio: Sequence[float]
) -> jax.Array:
    """torchvision `RandomResizedCrop.get_params` with all attempts evaluated at once.

    `uniforms` (attempts, 4) in [0, 1) give each attempt's area fraction, log aspect ratio, top and
    left. The first attempt whose (rounded) box fits is taken, otherwise torchvision's centre-crop
    fallback. Returns int32 (top, left, crop_height, crop_width).
    """
    u = jnp.asarray(uniforms, jnp.float32)
    area = float(height * width)
    target = area * (scale[0] + u[:, 0] * (scale[1] - scale[0]))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = jnp.exp(log_lo + u[:, 1] * (log_hi - log_lo))
    w = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
    h = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    top = jnp.minimum(jnp.floor(u[:, 2] * (height - h + 1)).astype(jnp.int32), height - h)
    left = jnp.minimum(jnp.floor(u[:, 3] * (width - w + 1)).astype(jnp.int32), width - w)
    first = jnp.argmax(ok)
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fh, fw = height, int(round(height * max(ratio)))
    else:
        fw, fh = width, height
    fallback = jnp.array([(height - fh) // 2, (width - fw) // 2, fh, fw], jnp.int32)
    chosen = jnp.stack([top[first], left[first], h[first], w[first]])
    return jnp.where(ok.any(), chosen, fallback)


def random_resized_crop_params(
    key: jax.Array,
    height: int,
    width: int,
    scale: Sequence[float],
    ratio: Sequence[float],
    attempts: int = CROP_ATTEMPTS,
) -> jax.Array:
    """Draws a RandomResizedCrop box (top, left, height, width) with `attempts` tries."""
    uniforms = jax.random.uniform(key, (attempts, 4), jnp.float32)
    return crop_params_from_uniforms(uniforms, height, width, scale, ratio)


# ------------------------------------------------------------------------------------------------
# Per-image view parameters and views.


class QueryParams(NamedTuple):
    """One image's query-view randomness."""

    crop: jax.Array  # (4,) int32 top, left, height, width
    flip: jax.Array  # () bool
    jitter: jax.Array  # (3,) brightness, contrast, saturation factors
    jitter_order: jax.Array  # (3,) permutation of 0, 1, 2
    randaugment: RandAugmentDraw


class KeyParams(NamedTuple):
    """One image's key-view randomness."""

    crop: jax.Array
    flip: jax.Array
    jitter: jax.Array
    jitter_order: jax.Array
    gray: jax.Array  # () bool
    blur: jax.Array  # () bool
    sigma: jax.Array  # () float32


class _Settings(NamedTuple):
    scale: tuple[float, float]
    ratio: tuple[float, float]
    jitter: tuple[float, float, float]
    ra_n: int
    ra_m: float
    ra_mstd: float
    gray_p: float
    blur_p: float
    blur_sigma: tuple[float, float]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    eval_resize_ratio: float


def _pair(cfg: Any, name: str) -> tuple[float, float]:
    value = tuple(float(v) for v in getattr(cfg, name))
    if len(value) != 2 or value[0] > value[1]:
        raise ValueError(f"augment.{name} must be (low, high) with low <= high, got {value}")
    return value


def _triple(cfg: Any, name: str) -> tuple[float, float, float]:
    value = tuple(float(v) for v in getattr(cfg, name))
    if len(value) != 3:
        raise ValueError(f"augment.{name} must have 3 values (RGB), got {value}")
    return value


def _settings(cfg: Any) -> _Settings:
    """Reads and checks the `config.augment` fields this module uses."""
    scale, ratio, sigma = _pair(cfg, "scale"), _pair(cfg, "ratio"), _pair(cfg, "blur_sigma")
    if scale[0] <= 0:
        raise ValueError(f"augment.scale must be positive, got {scale}")
    if ratio[0] <= 0:
        raise ValueError(f"augment.ratio must be positive, got {ratio}")
    if sigma[0] <= 0:
        raise ValueError(f"augment.blur_sigma must be positive, got {sigma}")
    jitter = tuple(float(v) for v in cfg.color_jitter)
    if len(jitter) != 4 or min(jitter) < 0:
        raise ValueError(
            "augment.color_jitter must be 4 non-negative values (brightness, contrast, "
            f"saturation, hue), got {jitter}"
        )
    if jitter[3] != 0:
        raise ValueError(
            f"augment.color_jitter hue must be 0 (hue jitter is not implemented), got {jitter}"
        )
    ra_n = int(cfg.randaugment_n)
    if ra_n < 0:
        raise ValueError(f"augment.randaugment_n must be >= 0, got {ra_n}")
    std = _triple(cfg, "std")
    if min(std) <= 0:
        raise ValueError(f"augment.std must be positive, got {std}")
    for name in ("grayscale_p", "blur_p"):
        p = float(getattr(cfg, name))
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"augment.{name} must be a probability, got {p}")
    return _Settings(
        scale=scale,
        ratio=ratio,
        jitter=jitter[:3],
        ra_n=ra_n,
        ra_m=float(cfg.randaugment_m),
        ra_mstd=float(cfg.randaugment_mstd),
        gray_p=float(cfg.grayscale_p),
        blur_p=float(cfg.blur_p),
        blur_sigma=sigma,
        mean=_triple(cfg, "mean"),
        std=std,
        eval_resize_ratio=float(cfg.eval_resize_ratio),
    )


def _jitter_from_uniforms(u: jax.Array, strengths: Sequence[float]) -> tuple[jax.Array, jax.Array]:
    """From 6 uniforms: factors uniform in [max(0, 1 - s), 1 + s] and a random order."""
    lo = jnp.array([max(0.0, 1.0 - s) for s in strengths], jnp.float32)
    hi = jnp.array([1.0 + s for s in strengths], jnp.float32)
    factors = lo + u[:3] * (hi - lo)
    order = jnp.argsort(u[3:6]).astype(jnp.int32)
    return factors, order


# Each view draws ONE block of uniforms per example and slices it: one threefry call keeps the
# compiled program small (every separate draw is its own threefry kernel).
_CROP_U = CROP_ATTEMPTS * 4


def sample_query_params(key: jax.Array, height: int, width: int, cfg: Any) -> QueryParams:
    """Draws one image's query-view parameters from `config.augment`."""
    s = _settings(cfg)
    u = jax.random.uniform(key, (_CROP_U + 7 + 4 * s.ra_n,), jnp.float32)
    factors, order = _jitter_from_uniforms(u[_CROP_U + 1 : _CROP_U + 7], s.jitter)
    ra_u = u[_CROP_U + 7 :].reshape(s.ra_n, 4)
    return QueryParams(
        crop=crop_params_from_uniforms(
            u[:_CROP_U].reshape(CROP_ATTEMPTS, 4), height, width, s.scale, s.ratio
        ),
        flip=u[_CROP_U] < 0.5,
        jitter=factors,
        jitter_order=order,
        randaugment=randaugment_from_uniforms(ra_u, s.ra_m, s.ra_mstd),
    )


def sample_key_params(key: jax.Array, height: int, width: int, cfg: Any) -> KeyParams:
    """Draws one image's key-view parameters from `config.augment`."""
    s = _settings(cfg)
    u = jax.random.uniform(key, (_CROP_U + 10,), jnp.float32)
    factors, order = _jitter_from_uniforms(u[_CROP_U + 1 : _CROP_U + 7], s.jitter)
    lo, hi = s.blur_sigma
    return KeyParams(
        crop=crop_params_from_uniforms(
            u[:_CROP_U].reshape(CROP_ATTEMPTS, 4), height, width, s.scale, s.ratio
        ),
        flip=u[_CROP_U] < 0.5,
        jitter=factors,
        jitter_order=order,
        gray=u[_CROP_U + 7] < s.gray_p,
        blur=u[_CROP_U + 8] < s.blur_p,
        sigma=lo + u[_CROP_U + 9] * (hi - lo),
    )


def _crop_flip_matrix(crop: jax.Array, flip: jax.Array, out_size: int) -> jax.Array:
    top, left, h, w = (crop[i].astype(jnp.float32) for i in range(4))
    base = crop_matrix(top, left, h, w, out_size, out_size)
    flip_m = jnp.where(flip, flip_matrix(out_size), jnp.eye(3, dtype=jnp.float32))
    return base @ flip_m


def query_view_from_params(image: jax.Array, params: QueryParams, out_size: int) -> jax.Array:
    """One image's query view in [0, 1]: one warp (crop, flip, RandAugment geometry), then colour.

    Fill enters at the RandAugment stage whose geometric op brings it in, so it skips the jitter
    and earlier colour ops, as in torchvision (see the module docstring).
    """
    _check_image(image)
    ra = params.randaugment
    n = ra.op.shape[0]
    geometric = ra.apply & (ra.op < NUM_GEOMETRIC_OPS)
    eye = jnp.eye(3, dtype=jnp.float32)
    if n:
        stages = jax.vmap(randaugment_matrix, in_axes=(0, 0, 0, None))(
            ra.op, ra.level, ra.sign, out_size
        )
        stages = jnp.where(geometric[:, None, None], stages, eye)
    else:
        stages = jnp.zeros((0, 3, 3), jnp.float32)
    base = _crop_flip_matrix(params.crop, params.flip, out_size)
    img, outside = resample_chain(image, base, stages, out_size)
    outside = outside & geometric[:, None, None]
    # The crop canvas torchvision's colour ops see until the first geometric op: global statistics
    # (contrast's mean, equalize's histogram) are taken from it while it is still current.
    canvas = warp_affine(image, base, out_size)
    img = color_jitter(img, params.jitter, params.jitter_order, reference=canvas)
    canvas = color_jitter(canvas, params.jitter, params.jitter_order)
    if not n:
        return jnp.clip(img, 0.0, 1.0)
    fill = jnp.asarray(RANDAUGMENT_FILL, jnp.float32) / 255.0
    # later_fill[k]: pixels that a geometric op after stage k fills.
    from_k = jnp.cumsum(outside[::-1].astype(jnp.int32), axis=0)[::-1] > 0
    later_fill = jnp.concatenate([from_k[1:], jnp.zeros_like(from_k[:1])])

    def stage(carry, xs):
        img, canvas, warped = carry
        op, level, apply, geo, fill_here, fill_later = xs
        img = jnp.where(fill_here[..., None], fill, img)
        # Before any geometric op the crop canvas is current; afterwards use the warped canvas
        # minus what later geometric ops fill.
        reference = jnp.where(warped, img, canvas)
        mask = ~warped | ~fill_later
        img = jnp.where(apply, randaugment_colour(img, op, level, mask, reference), img)
        canvas = jnp.where(apply, randaugment_colour(canvas, op, level), canvas)
        return (img, canvas, warped | geo), None

    # A scan compiles the stage once, whatever n is.
    xs = (ra.op, ra.level, ra.apply, geometric, outside, later_fill)
    (img, _, _), _ = jax.lax.scan(stage, (img, canvas, jnp.bool_(False)), xs)
    return jnp.clip(img, 0.0, 1.0)


def key_view_from_params(
    image: jax.Array, params: KeyParams, out_size: int, blur_radius: int
) -> jax.Array:
    """One image's key view in [0, 1]: crop + flip warp, jitter, grayscale, blur."""
    _check_image(image)
    base = _crop_flip_matrix(params.crop, params.flip, out_size)
    img = warp_affine(image, base, out_size)
    img = color_jitter(img, params.jitter, params.jitter_order)
    img = jnp.where(params.gray, grayscale(img), img)
    img = jnp.where(params.blur, gaussian_blur(img, params.sigma, blur_radius), img)
    return jnp.clip(img, 0.0, 1.0)


# ------------------------------------------------------------------------------------------------
# Batched public API.


def _check_images(images: jax.Array) -> jax.Array:
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (B, H, W, 3), got shape {images.shape}")
    if images.dtype != jnp.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    return images.astype(jnp.float32) / 255.0


def _check_out_size(out_size: int) -> int:
    if not isinstance(out_size, int | np.integer) or out_size <= 0:
        raise ValueError(f"out_size must be a positive int, got {out_size!r}")
    return int(out_size)


def _example_keys(rng: jax.Array, batch: int) -> jax.Array:
    """One typed key per example: split a single key, or take a (B,) batch of keys as given."""
    if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.wrap_key_data(rng)
    if rng.ndim == 0:
        return jax.random.split(rng, batch)
    if rng.shape == (batch,):
        return rng
    raise ValueError(f"rng must be one key or one key per example ({batch},), got {rng.shape}")


def normalize(view01: jax.Array, cfg: Any) -> jax.Array:
    """(view - mean) / std with `config.augment.mean/std`."""
    s = _settings(cfg)
    return (view01 - jnp.asarray(s.mean, jnp.float32)) / jnp.asarray(s.std, jnp.float32)


def query_view(
    rng: jax.Array, images_uint8: jax.Array, *, out_size: int, cfg: Any
) -> tuple[jax.Array, jax.Array]:
    """Query views of a uint8 (B, S, S, 3) batch: (view01, normed), float32 (B, M, M, 3)."""
    x = _check_images(images_uint8)
    out_size = _check_out_size(out_size)
    b, h, w, _ = x.shape
    keys = _example_keys(rng, b)
    params = jax.vmap(lambda k: sample_query_params(k, h, w, cfg))(keys)
    view01 = jax.vmap(lambda im, p: query_view_from_params(im, p, out_size))(x, params)
    return view01, normalize(view01, cfg)


def key_view(
    rng: jax.Array, images_uint8: jax.Array, *, out_size: int, cfg: Any
) -> tuple[jax.Array, jax.Array]:
    """Key views of a uint8 (B, S, S, 3) batch: (view01, normed), float32 (B, M, M, 3)."""
    x = _check_images(images_uint8)
    out_size = _check_out_size(out_size)
    s = _settings(cfg)
    b, h, w, _ = x.shape
    radius = max(1, math.ceil(3.0 * s.blur_sigma[1]))
    keys = _example_keys(rng, b)
    params = jax.vmap(lambda k: sample_key_params(k, h, w, cfg))(keys)
    view01 = jax.vmap(lambda im, p: key_view_from_params(im, p, out_size, radius))(x, params)
    return view01, normalize(view01, cfg)


def eval_view(images_uint8: jax.Array, *, out_size: int, cfg: Any) -> jax.Array:
    """Evaluation view: short side to out_size * eval_resize_ratio, centre crop, normalise.

    torchvision `Resize(round(out_size * ratio))` + `CenterCrop(out_size)`; the resize is bilinear
    with antialiasing when shrinking (as PIL's BILINEAR resize).
    """
    x = _check_images(images_uint8)
    out_size = _check_out_size(out_size)
    s = _settings(cfg)
    if s.eval_resize_ratio < 1.0:
        raise ValueError(f"augment.eval_resize_ratio must be >= 1, got {s.eval_resize_ratio}")
    b, h, w, c = x.shape
    short = int(round(out_size * s.eval_resize_ratio))
    if h <= w:
        new_h, new_w = short, int(short * w / h)
    else:
        new_h, new_w = int(short * h / w), short
    x = jax.image.resize(x, (b, new_h, new_w, c), method="linear", antialias=True)
    top = int(round((new_h - out_size) / 2.0))
    left = int(round((new_w - out_size) / 2.0))
    x = jnp.clip(x[:, top : top + out_size, left : left + out_size], 0.0, 1.0)
    return normalize(x, cfg)
