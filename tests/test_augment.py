"""Device-side views (docs/method.md section 3) vs PIL / scipy / a numpy copy of torchvision.

Errors are mean absolute differences in 0-255 units on real HAM10000 images resized to 64 x 64.
PIL rounds or truncates to uint8 after every op and these ops do not, so even exact ports
differ by up to one level per op (a mean of about 0.5).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from scipy import ndimage

from configs import tiny
from configs.common import base_config
from spmix_jax import saliency
from spmix_jax import step as step_lib
from spmix_jax.augment import colour, geometry, randaugment, views

FILL = randaugment.RANDAUGMENT_FILL
FILL01 = np.asarray(FILL, np.float32) / 255.0
OPS = randaugment.RANDAUGMENT_OPS
SIDE = 64


# ------------------------------------------------------------------------------------------------
# Fixtures and helpers.


def _load(ham10000_dir, count, side):
    names = sorted(p.name for p in (ham10000_dir / "images").glob("ISIC_*.jpg"))[:count]
    return [
        Image.open(ham10000_dir / "images" / n).convert("RGB").resize((side, side), Image.BILINEAR)
        for n in names
    ]


@pytest.fixture(scope="module")
def pil_images(ham10000_dir):
    """Three real lesions, host-resized to 64 x 64 as the input pipeline would."""
    return _load(ham10000_dir, 3, SIDE)


@pytest.fixture(scope="module")
def batch_uint8(ham10000_dir):
    """Eight real lesions at 48 x 48, uint8 (B, S, S, 3)."""
    return np.stack([np.asarray(im) for im in _load(ham10000_dir, 8, 48)])


@pytest.fixture(scope="module")
def settings():
    return views.ViewSettings.from_config(base_config().augment)


def to01(im):
    return jnp.asarray(np.asarray(im), jnp.float32) / 255.0


def err255(ours, pil):
    """Absolute differences in 0-255 units."""
    return np.abs(np.asarray(ours, np.float64) * 255.0 - np.asarray(pil, np.float64))


def mae(ours, pil):
    return float(err255(ours, pil).mean())


def pil_affine(im, coeffs):
    return im.transform(im.size, Image.AFFINE, coeffs, resample=Image.BILINEAR, fillcolor=FILL)


def pil_solarize_add(im, add, threshold=128):
    lut = [min(255, i + add) if i < threshold else i for i in range(256)]
    return im.point(lut * 3)


def pil_randaugment_op(im, name, level, sign):
    """timm's RandAugment op at `level` with PIL (bilinear geometry), the op table."""
    f = level / 10.0
    if name == "Rotate":
        return im.rotate(sign * f * 30.0, resample=Image.BILINEAR, fillcolor=FILL)
    if name == "ShearX":
        return pil_affine(im, (1, sign * f * 0.3, 0, 0, 1, 0))
    if name == "ShearY":
        return pil_affine(im, (1, 0, 0, sign * f * 0.3, 1, 0))
    if name == "TranslateXRel":
        return pil_affine(im, (1, 0, sign * f * 0.45 * im.size[0], 0, 1, 0))
    if name == "TranslateYRel":
        return pil_affine(im, (1, 0, 0, 0, 1, sign * f * 0.45 * im.size[1]))
    if name == "PosterizeTpu":
        return ImageOps.posterize(im, int(f * 4))
    if name == "Solarize":
        return ImageOps.solarize(im, int(f * 256))
    if name == "SolarizeAdd":
        return pil_solarize_add(im, int(f * 110))
    enhance = {
        "Color": ImageEnhance.Color,
        "Contrast": ImageEnhance.Contrast,
        "Brightness": ImageEnhance.Brightness,
        "Sharpness": ImageEnhance.Sharpness,
    }
    if name in enhance:
        return enhance[name](im).enhance(f * 1.8 + 0.1)
    if name == "Equalize":
        return ImageOps.equalize(im)
    if name == "Invert":
        return ImageOps.invert(im)
    raise ValueError(name)


JITTER_PIL = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)


def pil_crop_flip_jitter(im, crop, flip, factors, order, size):
    top, left, h, w = crop
    im = im.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    if flip:
        im = ImageOps.mirror(im)
    for op in order:
        im = JITTER_PIL[op](im).enhance(factors[op])
    return im


# ------------------------------------------------------------------------------------------------
# Single ops against PIL.


@pytest.mark.parametrize(
    "ours,pil",
    [
        (colour.brightness, ImageEnhance.Brightness),
        (colour.contrast, ImageEnhance.Contrast),
        (colour.saturation, ImageEnhance.Color),
        (colour.sharpness, ImageEnhance.Sharpness),
    ],
    ids=["brightness", "contrast", "saturation", "sharpness"],
)
def test_enhance_ops_match_pil(pil_images, ours, pil):
    # PIL truncates the blend to uint8 (a mean error near 0.5): stated bound 0.75.
    for im in pil_images:
        for factor in (0.0, 0.4, 1.0, 1.4, 1.9):
            assert mae(ours(to01(im), factor), pil(im).enhance(factor)) <= 0.75, factor


def test_contrast_mask_restricts_the_mean():
    img = jnp.concatenate([jnp.full((4, 8, 3), 0.2), jnp.full((4, 8, 3), 0.8)], axis=0)
    top = jnp.zeros((8, 8), bool).at[:4].set(True)
    # Mean over the top half only is 0.2 (level 51): factor 0 gives that grey everywhere.
    np.testing.assert_allclose(np.asarray(colour.contrast(img, 0.0, top)), 51 / 255, atol=1e-6)
    np.testing.assert_allclose(np.asarray(colour.contrast(img, 0.0)), 128 / 255, atol=1e-6)


