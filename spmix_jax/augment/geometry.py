"""Affine maps and bilinear resampling with PIL's conventions.

An affine matrix is 3 x 3 and maps OUTPUT coordinates to INPUT coordinates, `(x, y, 1)` with x the
column, in pixel-edge units (pixel (r, c) covers [c, c + 1) x [r, r + 1)); its first two rows are
exactly PIL's `Image.transform(size, Image.AFFINE, data)` data tuple. Resampling is bilinear with
edge-clamped neighbours; a point outside the source canvas ([0, W) x [0, H), tested before
interpolation) takes the fill colour, as in PIL.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

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
    size: tuple[int, ...]
    if isinstance(out_size, int | np.integer):
        size = (int(out_size), int(out_size))
    else:
        size = tuple(int(s) for s in out_size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"out_size must be a positive int or (height, width), got {out_size!r}")
    return size[0], size[1]


def check_image(image: jax.Array) -> None:
    """Refuses anything but one (H, W, C) image: the per-image ops run under `vmap`."""
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


def warp_affine(
    image: jax.Array, matrix: jax.Array, out_size: int | Sequence[int], fill=None
) -> jax.Array:
    """Resamples `image` (H, W, C) through `matrix` (output -> input) bilinearly.

    `fill` (C values in [0, 1]) is used where the mapped point leaves the source, as PIL's
    `Image.transform(..., fillcolor=...)`; with `fill=None` the edge pixels extend instead (the
    right choice for a crop, whose box lies inside the source).
    """
    check_image(image)
    out_h, out_w = _size2(out_size)
    points = _apply(jnp.asarray(matrix, jnp.float32), _grid(out_h, out_w))
    out = _sample_bilinear(image, points[0], points[1])
    if fill is not None:
        outside = _outside(points, image.shape[0], image.shape[1])
        out = jnp.where(outside[..., None], jnp.asarray(fill, jnp.float32).reshape(-1), out)
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
    check_image(image)
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
