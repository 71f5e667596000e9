"""Saliency from the stored frame, carried through each view's warp (docs/method.md section 4).

References: the fill value worked by hand and by PIL; each carried map against a numpy warp of
the frame's map with the parameters the view drew (float64 matrices, bilinear with clamped
edges, fill wherever a geometric stage leaves the canvas); `saliency.source=view` against maps
saved from the per-view code before `frame` existed (tests/fixtures/view_saliency.npz).
"""

from __future__ import annotations

import functools
import pathlib

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import tiny
from spmix_jax import augment, saliency, saliency_source
from spmix_jax import step as step_lib
from spmix_jax.augment import randaugment, views

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "view_saliency.npz"
SIZE = 16  # the views' side, as in the fixture


@pytest.fixture(scope="module")
def saved():
    with np.load(FIXTURE) as f:
        return {k: f[k] for k in f.files}


def _batch(saved) -> dict[str, jax.Array]:
    return {k[len("batch_") :]: jnp.asarray(v) for k, v in saved.items() if k.startswith("batch_")}


def _score_fn(saved):
    """A fixed nonlinear scorer: gradient saliency without depending on any model's init."""
    w1, w2 = jnp.asarray(saved["w1"]), jnp.asarray(saved["w2"])
    return lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2


def _config(method: str, source: str, fill: str = "released"):
    config = tiny.get_config()
    config.saliency.method = method
    config.saliency.source = source
    config.saliency.fill = fill
    return config


def _saliency_phase(config, batch, score_fn, rng):
    """The step's phase (1) as `step.train_step` runs it: frame maps, views, per-view maps."""
    settings = augment.ViewSettings.from_config(config.augment)
    frame_maps = step_lib.frame_saliency(batch, config, score_fn)
    fill = saliency_source.fill_value(config.saliency.fill)
    made = step_lib.make_views(rng, batch, settings, SIZE, frame_maps, fill)
    return frame_maps, made, step_lib.saliency_maps(made, batch, config, score_fn)


# ------------------------------------------------------------------------------------------------
# The fill value.


def test_released_fill_is_the_pil_luma_of_the_fill_colour():
    """Worked by hand: PIL's L = (19595 R + 38470 G + 7471 B + 2^15) >> 16 on (201, 145, 151)
    is 10677634 >> 16 = 162 (162 * 65536 = 10616832 <= 10677634 < 163 * 65536), and ToTensor
    divides by 255; PIL itself agrees on a map image filled by an affine op, read as the
    released pipeline reads it (RGB map -> affine op with the fill colour -> L)."""
    assert 201 * 19595 + 145 * 38470 + 151 * 7471 + 0x8000 == 10677634
    assert 10677634 >> 16 == 162
    assert saliency_source.pil_luma(randaugment.RANDAUGMENT_FILL) == 162
    assert saliency_source.fill_value("released") == pytest.approx(162 / 255, abs=1e-12)
    assert saliency_source.fill_value("zero") == 0.0
    grey_map = Image.fromarray(np.full((8, 8), 40, np.uint8)).convert("RGB")
    moved = grey_map.transform(
        (8, 8), Image.Transform.AFFINE, (1, 0, 4, 0, 1, 0), fillcolor=randaugment.RANDAUGMENT_FILL
    )
    as_l = np.asarray(moved.convert("L"))
    assert (as_l[:, :4] == 40).all() and (as_l[:, 4:] == 162).all()
    with pytest.raises(ValueError, match="unknown saliency fill"):
        saliency_source.fill_value("mean")


# ------------------------------------------------------------------------------------------------
# A view's map is the frame's map through that view's warp.


def _np_crop_flip(crop, flip, out: int) -> np.ndarray:
    top, left, h, w = (float(v) for v in crop)
    m = np.array([[w / out, 0, left], [0, h / out, top], [0, 0, 1]], np.float64)
    if flip:
        m = m @ np.array([[-1, 0, out], [0, 1, 0], [0, 0, 1]], np.float64)
    return m