def test_level_ops_match_pil_exactly(pil_images):
    # Lookup-table ops on 8-bit levels: identical to PIL (no pixel differs by more than 1e-3).
    posterize, solarize, equalize = (
        jax.jit(colour.posterize),
        jax.jit(colour.solarize),
        jax.jit(colour.equalize),
    )
    solarize_add = jax.jit(colour.solarize_add)
    for im in pil_images:
        x = to01(im)
        cases = [(posterize(x, b), ImageOps.posterize(im, b)) for b in (1, 2, 3, 4, 8)]
        cases += [(solarize(x, t), ImageOps.solarize(im, t)) for t in (0, 128, 243, 256)]
        cases += [(solarize_add(x, a), pil_solarize_add(im, a)) for a in (0, 50, 110)]
        cases += [(solarize_add(x, 30, threshold=200), pil_solarize_add(im, 30, 200))]
        cases += [(colour.invert(x), ImageOps.invert(im)), (equalize(x), ImageOps.equalize(im))]
        mask = np.zeros((SIDE, SIDE), bool)
        mask[10:40, 5:50] = True
        pil_mask = Image.fromarray(mask.astype(np.uint8) * 255, "L")
        cases += [(equalize(x, jnp.asarray(mask)), ImageOps.equalize(im, pil_mask))]
        for ours, pil in cases:
            assert err255(ours, pil).max() <= 1e-3
    # 0 bits (level < 2.5): black, the mask ~(2**8 - 1) of older PIL (current PIL refuses 0).
    assert float(colour.posterize(to01(pil_images[0]), 0).max()) == 0.0


def test_equalize_degenerate_channels_are_unchanged():
    flat = jnp.full((8, 8, 3), 128 / 255)  # an exact 8-bit level
    np.testing.assert_array_equal(np.asarray(colour.equalize(flat)), np.asarray(flat))
    two = flat.at[:4].set(0.0)  # two levels: step = (64 - 32) // 255 = 0 -> identity
    np.testing.assert_allclose(np.asarray(colour.equalize(two)), np.asarray(two), atol=1e-6)


def test_grayscale_matches_pil(pil_images):
    # PIL rounds L to an integer: stated bound 0.75.
    for im in pil_images:
        gray = colour.grayscale(to01(im))
        assert gray.shape == (SIDE, SIDE, 3)
        np.testing.assert_array_equal(np.asarray(gray[..., 0]), np.asarray(gray[..., 2]))
        assert mae(gray[..., 0], im.convert("L")) <= 0.75


def test_gaussian_blur_matches_scipy_and_pil(pil_images):
    for im in pil_images:
        x = to01(im)
        for sigma in (0.1, 0.5, 1.0, 2.0):
            got = np.asarray(colour.gaussian_blur(x, sigma, radius=6))
            want = np.stack(
                [
                    ndimage.gaussian_filter(
                        np.asarray(x[..., c], np.float64), sigma, mode="nearest", truncate=6 / sigma
                    )
                    for c in range(3)
                ],
                axis=-1,
            )
            np.testing.assert_allclose(got, want, atol=1e-5)
            # PIL's GaussianBlur is three box passes: stated bound 1.0.
            assert mae(got, im.filter(ImageFilter.GaussianBlur(sigma))) <= 1.0, sigma
    with pytest.raises(ValueError, match="static `radius`"):
        jax.jit(lambda s: colour.gaussian_blur(jnp.zeros((8, 8, 3)), s))(1.0)


# ------------------------------------------------------------------------------------------------
# Geometry.


def _check_warp(ours, pil, tag):
    # Same sampling positions, interpolation and fill test as PIL: a mean error at the rounding
    # level (stated bound 0.75) and at most 1% of pixels more than 1.5 levels off (fill edges).
    errors = err255(ours, pil)
    assert errors.mean() <= 0.75, tag
    assert (errors.max(axis=-1) > 1.5).mean() <= 0.01, tag


def test_single_warps_match_pil(pil_images):
    warp = jax.jit(geometry.warp_affine, static_argnums=2)
    for im in pil_images:
        x = to01(im)
        for angle in (-25.0, 7.3, 30.0):
            ours = warp(x, geometry.rotate_matrix(angle, SIDE, SIDE), SIDE, FILL01)
            _check_warp(ours, im.rotate(angle, resample=Image.BILINEAR, fillcolor=FILL), angle)
        for f in (-0.27, 0.3):
            _check_warp(
                warp(x, geometry.shear_x_matrix(f), SIDE, FILL01),
                pil_affine(im, (1, f, 0, 0, 1, 0)),
                "shear_x",
            )
            _check_warp(
                warp(x, geometry.shear_y_matrix(f), SIDE, FILL01),
                pil_affine(im, (1, 0, 0, f, 1, 0)),
                "shear_y",
            )
        for t in (-12.7, 10.3):
            _check_warp(
                warp(x, geometry.translate_x_matrix(t), SIDE, FILL01),
                pil_affine(im, (1, 0, t, 0, 1, 0)),
                "translate_x",
            )
            _check_warp(
                warp(x, geometry.translate_y_matrix(t), SIDE, FILL01),
                pil_affine(im, (1, 0, 0, 0, 1, t)),
                "translate_y",
            )
        np.testing.assert_allclose(
            np.asarray(warp(x, geometry.flip_matrix(SIDE), SIDE)) * 255,
            np.asarray(ImageOps.mirror(im), np.float64),
            atol=1e-3,
        )
        # Crop + resize (upsampling 30 x 40 -> 64 x 48): PIL resize with a box.
        ours = warp(x, geometry.crop_matrix(10, 5, 30, 40, 64, 48), (64, 48))
        _check_warp(ours, im.resize((48, 64), Image.BILINEAR, box=(5, 10, 45, 40)), "crop")


