"""Query, key and evaluation views of a uint8 batch (docs/method.md section 3).

Each view draws its per-image parameters from one block of uniforms, builds the view from them with
`vmap`, and normalises it. How the views differ from torchvision's is described in the package
docstring (`spmix_jax.augment`). The settings are read once from `config.augment` into a
`ViewSettings`; `spmix_jax.config_checks.check_augment` validates them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from spmix_jax.augment import colour, geometry, randaugment
from spmix_jax.augment.randaugment import RandAugmentDraw

CROP_ATTEMPTS = 10  # torchvision RandomResizedCrop tries 10 times before the centre-crop fallback


@dataclasses.dataclass(frozen=True)
class ViewSettings:
    """The `config.augment` fields the views use, as plain Python numbers (hashable, static)."""

    scale: tuple[float, float]
    ratio: tuple[float, float]
    jitter: tuple[float, float, float]  # brightness, contrast, saturation strengths
    ra_n: int
    ra_m: float
    ra_mstd: float
    gray_p: float
    blur_p: float
    blur_sigma: tuple[float, float]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    eval_resize_ratio: float

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict) -> ViewSettings:
        """Converts `config.augment` (validated by `check_augment`); hue jitter is dropped."""

        def pair(name: str) -> tuple[float, float]:
            a, b = (float(v) for v in cfg[name])
            return a, b

        def triple(name: str) -> tuple[float, float, float]:
            a, b, c = (float(v) for v in list(cfg[name])[:3])
            return a, b, c

        return cls(
            scale=pair("scale"),
            ratio=pair("ratio"),
            jitter=triple("color_jitter"),
            ra_n=int(cfg.randaugment_n),
            ra_m=float(cfg.randaugment_m),
            ra_mstd=float(cfg.randaugment_mstd),
            gray_p=float(cfg.grayscale_p),
            blur_p=float(cfg.blur_p),
            blur_sigma=pair("blur_sigma"),
            mean=triple("mean"),
            std=triple("std"),
            eval_resize_ratio=float(cfg.eval_resize_ratio),
        )


# ------------------------------------------------------------------------------------------------
# RandomResizedCrop parameters.


def crop_params_from_uniforms(
    uniforms: jax.Array,
    height: int,
    width: int,
    scale: Sequence[float],
    ratio: Sequence[float],
    box: jax.Array | None = None,
) -> jax.Array:
    """torchvision `RandomResizedCrop.get_params` with all attempts evaluated at once.

    `uniforms` (attempts, 4) in [0, 1) give each attempt's area fraction, log aspect ratio, top and
    left. The first attempt whose (rounded) box fits is taken, otherwise torchvision's centre-crop
    fallback. Returns int32 (top, left, crop_height, crop_width).

    `box` (int32 top, left, height, width), when given, is the image's valid region inside a
    padded frame: the crop is drawn from it as torchvision draws from the whole image (area
    fraction of the region, never a padded pixel), and returned in frame coordinates.
    """
    if box is None:
        box = jnp.array([0, 0, height, width], jnp.int32)
    return _crop_in_box(uniforms, box, scale, ratio)


def _crop_in_box(
    uniforms: jax.Array, box: jax.Array, scale: Sequence[float], ratio: Sequence[float]
) -> jax.Array:
    """`crop_params_from_uniforms` on a traced valid region `box` of the frame."""
    u = jnp.asarray(uniforms, jnp.float32)
    box = jnp.asarray(box, jnp.int32)
    top0, left0, height, width = box[0], box[1], box[2], box[3]
    hf, wf = height.astype(jnp.float32), width.astype(jnp.float32)
    target = hf * wf * (scale[0] + u[:, 0] * (scale[1] - scale[0]))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = jnp.exp(log_lo + u[:, 1] * (log_hi - log_lo))
    w = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
    h = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    top = jnp.minimum(jnp.floor(u[:, 2] * (height - h + 1)).astype(jnp.int32), height - h)
    left = jnp.minimum(jnp.floor(u[:, 3] * (width - w + 1)).astype(jnp.int32), width - w)
    first = jnp.argmax(ok)
    in_ratio = wf / hf
    lo, hi = min(ratio), max(ratio)
    fw = jnp.where(in_ratio > hi, jnp.round(hf * hi).astype(jnp.int32), width)
    fh = jnp.where(in_ratio < lo, jnp.round(wf / lo).astype(jnp.int32), height)
    fallback = jnp.stack([(height - fh) // 2, (width - fw) // 2, fh, fw])
    chosen = jnp.stack([top[first], left[first], h[first], w[first]])
    crop = jnp.where(ok.any(), chosen, fallback)
    return crop + jnp.stack([top0, left0, jnp.int32(0), jnp.int32(0)])


# ------------------------------------------------------------------------------------------------
# Per-image view parameters.


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


# Each view draws ONE block of uniforms per example and slices it: one threefry call keeps the
# compiled program small (every separate draw is its own threefry kernel). Both views start with
# the same layout: crop attempts, flip, 6 jitter uniforms.
_CROP_U = CROP_ATTEMPTS * 4
_COMMON_U = _CROP_U + 7


def _crop_flip_jitter(
    u: jax.Array, height: int, width: int, s: ViewSettings, box: jax.Array | None = None
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Crop box, flip, jitter factors (uniform in [max(0, 1 - s), 1 + s]) and a random order."""
    crop_u = u[:_CROP_U].reshape(CROP_ATTEMPTS, 4)
    crop = crop_params_from_uniforms(crop_u, height, width, s.scale, s.ratio, box)
    lo = jnp.array([max(0.0, 1.0 - v) for v in s.jitter], jnp.float32)
    hi = jnp.array([1.0 + v for v in s.jitter], jnp.float32)
    factors = lo + u[_CROP_U + 1 : _CROP_U + 4] * (hi - lo)
    order = jnp.argsort(u[_CROP_U + 4 : _COMMON_U]).astype(jnp.int32)
    return crop, u[_CROP_U] < 0.5, factors, order


