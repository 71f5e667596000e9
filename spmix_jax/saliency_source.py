"""Where the saliency maps come from (docs/method.md section 4): the stored frame or each view.

`frame` (the released reading): one map per image, made from the whole stored frame, then carried
through each view's warp in the same resampling as the pixels (`augment.query_view(maps=...)`),
so the crop, flip and RandAugment's geometric ops move it exactly as they move the lesion, and a
fixed-size saliency window sees the image at one scale whatever the crop's zoom. `view`: each
view's map is computed on that view (`step.saliency_maps`).

Where a RandAugment geometric op brings in fill, the carried map takes `fill_value(saliency.fill)`:
`released` is what the released pipeline's map holds there. It reads its precomputed maps as RGB
images, so its geometric ops fill the map with the RGB fill colour; the map then goes through
PIL's grayscale conversion and `ToTensor`, so the fill scores the colour's 8-bit luma / 255.
`zero` scores fill as background.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from spmix_jax import saliency
from spmix_jax.augment import geometry, randaugment

SOURCES = ("frame", "view")
FILLS = ("released", "zero")

# PIL's RGB -> L conversion (ITU-R 601-2 luma) in its 16-bit fixed point, rounded half up.
_LUMA_FIXED = (19595, 38470, 7471)


def pil_luma(rgb: tuple[int, int, int]) -> int:
    """The 8-bit grey level PIL's `convert('L')` gives an 8-bit RGB colour."""
    return (sum(w * c for w, c in zip(_LUMA_FIXED, rgb, strict=True)) + 0x8000) >> 16


def fill_value(fill: str) -> float:
    """The map value of RandAugment's fill under `saliency.fill` (released: 162 / 255)."""
    if fill == "released":
        return pil_luma(randaugment.RANDAUGMENT_FILL) / 255.0
    if fill == "zero":
        return 0.0
    raise ValueError(f"unknown saliency fill {fill!r}; valid: {', '.join(FILLS)}")


def _boxes(boxes: jax.Array | None, batch: int, height: int, width: int) -> jax.Array:
    if boxes is None:
        return jnp.broadcast_to(jnp.array([0, 0, height, width], jnp.int32), (batch, 4))
    return jnp.asarray(boxes, jnp.int32)


def _box_matrix(box: jax.Array, out_size: int) -> jax.Array:
    """Output -> frame map of the valid region `box` resized to out_size x out_size."""
    return geometry.crop_matrix(box[0], box[1], box[2], box[3], out_size, out_size)


def frame_to_input(frames01: jax.Array, boxes: jax.Array | None, out_size: int) -> jax.Array:
    """Each frame's valid region resized (bilinear) to the model input, (B, M, M, 3)."""
    boxes = _boxes(boxes, *frames01.shape[:3])
    return jax.vmap(lambda f, b: geometry.warp_affine(f, _box_matrix(b, out_size), out_size))(
        frames01, boxes
    )


def input_to_frame(maps: jax.Array, boxes: jax.Array | None, height: int, width: int) -> jax.Array:
    """The inverse of `frame_to_input` for (B, M, M) maps: back onto the (B, H, W) frames.

    Outside the valid region the map's edge extends (no view's crop reads it there).
    """
    size = maps.shape[1]
    boxes = _boxes(boxes, maps.shape[0], height, width)

    def one(m: jax.Array, b: jax.Array) -> jax.Array:
        to_input = jnp.linalg.inv(_box_matrix(b, size))
        return geometry.warp_affine(m[..., None], to_input, (height, width))[..., 0]

    return jax.vmap(one)(maps, boxes)


def frame_maps(
    method: str,
    frames_uint8: jax.Array,
    boxes: jax.Array | None,
    *,
    input_size: int,
    score_fn: Callable[[jax.Array], jax.Array] | None = None,
    labels: jax.Array | None = None,
    score: str = "label",
) -> jax.Array:
    """One (B, H, W) map per stored frame, without gradient.

    Static methods read the whole frame. Gradient saliency scores each frame's valid region
    resized to the model input (one forward and backward per image) and is resized back onto
    the frame, so that every method's map is warped by the views in frame coordinates.
    """
    frames01 = jnp.asarray(frames_uint8, jnp.float32) / 255.0
    if method in saliency.STATIC_METHODS:
        maps = saliency.compute(method, frames01)
    else:
        _, height, width, _ = frames01.shape
        small = saliency.compute(
            method,
            frame_to_input(frames01, boxes, input_size),
            score_fn=score_fn,
            labels=labels,
            score=score,
        )
        maps = input_to_frame(small, boxes, height, width)
    return jax.lax.stop_gradient(maps)