def test_composed_warp_equals_sequential_warps(pil_images):
    """crop + flip + rotate + shear + translate resampled once == one PIL warp after another."""
    size = 64
    crop = (6, 9, 44, 40)
    rot, shear, shift = -20.0, 0.2, 9.5
    for im in pil_images:
        seq = im.resize((size, size), Image.BILINEAR, box=(9, 6, 49, 50))
        seq = ImageOps.mirror(seq)
        seq = seq.rotate(rot, resample=Image.BILINEAR, fillcolor=FILL)
        seq = pil_affine(seq, (1, shear, 0, 0, 1, 0))
        seq = pil_affine(seq, (1, 0, shift, 0, 1, 0))
        seq = np.asarray(seq, np.float64)

        base = geometry.crop_matrix(*crop, size, size) @ geometry.flip_matrix(size)
        stages = jnp.stack(
            [
                geometry.rotate_matrix(rot, size, size),
                geometry.shear_x_matrix(shear),
                geometry.translate_x_matrix(shift),
            ]
        )
        content, outside = geometry.resample_chain(to01(im), base, stages, size)
        once = content
        for k in range(3):
            once = jnp.where(outside[k][..., None], FILL01, once)
        once = np.asarray(once, np.float64) * 255

        fill_once = np.asarray(jnp.any(outside, axis=0))
        fill_seq = np.all(seq == np.asarray(FILL), axis=-1)
        assert 0.1 < fill_once.mean() < 0.6  # the chain really brings in fill
        # Sequential warps blend fill into content along each fill edge, so the two fill masks
        # may differ only in a thin band at the edge of the fill.
        disagree = fill_once != fill_seq
        edge = fill_once ^ ndimage.binary_erosion(fill_once, border_value=1)
        assert disagree.mean() <= 0.03
        assert not (disagree & ~ndimage.binary_dilation(edge, iterations=2)).any()
        # Away (2 px) from the fill boundary, the difference is interpolation error: bound 3.
        near_fill = ndimage.binary_dilation(fill_once | fill_seq, iterations=2)
        assert np.abs(once - seq)[~near_fill].mean() <= 3.0
        np.testing.assert_allclose(once[fill_once], np.tile(FILL, (fill_once.sum(), 1)), atol=1e-3)

        # The same against this module's own warps applied one by one.
        step = geometry.warp_affine(to01(im), base, size)
        for k in range(3):
            step = geometry.warp_affine(step, stages[k], size, FILL01)
        step = np.asarray(step, np.float64) * 255
        assert np.abs(once - step)[~near_fill].mean() <= 3.0