def sample_query_params(
    key: jax.Array, height: int, width: int, settings: ViewSettings, box: jax.Array | None = None
) -> QueryParams:
    """Draws one image's query-view parameters (the crop inside `box`, if given)."""
    u = jax.random.uniform(key, (_query_uniforms(settings),), jnp.float32)
    return QueryParams(
        *_crop_flip_jitter(u, height, width, settings, box), _randaugment_draw(u, settings)
    )


def sample_key_params(
    key: jax.Array, height: int, width: int, settings: ViewSettings, box: jax.Array | None = None
) -> KeyParams:
    """Draws one image's key-view parameters (the crop inside `box`, if given)."""
    u = jax.random.uniform(key, (_KEY_UNIFORMS,), jnp.float32)
    return KeyParams(*_crop_flip_jitter(u, height, width, settings, box), *_key_extras(u, settings))


def _query_uniforms(settings: ViewSettings) -> int:
    """How many uniforms a query view draws: the common block, then 4 per RandAugment op."""
    return _COMMON_U + 4 * settings.ra_n


_KEY_UNIFORMS = _COMMON_U + 3  # the common block, then grayscale, blur and sigma


def _randaugment_draw(u: jax.Array, settings: ViewSettings) -> RandAugmentDraw:
    """A query view's RandAugment choices from its uniforms after the common block."""
    ra_u = u[_COMMON_U : _query_uniforms(settings)].reshape(settings.ra_n, 4)
    return randaugment.randaugment_from_uniforms(ra_u, settings.ra_m, settings.ra_mstd)


def _key_extras(u: jax.Array, settings: ViewSettings) -> tuple[jax.Array, jax.Array, jax.Array]:
    """A key view's grayscale and blur switches and blur sigma, after the common block."""
    lo, hi = settings.blur_sigma
    return (
        u[_COMMON_U] < settings.gray_p,
        u[_COMMON_U + 1] < settings.blur_p,
        lo + u[_COMMON_U + 2] * (hi - lo),
    )