def _np_stage(op: int, level: float, sign: float, size: int) -> np.ndarray:
    """The RandAugment geometric ops of docs/method.md section 3, in numpy."""
    frac = level / 10.0 * sign
    if op == 0:  # rotate (level / 10) * 30 degrees counter-clockwise about the centre
        a = -np.deg2rad(frac * 30.0)
        c, s, ctr = np.cos(a), np.sin(a), size / 2.0
        return np.array(
            [[c, s, ctr - c * ctr - s * ctr], [-s, c, ctr + s * ctr - c * ctr], [0, 0, 1]]
        )
    shift = frac * 0.45 * size
    return {
        1: np.array([[1, frac * 0.3, 0], [0, 1, 0], [0, 0, 1.0]]),
        2: np.array([[1, 0, 0], [frac * 0.3, 1, 0], [0, 0, 1.0]]),
        3: np.array([[1, 0, shift], [0, 1, 0], [0, 0, 1.0]]),
        4: np.array([[1, 0, 0], [0, 1, shift], [0, 0, 1.0]]),
    }[op]


def _np_bilinear(image: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear sample of an (H, W) map at pixel-edge points, neighbours clamped to the edge."""
    h, w = image.shape
    x, y = u - 0.5, v - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    dx, dy = x - x0, y - y0
    x0, y0 = x0.astype(int), y0.astype(int)
    xa, xb = np.clip(x0, 0, w - 1), np.clip(x0 + 1, 0, w - 1)
    ya, yb = np.clip(y0, 0, h - 1), np.clip(y0 + 1, 0, h - 1)
    top = image[ya, xa] * (1 - dx) + image[ya, xb] * dx
    bottom = image[yb, xa] * (1 - dx) + image[yb, xb] * dx
    return top * (1 - dy) + bottom * dy


def np_carry(frame_map: np.ndarray, params, out: int, fill: float, query: bool) -> np.ndarray:
    """The frame's map through one view's geometry: crop and flip, then (query) each applied
    RandAugment geometric op in order, fill where any of them looks off its canvas."""
    ys, xs = np.meshgrid(np.arange(out) + 0.5, np.arange(out) + 0.5, indexing="ij")
    pts = np.stack([xs, ys, np.ones_like(xs)]).reshape(3, -1)
    filled = np.zeros(pts.shape[1], bool)
    if query:
        ra = params.randaugment
        for k in range(len(ra.op) - 1, -1, -1):
            op = int(ra.op[k])
            if bool(ra.apply[k]) and op < randaugment.NUM_GEOMETRIC_OPS:
                pts = _np_stage(op, float(ra.level[k]), float(ra.sign[k]), out) @ pts
                filled |= (pts[0] < 0) | (pts[0] >= out) | (pts[1] < 0) | (pts[1] >= out)
    pts = _np_crop_flip(params.crop, bool(params.flip), out) @ pts
    vals = _np_bilinear(np.asarray(frame_map, np.float64), pts[0], pts[1])
    return np.clip(np.where(filled, fill, vals), 0.0, 1.0).reshape(out, out)


def _view_params(rng, names_index: int, batch: int, height: int, width: int, boxes, query: bool):
    """The parameters `step.make_views` draws for view VIEW_NAMES[names_index]."""
    settings = augment.ViewSettings.from_config(tiny.get_config().augment)
    key = jax.random.split(rng, len(step_lib.VIEW_NAMES))[names_index]
    keys = jax.random.split(key, batch)
    sample = views.sample_query_params if query else views.sample_key_params
    return [
        jax.tree.map(np.asarray, sample(keys[i], height, width, settings, jnp.asarray(boxes[i])))
        for i in range(batch)
    ]


def test_each_view_carries_the_warp_of_its_frame_map(saved):
    """Under `frame`, every view's map equals the numpy warp of its image's frame map with the
    crop, flip and RandAugment draw of that view; the frame map is the static map of the frame;
    the views' pixels are those of the per-view code (saved)."""
    batch = _batch(saved)
    config = _config("fine_grained", "frame")
    rng = jax.random.PRNGKey(7)
    frame_maps, made, maps = jax.jit(functools.partial(_saliency_phase, config, score_fn=None))(
        batch, rng=rng
    )
    for name in step_lib.VIEW_NAMES:
        np.testing.assert_allclose(np.asarray(made[name].unit), saved[f"unit_{name}"], atol=1e-6)
    b, h, w, _ = batch["primary_image"].shape
    fill_value = saliency_source.fill_value("released")
    seen_fill = 0
    for who in ("primary", "secondary"):
        frames01 = jnp.asarray(batch[f"{who}_image"], jnp.float32) / 255.0
        expected_frame = saliency.fine_grained(saliency.to_gray(frames01))
        np.testing.assert_array_equal(np.asarray(frame_maps[who]), np.asarray(expected_frame))
        for index, name in enumerate(step_lib.VIEW_NAMES):
            if not name.startswith(who):
                continue
            query = name.endswith("_q")
            params = _view_params(rng, index, b, h, w, np.asarray(batch[f"{who}_box"]), query)
            for i in range(b):
                want = np_carry(np.asarray(frame_maps[who][i]), params[i], SIZE, fill_value, query)
                np.testing.assert_allclose(np.asarray(maps[name][i]), want, atol=2e-5)
                if query:
                    seen_fill += int(np.sum(want == fill_value))
    assert seen_fill > 0  # some query view's RandAugment brought in fill


def test_zero_fill_marks_where_randaugment_fills():
    """A query view whose translation brings in fill: a constant map of ones carries 0 exactly
    where the numpy warp says a stage left the canvas, and 1 elsewhere."""
    params = views.QueryParams(
        crop=jnp.array((2, 1, 14, 18), jnp.int32),
        flip=jnp.array(True),
        jitter=jnp.ones(3, jnp.float32),
        jitter_order=jnp.arange(3, dtype=jnp.int32),
        randaugment=randaugment.RandAugmentDraw(
            op=jnp.array([3, 0], jnp.int32),  # TranslateXRel, then Rotate
            apply=jnp.array([True, True]),
            level=jnp.array([6.0, 5.0], jnp.float32),
            sign=jnp.array([1.0, -1.0], jnp.float32),
        ),
    )
    image = jnp.full((20, 26, 3), 0.5, jnp.float32)
    _, carried = views.query_view_from_params(
        image, params, SIZE, saliency_map=jnp.ones((20, 26)), map_fill=0.0
    )
    want = np_carry(np.ones((20, 26)), jax.tree.map(np.asarray, params), SIZE, 0.0, True)
    assert 0.1 < float(np.mean(want == 0.0)) < 0.9
    np.testing.assert_allclose(np.asarray(carried), want, atol=1e-6)


def test_the_map_moves_exactly_as_the_pixels(saved):
    """A map equal to one colour channel of the frame, carried with that channel's fill, equals
    that channel of the view's geometry-only warp: the same resampling moves both."""
    frames = jnp.asarray(saved["batch_primary_image"])
    boxes = jnp.asarray(saved["batch_primary_box"])
    settings = augment.ViewSettings.from_config(tiny.get_config().augment)
    red = frames[..., 0].astype(jnp.float32) / 255.0
    red_fill = randaugment.RANDAUGMENT_FILL[0] / 255.0
    rng = jax.random.PRNGKey(3)
    for make, fill in ((augment.query_view, {"map_fill": red_fill}), (augment.key_view, {})):
        _, _, geometry = make(
            rng, frames, out_size=SIZE, settings=settings, with_geometry=True, boxes=boxes
        )
        _, _, carried = make(
            rng, frames, out_size=SIZE, settings=settings, boxes=boxes, maps=red, **fill
        )
        np.testing.assert_allclose(np.asarray(carried), np.asarray(geometry[..., 0]), atol=1e-6)


# ------------------------------------------------------------------------------------------------
# `view` is the per-view code as it was.


@pytest.mark.parametrize("method", ["fine_grained", "spectral_residual", "gradient"])
def test_view_source_reproduces_the_saved_maps(saved, method):
    config = _config(method, "view")
    run = jax.jit(functools.partial(_saliency_phase, config, score_fn=_score_fn(saved)))
    frame_maps, made, maps = run(_batch(saved), rng=jax.random.PRNGKey(7))
    assert frame_maps == {}
    # Saved under jax 0.10; newer XLA's float32 FFT and reductions differ in the last bits.
    for name in step_lib.VIEW_NAMES:
        np.testing.assert_allclose(np.asarray(maps[name]), saved[f"{method}_{name}"], atol=1e-5)
        np.testing.assert_allclose(np.asarray(made[name].unit), saved[f"unit_{name}"], atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Gradient saliency from the frame.


def test_frame_to_input_resizes_the_valid_region_as_opencv():
    """The region inside the box, resized bilinearly (OpenCV INTER_LINEAR, half-pixel centres)."""
    rng = np.random.default_rng(0)
    frames = rng.uniform(0, 1, (2, 20, 26, 3)).astype(np.float32)
    boxes = np.array([[0, 3, 20, 20], [2, 0, 16, 26]], np.int32)
    ours = np.asarray(saliency_source.frame_to_input(jnp.asarray(frames), boxes, SIZE))
    for i, (top, left, h, w) in enumerate(boxes):
        region = frames[i, top : top + h, left : left + w]
        want = cv2.resize(region, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(ours[i], want, atol=1e-5)
    back = saliency_source.input_to_frame(jnp.asarray(ours[..., 0]), boxes, 20, 26)
    assert back.shape == (2, 20, 26)


def test_gradient_from_the_frame_scores_each_image_once(saved):
    """`frame`: one forward and backward per image (2B images per B pairs, in one call);
    `view`: one per view (four calls of B).

    Counted while tracing the saliency phase: each call of the scorer is one forward pass that
    `jax.grad` differentiates once."""
    batch = _batch(saved)
    b = batch["primary_image"].shape[0]
    score = _score_fn(saved)
    for source, calls in (("frame", [2 * b]), ("view", [b] * 4)):
        scored: list[int] = []

        def counted(x, scored=scored):
            scored.append(x.shape[0])
            return score(x)

        config = _config("gradient", source)
        jax.jit(functools.partial(_saliency_phase, config, score_fn=counted)).lower(
            batch, rng=jax.random.PRNGKey(7)
        )
        assert scored == calls, source


def test_gradient_frame_map_is_the_gradient_of_the_resized_region(saved):
    """With 16 x 16 valid regions and 16-pixel inputs both resamplings are exact copies, so the
    frame map holds, inside each box, the gradient map of the region itself."""
    batch = dict(_batch(saved))
    boxes = np.array([[2, 3, 16, 16], [0, 0, 16, 16], [4, 10, 16, 16], [1, 5, 16, 16]], np.int32)
    batch["primary_box"] = jnp.asarray(boxes)
    score = _score_fn(saved)
    config = _config("gradient", "frame")
    frame_maps = jax.jit(lambda bt: step_lib.frame_saliency(bt, config, score))(batch)
    frames = np.asarray(batch["primary_image"], np.float32) / 255.0
    regions = np.stack([frames[i, t : t + 16, x : x + 16] for i, (t, x, _, _) in enumerate(boxes)])
    want = saliency.gradient(score, jnp.asarray(regions), batch["primary_label"])
    got = np.stack(
        [frame_maps["primary"][i, t : t + 16, x : x + 16] for i, (t, x, _, _) in enumerate(boxes)]
    )
    np.testing.assert_allclose(got, np.asarray(want), atol=1e-5)