def test_randaugment_matrix_follows_the_op_table():
    size = 40
    level, sign = 7.3, -1.0
    f = level / 10 * sign
    want = [
        geometry.rotate_matrix(f * 30, size, size),
        geometry.shear_x_matrix(f * 0.3),
        geometry.shear_y_matrix(f * 0.3),
        geometry.translate_x_matrix(f * 0.45 * size),
        geometry.translate_y_matrix(f * 0.45 * size),
    ]
    for op in range(len(OPS)):
        got = randaugment.randaugment_matrix(op, level, sign, size)
        expected = want[op] if op < randaugment.NUM_GEOMETRIC_OPS else jnp.eye(3)
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-6)
    # Hand case: rotating a 40-px canvas by 90 degrees maps output (x, y) to (40 - y, x).
    m = np.asarray(geometry.rotate_matrix(90.0, size, size))
    np.testing.assert_allclose(m @ [10.0, 3.0, 1.0], [37.0, 10.0, 1.0], atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Colour passes.


def test_randaugment_colour_equals_the_single_ops(pil_images):
    x = to01(pil_images[0])  # exact 8-bit levels
    level = 7.3
    factor = 0.73 * 1.8 + 0.1
    want = {
        "PosterizeTpu": colour.posterize(x, 2),
        "Solarize": colour.solarize(x, 186),
        "SolarizeAdd": colour.solarize_add(x, 80),
        "Color": colour.saturation(x, factor),
        "Contrast": colour.contrast(x, factor),
        "Brightness": colour.brightness(x, factor),
        "Sharpness": colour.sharpness(x, factor),
        "Equalize": colour.equalize(x),
        "Invert": colour.invert(x),
    }
    fused = jax.jit(randaugment.randaugment_colour)
    for op, name in enumerate(OPS):
        expected = want.get(name, x)  # geometric ops: unchanged in the colour pass
        np.testing.assert_allclose(
            np.asarray(fused(x, op, level)), np.asarray(expected), atol=1e-5, err_msg=name
        )
    # Level 10 as the op table says: posterize keeps 4 bits, solarize changes nothing.
    np.testing.assert_allclose(np.asarray(fused(x, OPS.index("Solarize"), 10.0)), np.asarray(x))
    np.testing.assert_allclose(
        np.asarray(fused(x, OPS.index("PosterizeTpu"), 10.0)), np.asarray(colour.posterize(x, 4))
    )


def test_color_jitter_matches_pil_in_every_order(pil_images):
    # Three truncating PIL blends in a row: stated bound 1.5.
    factors = (1.3, 0.7, 1.2)
    jitter = jax.jit(colour.color_jitter)
    for im in pil_images:
        for order in [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]:
            pil = im
            for op in order:
                pil = JITTER_PIL[op](pil).enhance(factors[op])
            ours = jitter(to01(im), jnp.array(factors), jnp.array(order))
            assert mae(ours, pil) <= 1.5, order


# ------------------------------------------------------------------------------------------------
# Whole views from explicit parameters against the torchvision + timm chain in PIL.

QUERY_CASES = [
    ((8, 4, 40, 48), True, (1.3, 0.7, 1.2), (2, 0, 1), [("Contrast", 9.0, 1), ("Rotate", 8.0, -1)]),
    ((8, 4, 40, 48), False, (0.8, 1.3, 0.7), (0, 1, 2), [("Rotate", 9.5, 1), ("Equalize", 9.0, 1)]),
    (
        (0, 0, 64, 64),
        True,
        (1.0, 1.0, 1.0),
        (0, 1, 2),
        [("ShearX", 10, 1), ("TranslateYRel", 7, -1)],
    ),
    ((10, 12, 30, 30), False, (1.1, 0.9, 1.3), (1, 2, 0), [("ShearY", 9, -1), ("Solarize", 8, 1)]),
    (
        (10, 12, 30, 30),
        True,
        (1.1, 0.9, 1.3),
        (1, 2, 0),
        [("PosterizeTpu", 9, 1), ("Invert", 9, 1)],
    ),
    (
        (5, 5, 50, 50),
        True,
        (1.2, 0.6, 1.4),
        (2, 1, 0),
        [("Sharpness", 9, 1), ("TranslateXRel", 9, 1)],
    ),
    (
        (5, 5, 50, 50),
        False,
        (1.2, 0.6, 1.4),
        (0, 2, 1),
        [("SolarizeAdd", 9, 1), ("Brightness", 9, 1)],
    ),
    ((3, 7, 56, 52), False, (0.9, 1.1, 0.8), (1, 0, 2), [("Color", 9, 1), ("Rotate", 10, 1)]),
]


@pytest.mark.parametrize("applied", [True, False], ids=["applied", "skipped"])
def test_query_view_from_params_matches_torchvision_chain(pil_images, applied):
    """RRC + flip + jitter + RandAugment, resampled once, vs PIL one op after another.

    Interpolation differs (one bilinear sample vs resize then per-op warps) and PIL rounds after
    every op: stated bound 3 levels mean error over the whole view, fill included.
    """
    view = jax.jit(views.query_view_from_params, static_argnums=2)
    for crop, flip, factors, order, ops in QUERY_CASES:
        params = views.QueryParams(
            crop=jnp.array(crop, jnp.int32),
            flip=jnp.array(flip),
            jitter=jnp.array(factors, jnp.float32),
            jitter_order=jnp.array(order, jnp.int32),
            randaugment=randaugment.RandAugmentDraw(
                op=jnp.array([OPS.index(o[0]) for o in ops], jnp.int32),
                apply=jnp.array([applied] * len(ops)),
                level=jnp.array([o[1] for o in ops], jnp.float32),
                sign=jnp.array([o[2] for o in ops], jnp.float32),
            ),
        )
        for im in pil_images[:2]:
            pil = pil_crop_flip_jitter(im, crop, flip, factors, order, SIDE)
            if applied:
                for name, level, sign in ops:
                    pil = pil_randaugment_op(pil, name, level, sign)
            ours = view(to01(im), params, SIDE)
            assert float(ours.min()) >= 0.0 and float(ours.max()) <= 1.0
            assert mae(ours, pil) <= 3.0, ops
            if applied and ops[-1][0] in OPS[: randaugment.NUM_GEOMETRIC_OPS]:
                # The last op brings in fill: PIL's fill pixels hold the exact fill colour (no
                # jitter, no earlier colour op); ours too, but for the blended edge band.
                pil_fill = np.all(np.asarray(pil) == np.asarray(FILL), axis=-1)
                ours_fill = np.all(np.abs(np.asarray(ours) - FILL01) < 1e-6, axis=-1)
                assert pil_fill.mean() > 0.05
                assert ours_fill[pil_fill].mean() >= 0.97, ops


def test_key_view_from_params_matches_pil_chain(pil_images):
    """RRC + flip + jitter + grayscale + blur vs PIL/torchvision: stated bound 2 levels."""
    view = jax.jit(views.key_view_from_params, static_argnums=(2, 3))
    cases = [
        ((8, 4, 40, 48), True, (1.3, 0.7, 1.2), (2, 0, 1), True, True, 1.7),
        ((0, 0, 64, 64), False, (0.7, 1.4, 0.6), (1, 0, 2), False, True, 0.4),
        ((20, 10, 30, 44), True, (1.0, 1.2, 1.0), (0, 2, 1), True, False, 1.0),
    ]
    for crop, flip, factors, order, gray, blur, sigma in cases:
        params = views.KeyParams(
            crop=jnp.array(crop, jnp.int32),
            flip=jnp.array(flip),
            jitter=jnp.array(factors, jnp.float32),
            jitter_order=jnp.array(order, jnp.int32),
            gray=jnp.array(gray),
            blur=jnp.array(blur),
            sigma=jnp.array(sigma, jnp.float32),
        )
        for im in pil_images:
            pil = pil_crop_flip_jitter(im, crop, flip, factors, order, SIDE)
            if gray:
                pil = pil.convert("L").convert("RGB")
            if blur:
                pil = pil.filter(ImageFilter.GaussianBlur(sigma))
            assert mae(view(to01(im), params, SIDE, 6), pil) <= 2.0


# ------------------------------------------------------------------------------------------------
# The geometry-only warp that static saliency reads (docs/method.md section 4).


def _query_params(jitter, order, ops, applied):
    return views.QueryParams(
        crop=jnp.array((6, 3, 44, 50), jnp.int32),
        flip=jnp.array(True),
        jitter=jnp.array(jitter, jnp.float32),
        jitter_order=jnp.array(order, jnp.int32),
        randaugment=randaugment.RandAugmentDraw(
            op=jnp.array([OPS.index(o[0]) for o in ops], jnp.int32),
            apply=jnp.array(applied),
            level=jnp.array([o[1] for o in ops], jnp.float32),
            sign=jnp.array([o[2] for o in ops], jnp.float32),
        ),
    )


def _key_params(jitter, order, gray, blur):
    return views.KeyParams(
        crop=jnp.array((6, 3, 44, 50), jnp.int32),
        flip=jnp.array(True),
        jitter=jnp.array(jitter, jnp.float32),
        jitter_order=jnp.array(order, jnp.int32),
        gray=jnp.array(gray),
        blur=jnp.array(blur),
        sigma=jnp.array(1.5, jnp.float32),
    )


def _saliency_of_view(method, view01, geometry01):
    """The step's saliency of one view (batch of one), as `step.saliency_maps` computes it."""
    config = tiny.get_config()
    config.saliency.method = method
    view = step_lib.View(view01[None], view01[None], geometry01[None])
    labels = {"primary_label": jnp.zeros((1,), jnp.int32)}
    return np.asarray(
        step_lib.saliency_maps({"primary_q": view}, labels, config, None)["primary_q"]
    )


@pytest.mark.parametrize("method", ["fine_grained", "spectral_residual"])
def test_static_saliency_follows_the_geometry_never_the_colour(pil_images, method):
    """Two query views and two key views that differ only in colour parameters: different
    pixels, the same geometry-only warp, and the same saliency, equal to the warp's saliency."""
    image = to01(pil_images[0])
    query = jax.jit(views.query_view_from_params, static_argnums=(2, 3))
    rotate = ("Rotate", 8.0, -1)
    variants = [
        _query_params((1.3, 0.7, 1.2), (2, 0, 1), [rotate, ("Solarize", 6.0, 1)], [True, True]),
        _query_params((0.7, 1.4, 0.6), (0, 1, 2), [rotate, ("Invert", 9.0, 1)], [True, True]),
    ]
    # The same geometry with no colour op: jitter factors 1 and the colour op skipped.
    neutral = _query_params((1.0, 1.0, 1.0), (0, 1, 2), [rotate, ("Invert", 9.0, 1)], [True, False])
    (view_a, geo_a), (view_b, geo_b) = (query(image, p, SIDE, True) for p in variants)
    plain = query(image, neutral, SIDE)
    assert float(jnp.abs(view_a - view_b).mean()) > 0.1  # the colours really differ
    np.testing.assert_array_equal(np.asarray(geo_a), np.asarray(geo_b))
    np.testing.assert_allclose(np.asarray(geo_a), np.asarray(plain), atol=1e-5)
    # The rotation's fill keeps its own colour in the warp.
    is_fill = np.all(np.abs(np.asarray(geo_a) - FILL01) < 1e-6, axis=-1)
    assert is_fill.mean() > 0.02
    np.testing.assert_array_equal(np.asarray(query(image, variants[0], SIDE)), np.asarray(view_a))

    key = jax.jit(views.key_view_from_params, static_argnums=(2, 3, 4))
    key_a, key_geo_a = key(
        image, _key_params((1.3, 0.7, 1.2), (2, 0, 1), True, True), SIDE, 5, True
    )
    key_b, key_geo_b = key(
        image, _key_params((0.7, 1.4, 0.6), (1, 0, 2), False, False), SIDE, 5, True
    )
    assert float(jnp.abs(key_a - key_b).mean()) > 0.05
    np.testing.assert_array_equal(np.asarray(key_geo_a), np.asarray(key_geo_b))
    warp = geometry.warp_affine(
        image, views._crop_flip_matrix(jnp.array((6, 3, 44, 50)), jnp.array(True), SIDE), SIDE
    )
    np.testing.assert_allclose(np.asarray(key_geo_a), np.clip(np.asarray(warp), 0, 1), atol=1e-7)

    for (va, ga), (vb, gb) in (
        ((view_a, geo_a), (view_b, geo_b)),
        ((key_a, key_geo_a), (key_b, key_geo_b)),
    ):
        sal_a = _saliency_of_view(method, va, ga)
        sal_b = _saliency_of_view(method, vb, gb)
        np.testing.assert_array_equal(sal_a, sal_b)
        np.testing.assert_array_equal(sal_a, np.asarray(saliency.compute(method, ga[None])))
        # Read from the coloured views instead, the maps would differ.
        coloured = [np.asarray(saliency.compute(method, v[None])) for v in (va, vb)]
        assert np.abs(coloured[0] - coloured[1]).max() > 0.05


def test_views_with_geometry_leave_the_views_unchanged(batch_uint8, settings, jitted_views):
    """Asking for the warp changes neither the views nor the keys they draw."""
    for fn, ref in zip((views.query_view, views.key_view), jitted_views, strict=True):
        step = jax.jit(functools.partial(fn, out_size=32, settings=settings, with_geometry=True))
        view01, normed, warp_only = step(jax.random.key(7), batch_uint8)
        want01, want_normed = ref(jax.random.key(7), batch_uint8)
        np.testing.assert_array_equal(np.asarray(view01), np.asarray(want01))
        np.testing.assert_array_equal(np.asarray(normed), np.asarray(want_normed))
        assert warp_only.shape == view01.shape
        assert float(warp_only.min()) >= 0.0 and float(warp_only.max()) <= 1.0


# ------------------------------------------------------------------------------------------------
# Parameter sampling.


def torchvision_crop(uniforms, height, width, scale, ratio):
    """torchvision RandomResizedCrop.get_params, its random numbers replaced by `uniforms`."""
    area = height * width
    log_ratio = (np.log(ratio[0]), np.log(ratio[1]))
    for u in np.asarray(uniforms, np.float64):
        target_area = area * (scale[0] + u[0] * (scale[1] - scale[0]))
        aspect = np.exp(log_ratio[0] + u[1] * (log_ratio[1] - log_ratio[0]))
        w = int(round(np.sqrt(target_area * aspect)))
        h = int(round(np.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(u[2] * (height - h + 1)), int(u[3] * (width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize(
    "height,width,scale,ratio",
    [
        (64, 64, (0.08, 1.0), (3 / 4, 4 / 3)),
        (48, 80, (0.08, 1.0), (3 / 4, 4 / 3)),
        (64, 64, (0.9, 1.0), (0.2, 5.0)),  # many attempts fail
        (40, 100, (1.5, 2.0), (3 / 4, 4 / 3)),  # every attempt fails: wide fallback
        (100, 40, (1.5, 2.0), (3 / 4, 4 / 3)),  # tall fallback
    ],
)
def test_crop_params_match_torchvision(height, width, scale, ratio):
    uniforms = np.random.default_rng(0).random((300, views.CROP_ATTEMPTS, 4)).astype(np.float32)
    got = np.asarray(
        jax.jit(
            jax.vmap(lambda u: views.crop_params_from_uniforms(u, height, width, scale, ratio))
        )(uniforms)
    )
    want = np.array([torchvision_crop(u, height, width, scale, ratio) for u in uniforms])
    # float32 vs float64 can round a .5 differently: at most 1% of draws may differ.
    assert (got != want).any(axis=1).mean() <= 0.01
    top, left, h, w = got.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all() and (h > 0).all()


@pytest.mark.parametrize(
    "box,scale,ratio",
    [
        ((0, 10, 48, 48), (0.08, 1.0), (3 / 4, 4 / 3)),  # a square image padded in a 48 x 68 frame
        ((4, 0, 40, 68), (0.08, 1.0), (3 / 4, 4 / 3)),
        ((0, 10, 48, 48), (1.5, 2.0), (3 / 4, 4 / 3)),  # every attempt fails: the box's fallback
        ((0, 10, 48, 20), (1.5, 2.0), (3 / 4, 4 / 3)),  # tall fallback inside the box
    ],
)
def test_crop_params_in_a_valid_box_match_torchvision_on_the_box(box, scale, ratio):
    """In a padded frame the crop is torchvision's on the valid region, shifted into the frame:
    area fractions of the image itself, and never a padded pixel."""
    top0, left0, height, width = box
    uniforms = np.random.default_rng(1).random((300, views.CROP_ATTEMPTS, 4)).astype(np.float32)
    crop = jax.jit(
        jax.vmap(lambda u: views.crop_params_from_uniforms(u, 48, 68, scale, ratio, jnp.array(box)))
    )
    got = np.asarray(crop(uniforms))
    want = np.array([torchvision_crop(u, height, width, scale, ratio) for u in uniforms])
    want[:, 0] += top0
    want[:, 1] += left0
    assert (got != want).any(axis=1).mean() <= 0.01
    top, left, h, w = got.T
    assert (top >= top0).all() and (left >= left0).all() and (h > 0).all()
    assert (top + h <= top0 + height).all() and (left + w <= left0 + width).all()


def test_views_never_show_the_padding_of_a_frame(batch_uint8, settings):
    """Frames padded with magenta outside their box: no view, nor its warp, contains magenta."""
    frames = np.zeros((8, 48, 68, 3), np.uint8)
    frames[...] = (255, 0, 255)
    frames[:, :, 10:58] = batch_uint8
    boxes = np.tile(np.array([0, 10, 48, 48], np.int32), (8, 1))
    magenta = np.array([1.0, 0.0, 1.0], np.float32)
    for fn in (views.query_view, views.key_view):
        make = jax.jit(functools.partial(fn, out_size=32, settings=settings, with_geometry=True))
        for seed in range(3):
            _, _, warp_only = make(jax.random.key(seed), frames, boxes=boxes)
            close = np.abs(np.asarray(warp_only) - magenta).max(axis=-1) < 0.2
            assert not close.any()
    # Without the boxes the crops do reach into the padding.
    make = jax.jit(
        functools.partial(views.key_view, out_size=32, settings=settings, with_geometry=True)
    )
    _, _, warp_only = make(jax.random.key(0), frames)
    assert (np.abs(np.asarray(warp_only) - magenta).max(axis=-1) < 0.2).any()


def test_randaugment_sampling_statistics():
    n_draws = 4000
    keys = jax.random.split(jax.random.key(1), n_draws)
    draw = jax.jit(
        jax.vmap(
            lambda k: randaugment.randaugment_from_uniforms(
                jax.random.uniform(k, (2, 4), jnp.float32), 10.0, 0.5
            )
        )
    )(keys)
    op, apply, level, sign = (np.asarray(a) for a in draw)
    assert op.shape == (n_draws, 2)
    freq = np.bincount(op.ravel(), minlength=14) / op.size
    assert freq.shape == (14,) and np.all(np.abs(freq - 1 / 14) < 0.015)  # ~5 sigma
    # With replacement: both slots hold the same op about 1/14 of the time.
    assert abs((op[:, 0] == op[:, 1]).mean() - 1 / 14) < 0.02
    assert abs(apply.mean() - 0.5) < 0.03
    assert level.min() >= 0.0 and level.max() <= 10.0
    # E[min(N(10, 0.5), 10)] = 10 - 0.5 * phi(0) = 9.8005; about half the draws clip to 10.
    assert abs(level.mean() - (10 - 0.5 / np.sqrt(2 * np.pi))) < 0.02
    assert abs((level == 10.0).mean() - 0.5) < 0.03
    assert set(np.unique(sign)) == {-1.0, 1.0} and abs((sign > 0).mean() - 0.5) < 0.03
    # The level's normal draw is the inverse CDF of a uniform: u = 0.5 gives exactly m.
    fixed = randaugment.randaugment_from_uniforms(jnp.array([[0.99, 0.1, 0.5, 0.7]]), 9.0, 0.5)
    assert int(fixed.op[0]) == 13 and bool(fixed.apply[0]) and float(fixed.sign[0]) == 1.0
    np.testing.assert_allclose(float(fixed.level[0]), 9.0, atol=1e-5)


def test_view_parameter_statistics(settings):
    keys = jax.random.split(jax.random.key(2), 3000)
    kp = jax.jit(jax.vmap(lambda k: views.sample_key_params(k, 48, 48, settings)))(keys)
    assert abs(float(kp.gray.mean()) - 0.2) < 0.03
    assert abs(float(kp.blur.mean()) - 0.5) < 0.03
    assert abs(float(kp.flip.mean()) - 0.5) < 0.03
    sigma = np.asarray(kp.sigma)
    assert sigma.min() >= 0.1 and sigma.max() <= 2.0 and abs(sigma.mean() - 1.05) < 0.05
    jitter = np.asarray(kp.jitter)
    assert jitter.min() >= 0.6 and jitter.max() <= 1.4 and abs(jitter.mean() - 1.0) < 0.02
    order = np.asarray(kp.jitter_order)
    np.testing.assert_array_equal(np.sort(order, axis=1), np.tile([0, 1, 2], (3000, 1)))
    assert len({tuple(o) for o in order}) == 6  # every order occurs
    qp = jax.jit(jax.vmap(lambda k: views.sample_query_params(k, 48, 48, settings)))(keys)
    assert qp.randaugment.op.shape == (3000, settings.ra_n)
    area = np.asarray(qp.crop[:, 2] * qp.crop[:, 3]) / 48**2
    # The same distribution as torchvision's loop on independent uniforms.
    uniforms = np.random.default_rng(3).random((3000, views.CROP_ATTEMPTS, 4))
    ref = np.array([torchvision_crop(u, 48, 48, settings.scale, settings.ratio) for u in uniforms])
    ref_area = ref[:, 2] * ref[:, 3] / 48**2
    assert area.min() >= 0.07 and area.max() <= 1.0
    assert abs(area.mean() - ref_area.mean()) < 0.02  # std of each mean ~0.005
    assert abs(np.median(area) - np.median(ref_area)) < 0.03


# ------------------------------------------------------------------------------------------------
# Batched API.


@pytest.fixture(scope="module")
def jitted_views(settings):
    """Jitted views with the shapes used across tests (one compile each)."""
    query = jax.jit(functools.partial(views.query_view, out_size=32, settings=settings))
    key = jax.jit(functools.partial(views.key_view, out_size=32, settings=settings))
    return query, key


def test_views_shapes_ranges_and_normalisation(batch_uint8, settings, jitted_views):
    mean, std = np.asarray(settings.mean), np.asarray(settings.std)
    for fn in jitted_views:
        view01, normed = fn(jax.random.key(0), batch_uint8)
        assert view01.shape == normed.shape == (8, 32, 32, 3)
        assert view01.dtype == normed.dtype == jnp.float32
        assert float(view01.min()) >= 0.0 and float(view01.max()) <= 1.0
        np.testing.assert_allclose(
            np.asarray(normed), (np.asarray(view01) - mean) / std, rtol=1e-5, atol=1e-5
        )
        assert np.isfinite(np.asarray(normed)).all()


@pytest.mark.parametrize("batch", [8, 5], ids=["even", "odd"])
def test_batched_key_view_equals_the_per_image_view(batch_uint8, settings, batch):
    """The batch path (colour under vmap, blur in a lax.map) renders what the per-image
    function renders from the same parameters, blur or not, for even and odd batches."""
    images = batch_uint8[:batch]
    rng = jax.random.key(3)
    view01, normed, warp = views.key_view(
        rng, images, out_size=32, settings=settings, with_geometry=True
    )
    keys = jax.random.split(rng, batch)
    x = images.astype(np.float32) / 255.0
    radius = colour.blur_radius(settings.blur_sigma[1])
    blurred = 0
    for i in range(batch):
        params = views.sample_key_params(keys[i], 48, 48, settings)
        blurred += bool(params.blur)
        want, want_warp = views.key_view_from_params(x[i], params, 32, radius, True)
        np.testing.assert_allclose(np.asarray(view01[i]), np.asarray(want), atol=1e-6)
        np.testing.assert_array_equal(np.asarray(warp[i]), np.asarray(want_warp))
    np.testing.assert_allclose(
        np.asarray(normed), np.asarray(views.normalize(view01, settings)), atol=1e-6
    )
    assert 0 < blurred < batch  # both branches of the random blur are exercised


@pytest.mark.parametrize("carry", ["geometry", "maps"])
def test_query_and_key_views_in_one_call_equal_the_separate_calls(batch_uint8, settings, carry):
    """The step's one call for both views (parameters drawn together, `sample_paired_params`)
    gives exactly the arrays of `query_view` and `key_view` called apart, inside padded-frame
    boxes and with each frame's map carried through its warp."""
    rng_q, rng_k = jax.random.split(jax.random.key(11))
    boxes = jnp.array([[0, 0, 48, 48], [4, 0, 40, 48], [0, 6, 48, 36], [2, 3, 44, 40]] * 2)
    maps = jax.random.uniform(jax.random.key(12), (8, 48, 48))
    extra = {"maps": maps, "map_fill": 0.25} if carry == "maps" else {"with_geometry": True}
    kw = dict(out_size=32, settings=settings, boxes=boxes, **extra)
    query, key = jax.jit(functools.partial(views.query_and_key_views, **kw))(
        rng_q, rng_k, batch_uint8
    )
    want_q = jax.jit(functools.partial(views.query_view, **kw))(rng_q, batch_uint8)
    want_k = jax.jit(functools.partial(views.key_view, **kw))(rng_k, batch_uint8)
    assert len(query) == len(want_q) == len(key) == len(want_k) == 3
    for got, want in zip((*query, *key), (*want_q, *want_k), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # The paired parameters are those of the per-view draws, field by field.
    keys_q = jax.random.split(rng_q, 8)
    keys_k = jax.random.split(rng_k, 8)
    qp, kp = views.sample_paired_params(keys_q, keys_k, 48, 48, settings, boxes)
    for got, sample, keys in (
        (qp, views.sample_query_params, keys_q),
        (kp, views.sample_key_params, keys_k),
    ):
        want = jax.vmap(functools.partial(sample, height=48, width=48, settings=settings))(
            keys, box=boxes
        )
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_views_deterministic_per_key_and_different_across_examples(batch_uint8, jitted_views):
    same = np.repeat(batch_uint8[:1], 8, axis=0)  # one image eight times
    for fn in jitted_views:
        a, _ = fn(jax.random.key(5), batch_uint8)
        b, _ = fn(jax.random.key(5), batch_uint8)
        c, _ = fn(jax.random.key(6), batch_uint8)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert np.abs(np.asarray(a) - np.asarray(c)).mean() > 0.01
        v = np.asarray(fn(jax.random.key(5), same)[0])
        diffs = [np.abs(v[i] - v[j]).mean() for i in range(8) for j in range(i + 1, 8)]
        assert min(diffs) > 1e-3


def test_query_view_brings_in_the_fill_colour(batch_uint8, jitted_views):
    # Over many examples some RandAugment geometry applies: exact fill pixels must appear
    # (about a third of the views have a geometric op, each covering part of the canvas).
    view01 = np.asarray(jitted_views[0](jax.random.key(11), batch_uint8)[0])
    for k in (12, 13, 14):
        view01 = np.concatenate(
            [view01, np.asarray(jitted_views[0](jax.random.key(k), batch_uint8)[0])]
        )
    is_fill = np.all(np.abs(view01 - FILL01) < 1e-6, axis=-1)
    assert 0.001 < is_fill.mean() < 0.3
    # Key views never carry the fill.
    key01 = np.asarray(jitted_views[1](jax.random.key(11), batch_uint8)[0])
    assert not np.all(np.abs(key01 - FILL01) < 1e-6, axis=-1).any()


def test_eval_view_matches_pil_resize_and_centre_crop(ham10000_dir, settings):
    """Short side to round(48 * 256 / 224) = 55 (antialiased shrink), centre crop 48."""
    mean, std = np.asarray(settings.mean), np.asarray(settings.std)
    for h, w in ((64, 64), (48, 64)):
        ims = [im.resize((w, h), Image.BILINEAR) for im in _load(ham10000_dir, 2, SIDE)]
        got = views.eval_view(
            np.stack([np.asarray(im) for im in ims]), out_size=48, settings=settings
        )
        assert got.shape == (2, 48, 48, 3)
        got01 = np.asarray(got) * std + mean
        for i, im in enumerate(ims):
            nh, nw = (55, int(55 * w / h)) if h <= w else (int(55 * h / w), 55)
            ref = im.resize((nw, nh), Image.BILINEAR)
            top, left = int(round((nh - 48) / 2.0)), int(round((nw - 48) / 2.0))
            ref = ref.crop((left, top, left + 48, top + 48))
            # PIL resamples in fixed point with uint8 rounding: stated bound 1.0.
            assert mae(got01[i], ref) <= 1.0, (h, w)


def test_bad_inputs_are_refused(batch_uint8, settings):
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="uint8"):
        views.query_view(key, batch_uint8.astype(np.float32), out_size=32, settings=settings)
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        views.key_view(key, batch_uint8[0], out_size=32, settings=settings)
    with pytest.raises(ValueError, match="out_size"):
        views.eval_view(batch_uint8, out_size=0, settings=settings)
    with pytest.raises(ValueError, match="one key per example"):
        views.query_view(jax.random.split(key, 3), batch_uint8, out_size=32, settings=settings)


def test_views_jit_on_a_batch_sharded_over_8_devices(batch_uint8, settings, jitted_views):
    """Sharded batch and per-example keys give the same views as the single-device call."""
    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded = NamedSharding(mesh, P("data"))
    images = jax.device_put(batch_uint8, sharded)
    keys = jax.device_put(jax.random.split(jax.random.key(3), 8), sharded)
    for fn, ref in zip((views.query_view, views.key_view), jitted_views, strict=True):
        step = jax.jit(
            functools.partial(fn, out_size=32, settings=settings),
            out_shardings=(sharded, sharded),
        )
        view01, normed = step(keys, images)
        assert len(view01.sharding.device_set) == 8
        assert view01.addressable_shards[0].data.shape == (1, 32, 32, 3)
        want01, want_normed = ref(jax.random.key(3), batch_uint8)
        np.testing.assert_allclose(np.asarray(view01), np.asarray(want01), atol=1e-5)
        np.testing.assert_allclose(np.asarray(normed), np.asarray(want_normed), atol=1e-4)