def sample_paired_params(
    query_keys: jax.Array,
    key_keys: jax.Array,
    height: int,
    width: int,
    settings: ViewSettings,
    boxes: jax.Array | None = None,
) -> tuple[QueryParams, KeyParams]:
    """Both views' parameters of a batch, the query's from `query_keys` and the key's from
    `key_keys` (one typed key per example each): the same values as `sample_query_params` and
    `sample_key_params` vmapped over them.

    The two views share their first `_COMMON_U` uniforms' meaning (crop, flip, jitter), so one
    block per example, as long as the longer view needs, is drawn for all 2B examples and the
    common part is computed once: the step compiles one copy of that program instead of two.
    A uniform's value does not depend on how many are drawn with it (partitionable threefry,
    JAX's default), so the values are those of the separate draws.
    """
    m = query_keys.shape[0]
    length = max(_query_uniforms(settings), _KEY_UNIFORMS)
    keys = jnp.concatenate([query_keys, key_keys])
    u = jax.vmap(lambda k: jax.random.uniform(k, (length,), jnp.float32))(keys)
    if boxes is None:
        common = jax.vmap(lambda uu: _crop_flip_jitter(uu, height, width, settings))(u)
    else:
        both = jnp.concatenate([boxes, boxes])
        common = jax.vmap(lambda uu, b: _crop_flip_jitter(uu, height, width, settings, b))(u, both)
    crop, flip, jitter, order = common
    gray, blur, sigma = jax.vmap(lambda uu: _key_extras(uu, settings))(u[m:])
    query = QueryParams(
        crop=crop[:m],
        flip=flip[:m],
        jitter=jitter[:m],
        jitter_order=order[:m],
        randaugment=jax.vmap(lambda uu: _randaugment_draw(uu, settings))(u[:m]),
    )
    key = KeyParams(
        crop=crop[m:],
        flip=flip[m:],
        jitter=jitter[m:],
        jitter_order=order[m:],
        gray=gray,
        blur=blur,
        sigma=sigma,
    )
    return query, key


# ------------------------------------------------------------------------------------------------
# One image's view from its parameters.


def _crop_flip_matrix(crop: jax.Array, flip: jax.Array, out_size: int) -> jax.Array:
    top, left, h, w = (crop[i].astype(jnp.float32) for i in range(4))
    base = geometry.crop_matrix(top, left, h, w, out_size, out_size)
    flip_m = jnp.where(flip, geometry.flip_matrix(out_size), jnp.eye(3, dtype=jnp.float32))
    return base @ flip_m


def query_view_from_params(
    image: jax.Array,
    params: QueryParams,
    out_size: int,
    with_geometry: bool = False,
    saliency_map: jax.Array | None = None,
    map_fill: float = 0.0,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """One image's query view in [0, 1]: one warp (crop, flip, RandAugment geometry), then colour.

    Fill enters at the RandAugment stage whose geometric op brings it in, so it skips the jitter
    and earlier colour ops, as in torchvision (see the package docstring).

    With `with_geometry`, returns (view, geometry): `geometry` is the same warp with no colour
    op at all (the fill in its own colour), what static saliency reads so that its map follows
    the view's geometry and never its colour (docs/method.md section 4).

    With `saliency_map` (H, W) of the image, returns (view, map): the map resampled in the same
    pass as the pixels, `map_fill` wherever a geometric op brings in fill (docs/method.md
    section 4, saliency from the frame).
    """
    geometry.check_image(image)
    if with_geometry and saliency_map is not None:
        raise ValueError("pass either with_geometry or saliency_map, not both")
    ra = params.randaugment
    n = ra.op.shape[0]
    geometric = ra.apply & (ra.op < randaugment.NUM_GEOMETRIC_OPS)
    eye = jnp.eye(3, dtype=jnp.float32)
    if n:
        stages = jax.vmap(randaugment.randaugment_matrix, in_axes=(0, 0, 0, None))(
            ra.op, ra.level, ra.sign, out_size
        )
        stages = jnp.where(geometric[:, None, None], stages, eye)
    else:
        stages = jnp.zeros((0, 3, 3), jnp.float32)
    base = _crop_flip_matrix(params.crop, params.flip, out_size)
    source = image if saliency_map is None else _with_map_channel(image, saliency_map)
    content, outside = geometry.resample_chain(source, base, stages, out_size)
    img = content[..., :3]
    outside = outside & geometric[:, None, None]
    fill = jnp.asarray(randaugment.RANDAUGMENT_FILL, jnp.float32) / 255.0
    # Every geometric stage fills with the same colour, so without colour ops a pixel is fill
    # wherever any stage brings fill in.
    filled = outside.any(axis=0)
    warp_only = jnp.clip(jnp.where(filled[..., None], fill, img), 0.0, 1.0)
    if saliency_map is not None:
        warp_only = jnp.clip(jnp.where(filled, jnp.float32(map_fill), content[..., 3]), 0.0, 1.0)

    def result(view: jax.Array) -> jax.Array | tuple[jax.Array, jax.Array]:
        view = jnp.clip(view, 0.0, 1.0)
        return (view, warp_only) if with_geometry or saliency_map is not None else view

    # The crop canvas torchvision's colour ops see until the first geometric op: global statistics
    # (contrast's mean, equalize's histogram) are taken from it while it is still current.
    canvas = geometry.warp_affine(image, base, out_size)
    img, canvas = colour.color_jitter_with_reference(
        img, params.jitter, params.jitter_order, canvas
    )
    if not n:
        return result(img)
    # later_fill[k]: pixels that a geometric op after stage k fills.
    later = [jnp.zeros_like(outside[0])]
    for k in range(n - 1, 0, -1):
        later.append(later[-1] | outside[k])
    later_fill = jnp.stack(later[::-1])

    def half_stage(carry, xs):
        """Stage k's colour op on the view (`canvas_turn` False), then on the canvas (True).

        One colour op per iteration, 2n iterations: the compiled step holds one copy of the
        colour program instead of one for the view and one for the canvas.
        """
        img, canvas, warped = carry
        canvas_turn, scalars, masks = xs
        op, level = scalars[0].astype(jnp.int32), scalars[1]
        apply, geo = scalars[2] > 0, scalars[3] > 0
        fill_here, fill_later = masks[0], masks[1]
        img = jnp.where(fill_here[..., None] & ~canvas_turn, fill, img)
        # The view's statistics: before any geometric op the crop canvas is current; afterwards
        # the warped canvas minus what later geometric ops fill. The canvas reads its own.
        source = jnp.where(canvas_turn, canvas, img)
        reference = jnp.where(canvas_turn | ~warped, canvas, img)
        mask = canvas_turn | ~warped | ~fill_later
        out = jnp.where(
            apply, randaugment.randaugment_colour(source, op, level, mask, reference), source
        )
        img = jnp.where(canvas_turn, img, out)
        canvas = jnp.where(canvas_turn, out, canvas)
        return (img, canvas, jnp.where(canvas_turn, warped | geo, warped)), None

    # A scan compiles the stage once, whatever n is; each stage runs twice (view, canvas).
    # Each stage's scalars in one float array and its two masks in one boolean array (op ids
    # and flags are exact in float32): two arrays to repeat and move rather than six.
    scalars = jnp.stack(
        [
            ra.op.astype(jnp.float32),
            ra.level,
            ra.apply.astype(jnp.float32),
            geometric.astype(jnp.float32),
        ],
        axis=1,
    )
    masks = jnp.stack([outside, later_fill], axis=1)
    xs = (
        jnp.tile(jnp.array([False, True]), n),
        jnp.repeat(scalars, 2, axis=0),
        jnp.repeat(masks, 2, axis=0),
    )
    (img, _, _), _ = jax.lax.scan(half_stage, (img, canvas, jnp.bool_(False)), xs)
    return result(img)


def _with_map_channel(image: jax.Array, saliency_map: jax.Array) -> jax.Array:
    """The image with its (H, W) saliency map as a fourth channel, so one resampling moves both."""
    if saliency_map.shape != image.shape[:2]:
        raise ValueError(f"saliency_map must be {image.shape[:2]}, got {saliency_map.shape}")
    return jnp.concatenate([image, saliency_map[..., None].astype(image.dtype)], axis=-1)


def _key_unblurred_view(
    image: jax.Array,
    params: KeyParams,
    out_size: int,
    with_geometry: bool = False,
    saliency_map: jax.Array | None = None,
    map_fill: float = 0.0,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """One image's key view before the blur: crop + flip warp, jitter, grayscale (unclipped).

    With `with_geometry`, also the crop + flip warp before any colour op, clipped to [0, 1]; with
    `saliency_map`, that map through the same warp instead (the key view brings in no fill, so
    `map_fill` is unused; it is accepted to share the query view's signature).
    """
    geometry.check_image(image)
    if with_geometry and saliency_map is not None:
        raise ValueError("pass either with_geometry or saliency_map, not both")
    base = _crop_flip_matrix(params.crop, params.flip, out_size)
    source = image if saliency_map is None else _with_map_channel(image, saliency_map)
    content = geometry.warp_affine(source, base, out_size)
    warped = content[..., :3]
    img = colour.color_jitter(warped, params.jitter, params.jitter_order)
    img = jnp.where(params.gray, colour.grayscale(img), img)
    if saliency_map is not None:
        return img, jnp.clip(content[..., 3], 0.0, 1.0)
    return (img, jnp.clip(warped, 0.0, 1.0)) if with_geometry else img


def _key_blur(img: jax.Array, blur: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
    """The key view's random blur of one image, clipped to [0, 1]."""
    return jnp.clip(jnp.where(blur, colour.gaussian_blur(img, sigma, radius), img), 0.0, 1.0)


def key_view_from_params(
    image: jax.Array,
    params: KeyParams,
    out_size: int,
    blur_radius: int,
    with_geometry: bool = False,
    saliency_map: jax.Array | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """One image's key view in [0, 1]: crop + flip warp, jitter, grayscale, blur.

    With `with_geometry`, returns (view, geometry), `geometry` being the crop + flip warp before
    any colour op; with `saliency_map`, (view, the map through that warp) (see
    `query_view_from_params`).
    """
    out = _key_unblurred_view(image, params, out_size, with_geometry, saliency_map)
    if isinstance(out, tuple):
        return _key_blur(out[0], params.blur, params.sigma, blur_radius), out[1]
    return _key_blur(out, params.blur, params.sigma, blur_radius)


def blur_batch(images: jax.Array, params: KeyParams, radius: int) -> jax.Array:
    """`_key_blur` over a (B, M, M, 3) batch, half a batch per pass of a `lax.map`.

    Fused with the colour ops before it, the blur's 2 * (2 * radius + 1) shifted reads make XLA
    recompute those ops per tap (on CPU the key view took 4x longer, benchmarks/README.md); the
    loop boundary makes the blur read a materialised batch, and two passes keep it batched.
    """
    half = max(1, -(-images.shape[0] // 2))
    return jax.lax.map(
        lambda a: _key_blur(a[0], a[1], a[2], radius),
        (images, params.blur, params.sigma),
        batch_size=half,
    )


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


def example_keys(rng: jax.Array, batch: int) -> jax.Array:
    """One typed key per example: split a single key, or take a (B,) batch of keys as given."""
    if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.wrap_key_data(rng)
    if rng.ndim == 0:
        return jax.random.split(rng, batch)
    if rng.shape == (batch,):
        return rng
    raise ValueError(f"rng must be one key or one key per example ({batch},), got {rng.shape}")


def normalize(view01: jax.Array, settings: ViewSettings) -> jax.Array:
    """(view - mean) / std: the model's input scaling, shared by every view."""
    mean = jnp.asarray(settings.mean, jnp.float32)
    return (view01 - mean) / jnp.asarray(settings.std, jnp.float32)


def _random_views(
    rng: jax.Array,
    images_uint8: jax.Array,
    out_size: int,
    settings: ViewSettings,
    sample: Callable[..., Any],
    render: Callable[..., Any],
    with_geometry: bool,
    boxes: jax.Array | None = None,
    finish: Callable[[jax.Array, Any], jax.Array] | None = None,
    maps: jax.Array | None = None,
    map_fill: float = 0.0,
) -> tuple[jax.Array, ...]:
    """Checks the batch, draws per-example parameters, renders them and normalises.

    Returns (view01, normed), plus the geometry-only warp when `with_geometry`, or the warped
    `maps` (B, H, W) when given. `boxes` (B, 4) are the valid regions of padded frames (crops
    stay inside them); None: the whole image. `finish(views, params)`, if given, is a
    batch-level last stage before normalising.
    """
    x, out_size, boxes = _checked_inputs(images_uint8, out_size, boxes)
    b, h, w, _ = x.shape
    keys = example_keys(rng, b)
    if boxes is None:
        params = jax.vmap(lambda k: sample(k, h, w, settings))(keys)
    else:
        params = jax.vmap(lambda k, box: sample(k, h, w, settings, box))(keys, boxes)
    return _render_views(
        x, params, out_size, settings, render, with_geometry, finish, maps, map_fill
    )


def _checked_inputs(
    images_uint8: jax.Array, out_size: int, boxes: jax.Array | None
) -> tuple[jax.Array, int, jax.Array | None]:
    """The batch as float [0, 1], the output size and the (B, 4) int32 boxes, each checked."""
    x = _check_images(images_uint8)
    out_size = _check_out_size(out_size)
    if boxes is None:
        return x, out_size, None
    b = x.shape[0]
    boxes = jnp.asarray(boxes, jnp.int32)
    if boxes.shape != (b, 4):
        raise ValueError(f"boxes must have shape ({b}, 4), got {boxes.shape}")
    return x, out_size, boxes


def _render_views(
    x: jax.Array,
    params: Any,
    out_size: int,
    settings: ViewSettings,
    render: Callable[..., Any],
    with_geometry: bool,
    finish: Callable[[jax.Array, Any], jax.Array] | None,
    maps: jax.Array | None,
    map_fill: float,
) -> tuple[jax.Array, ...]:
    """`_random_views` after the parameters are drawn: render, finish, normalise."""
    b, h, w, _ = x.shape
    if maps is None:
        rendered = jax.vmap(lambda im, p: render(im, p, out_size, with_geometry=with_geometry))(
            x, params
        )
    else:
        if with_geometry:
            raise ValueError("pass either with_geometry or maps, not both")
        maps = jnp.asarray(maps, jnp.float32)
        if maps.shape != (b, h, w):
            raise ValueError(f"maps must have shape ({b}, {h}, {w}), got {maps.shape}")
        rendered = jax.vmap(
            lambda im, p, m: render(im, p, out_size, saliency_map=m, map_fill=map_fill)
        )(x, params, maps)
    view01, *warp_only = rendered if with_geometry or maps is not None else (rendered,)
    if finish is not None:
        view01 = finish(view01, params)
    return (view01, normalize(view01, settings), *warp_only)


def query_view(
    rng: jax.Array,
    images_uint8: jax.Array,
    *,
    out_size: int,
    settings: ViewSettings,
    with_geometry: bool = False,
    boxes: jax.Array | None = None,
    maps: jax.Array | None = None,
    map_fill: float = 0.0,
) -> tuple[jax.Array, ...]:
    """Query views of a uint8 (B, H, W, 3) batch: (view01, normed), float32 (B, M, M, 3).

    With `with_geometry` a third array follows: the same warps without colour ops, for static
    saliency; the views themselves (and the keys they use) do not change. `boxes` (B, 4): each
    frame's valid region, from which the crop is drawn (None: the whole frame). With `maps`
    (B, H, W), one saliency map per frame, the third array is instead each map carried through
    its view's warp, `map_fill` where RandAugment brings in fill (B, M, M).
    """
    return _random_views(
        rng,
        images_uint8,
        out_size,
        settings,
        sample_query_params,
        query_view_from_params,
        with_geometry,
        boxes,
        maps=maps,
        map_fill=map_fill,
    )


def key_view(
    rng: jax.Array,
    images_uint8: jax.Array,
    *,
    out_size: int,
    settings: ViewSettings,
    with_geometry: bool = False,
    boxes: jax.Array | None = None,
    maps: jax.Array | None = None,
    map_fill: float = 0.0,
) -> tuple[jax.Array, ...]:
    """Key views of a uint8 (B, H, W, 3) batch: (view01, normed), float32 (B, M, M, 3).

    The blur radius is static, ceil(3 * sigma_max), so every example shares one kernel size.
    `with_geometry`, `boxes` and `maps` as in `query_view`; a key view brings in no fill, so
    `map_fill` (accepted so that both views take the same arguments) is never used.
    """
    return _random_views(
        rng,
        images_uint8,
        out_size,
        settings,
        sample_key_params,
        _key_unblurred_view,
        with_geometry,
        boxes,
        finish=_key_blur_stage(settings),
        maps=maps,
        map_fill=map_fill,
    )


def _key_blur_stage(settings: ViewSettings) -> Callable[[jax.Array, Any], jax.Array]:
    """The key view's batch-level last stage: its random blur, with a static radius."""
    return functools.partial(blur_batch, radius=colour.blur_radius(settings.blur_sigma[1]))


def query_and_key_views(
    query_rng: jax.Array,
    key_rng: jax.Array,
    images_uint8: jax.Array,
    *,
    out_size: int,
    settings: ViewSettings,
    with_geometry: bool = False,
    boxes: jax.Array | None = None,
    maps: jax.Array | None = None,
    map_fill: float = 0.0,
) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
    """`query_view(query_rng, ...)` and `key_view(key_rng, ...)` of the same batch, as one call.

    The same arrays as the two calls; the parameters of both views are drawn together
    (`sample_paired_params`), which keeps the compiled program smaller. The training step makes
    its views with this.
    """
    x, out_size, boxes = _checked_inputs(images_uint8, out_size, boxes)
    b, h, w, _ = x.shape
    query_params, key_params = sample_paired_params(
        example_keys(query_rng, b), example_keys(key_rng, b), h, w, settings, boxes
    )
    render = functools.partial(
        _render_views,
        x,
        out_size=out_size,
        settings=settings,
        with_geometry=with_geometry,
        maps=maps,
        map_fill=map_fill,
    )
    query = render(query_params, render=query_view_from_params, finish=None)
    key = render(key_params, render=_key_unblurred_view, finish=_key_blur_stage(settings))
    return query, key


def eval_view(images_uint8: jax.Array, *, out_size: int, settings: ViewSettings) -> jax.Array:
    """Evaluation view: short side to out_size * eval_resize_ratio, centre crop, normalise.

    torchvision `Resize(round(out_size * ratio))` + `CenterCrop(out_size)`; the resize is bilinear
    with antialiasing when shrinking (as PIL's BILINEAR resize).
    """
    x = _check_images(images_uint8)
    out_size = _check_out_size(out_size)
    b, h, w, c = x.shape
    short = int(round(out_size * settings.eval_resize_ratio))
    if h <= w:
        new_h, new_w = short, int(short * w / h)
    else:
        new_h, new_w = int(short * h / w), short
    x = jax.image.resize(x, (b, new_h, new_w, c), method="linear", antialias=True)
    top = int(round((new_h - out_size) / 2.0))
    left = int(round((new_w - out_size) / 2.0))
    x = jnp.clip(x[:, top : top + out_size, left : left + out_size], 0.0, 1.0)
    return normalize(x, settings)
