"""Saliency maps for SPMix (docs/method.md section 4), computed on device inside the jitted step.

Three sources, all batched, jittable and pure `jax.numpy`:

- `gradient`: magnitude of the input gradient of a class score (max over colour channels).
- `fine_grained`: Montabone & Soto (2010) centre-surround intensity contrast, reproducing OpenCV
  contrib's `StaticSaliencyFineGrained` bit for bit (including its uint8 truncations), so that
  maps computed here match the precomputed maps the released code reads.
- `spectral_residual`: Hou & Zhang (2007), reproducing OpenCV contrib's
  `StaticSaliencySpectralResidual` (64x64 working size) to about 1e-4.

The two static maps see the image the way OpenCV sees a uint8 image: the grey level is quantised to
round(gray * 255) first. They are piecewise-constant functions of the pixels and are therefore not
meant to be differentiated: their input passes through `stop_gradient`, so gradients through them
are exact zeros (finite), never NaN. Every map lies in [0, 1]; a constant image gives all zeros.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

METHODS = ("gradient", "fine_grained", "spectral_residual")
# Static maps read the view's geometry only (docs/method.md section 4): crop, flip and the
# geometric ops move the lesion, colour ops do not. Gradient saliency reads the encoder's input.
STATIC_METHODS = ("fine_grained", "spectral_residual")
SCORES = ("label", "top")

# OpenCV's luminance weights (ITU-R BT.601), used by COLOR_RGB2GRAY / COLOR_BGR2GRAY.
_LUMA_RGB = (0.299, 0.587, 0.114)

# Half-widths of the centre-surround windows, in the order OpenCV visits them. A window of
# half-width n around (y, x) covers rows y-n+1 .. y+n and columns x-n+1 .. x+n (2n pixels each,
# one more below/right than above/left), clipped to the image.
_FG_HALF_WIDTHS = (12, 24, 48, 28, 56, 112)

# Spectral residual: OpenCV's working size, log-spectrum mean filter and output blur.
_SR_SIZE = 64
_SR_BLUR_SIGMA = 8.0
_SR_BLUR_TAPS = 5

_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------------
# Input checks and small helpers
# ----------------------------------------------------------------------------------------------
def _check_gray(gray: jax.Array, fn: str) -> None:
    if gray.ndim != 3:
        raise ValueError(f"{fn} expects a (B, H, W) grey batch, got shape {tuple(gray.shape)}")
    if gray.shape[1] < 2 or gray.shape[2] < 2:
        raise ValueError(f"{fn} needs images of at least 2x2 pixels, got {tuple(gray.shape[1:])}")
    if not jnp.issubdtype(gray.dtype, jnp.floating):
        raise ValueError(f"{fn} expects floating point grey levels in [0, 1], got {gray.dtype}")


def _check_rgb(images: jax.Array, fn: str) -> None:
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{fn} expects a (B, H, W, 3) RGB batch, got shape {tuple(images.shape)}")


def _uint8_levels(gray: jax.Array) -> jax.Array:
    """Grey levels as OpenCV sees them, round(gray * 255) in 0..255, as int32 (no gradient)."""
    g = jax.lax.stop_gradient(gray).astype(jnp.float32)
    return jnp.clip(jnp.round(g * 255.0), 0.0, 255.0).astype(jnp.int32)


def _is_constant(x: jax.Array) -> jax.Array:
    """(B,) True where an image has a single value."""
    return jnp.max(x, axis=(1, 2)) == jnp.min(x, axis=(1, 2))


def _pad_reflect101(x: jax.Array, width: int) -> jax.Array:
    """Pad the last two axes like OpenCV's BORDER_DEFAULT (gfedcb|abcdefgh|gfedcba).

    One gather at precomputed indices: `jnp.pad(mode="reflect")` compiles to a chain of
    concatenations, several kernels per pad.
    """
    return _pad_by_index(x, width, "reflect")


def _pad_by_index(x: jax.Array, width: int, mode: Literal["reflect", "edge"]) -> jax.Array:
    """`jnp.pad` of the last two axes by `width` in `mode` ("reflect" or "edge"), as one gather."""
    h, w = x.shape[-2:]
    rows = np.pad(np.arange(h), width, mode=mode)
    cols = np.pad(np.arange(w), width, mode=mode)
    return x[..., rows[:, None], cols[None, :]]


def _separable_filter(x: jax.Array, taps: np.ndarray) -> jax.Array:
    """Correlate the last two axes with `taps` (odd length) under BORDER_REFLECT_101."""
    r = len(taps) // 2
    h, w = x.shape[1], x.shape[2]
    p = _pad_reflect101(x, r)
    rows = sum(t * p[:, :, i : i + w] for i, t in enumerate(taps))
    return sum(t * rows[:, i : i + h, :] for i, t in enumerate(taps))


# ----------------------------------------------------------------------------------------------
# Colour -> grey
# ----------------------------------------------------------------------------------------------
def to_gray(images: jax.Array) -> jax.Array:
    """(B, H, W, 3) RGB in [0, 1] -> (B, H, W) luminance with OpenCV's RGB2GRAY weights."""
    _check_rgb(images, "to_gray")
    w = jnp.asarray(_LUMA_RGB, dtype=jnp.float32)
    return jnp.einsum("bhwc,c->bhw", images.astype(jnp.float32), w, precision=_HIGHEST)


# ----------------------------------------------------------------------------------------------
# Fine-grained (Montabone & Soto) saliency
# ----------------------------------------------------------------------------------------------
def _blur3_uint8(levels: jax.Array) -> jax.Array:
    """OpenCV's bit-exact 3x3 Gaussian (sigma 0 -> taps 1/4, 1/2, 1/4) on uint8, rounded half up."""
    acc = _separable_filter(levels, np.array([1, 2, 1], dtype=np.int32))
    return (acc + 8) // 16


def _floor_255_times_ratio(num: jax.Array, den: jax.Array) -> jax.Array:
    """floor(255 * float32(num / den)) for int32 num >= 0, den > 0, with the float32 quotient.

    OpenCV rescales each summed map by rounding the quotient s / max to float32, multiplying it by
    255 in double precision (exact) and truncating to uchar. When 255 * num / den is an
    integer k and the float32 quotient lies just below num / den, OpenCV yields k - 1. Integer
    division gives the exact floor; the rounding direction of the float32 quotient is found
    exactly with a Veltkamp split (q = hi + lo, 12-bit halves, so hi*den and lo*den are exact).
    """
    k = (255 * num) // den
    exact_integer = (255 * num) % den == 0
    numf = num.astype(jnp.float32)
    # Full-shape, behind a barrier: XLA would otherwise divide by a broadcast through one
    # reciprocal and a multiplication, which is not the correctly rounded quotient.
    denf = jax.lax.optimization_barrier(jnp.broadcast_to(den, num.shape).astype(jnp.float32))
    q = numf / denf
    c = q * jnp.float32(4097.0)
    hi = c - (c - q)
    lo = q - hi
    # hi*den is within a factor two of num, so the subtraction is exact (Sterbenz); the sign of
    # the final sum is that of q*den - num.
    below = (hi * denf - numf) + lo * denf < 0
    return jnp.where(exact_integer & below, k - 1, k)


def _integral_float32(img: jax.Array) -> jax.Array:
    """OpenCV's `integral(img, CV_32F)`: (B, H + 1, W + 1) float32, rounded as OpenCV rounds.

    OpenCV adds each row's exact running sum to the (already rounded) entry above it in float32,
    so entries beyond 2**24 are rounded row by row. While 255 * H * W < 2**24 every entry is an
    exact integer, so exact running sums give the same values; larger images repeat the
    row-by-row float32 accumulation with a scan over the rows.
    """
    b, h, w = img.shape
    if 255 * h * w < 2**24:
        # Both running sums as products with triangular 0/1 matrices: every partial sum is an
        # integer below 2**24, exact in float32 in any order, and two matrix products compile
        # to two kernels where integer cumsums compile to four each.
        upper = jnp.asarray(np.triu(np.ones((w, w), np.float32)))
        lower = jnp.asarray(np.tril(np.ones((h, h), np.float32)))
        row_sums_f = jnp.einsum("bhv,vw->bhw", img.astype(jnp.float32), upper, precision=_HIGHEST)
        integral = jnp.einsum("gh,bhw->bgw", lower, row_sums_f, precision=_HIGHEST)
        return jnp.pad(integral, ((0, 0), (1, 0), (1, 0)))
    row_sums = jnp.cumsum(img, axis=2)  # exact int32: at most 255 * W per row

    def add_row(above: jax.Array, row: jax.Array) -> tuple[jax.Array, jax.Array]:
        below = above + row.astype(jnp.float32)
        return below, below

    _, rows = jax.lax.scan(add_row, jnp.zeros((b, w), jnp.float32), jnp.moveaxis(row_sums, 1, 0))
    return jnp.pad(jnp.moveaxis(rows, 0, 1), ((0, 0), (1, 0), (1, 0)))


def _rescale_to_255(summed: jax.Array) -> jax.Array:
    """Scale a per-image summed map so that its maximum becomes 255 (truncating); all-zero -> 0."""
    peak = jnp.max(summed, axis=(1, 2), keepdims=True)
    safe_peak = jnp.maximum(peak, 1)
    return jnp.where(peak > 0, _floor_255_times_ratio(summed, safe_peak), 0)


@jax.jit
def fine_grained(gray: jax.Array) -> jax.Array:
    """Fine-grained centre-surround saliency, equal to OpenCV's StaticSaliencyFineGrained.

    Args:
      gray: (B, H, W) grey levels in [0, 1]; OpenCV is given round(gray * 255) as uint8.
    Returns:
      (B, H, W) float32 in [0, 1], bit-identical to OpenCV at every size: OpenCV's float32
      integral image and its float32 window sums, which round once values pass 2**24 (images
      larger than about 256x256, or bright windows), are reproduced with the same roundings.

    Steps (as OpenCV): blur the uint8 image twice with a 3x3 Gaussian; for each of six window
    half-widths take the window mean excluding the centre pixel (via a float32 integral image,
    corners combined as ((bottom-right + top-left) - bottom-left) - top-right), and keep
    the truncated positive parts of centre - mean ("on") and mean - centre ("off"); sum each over
    the scales, rescale each sum so its maximum is 255, add on and off and rescale by the larger of
    their maxima (keeping OpenCV's uint8 wrap-around where the sum passes 255).
    """
    _check_gray(gray, "fine_grained")
    _, h, w = gray.shape
    img = _blur3_uint8(_blur3_uint8(_uint8_levels(gray)))

    # Integral-image corners are read at indices clipped to the integral image (one larger than
    # img): edge-padding it by the widest half-width once turns every clipped read into a slice.
    m = max(_FG_HALF_WIDTHS)
    padded = _pad_by_index(_integral_float32(img), m, "edge")
    rows, cols = np.arange(h), np.arange(w)
    windows, others = [], []
    for n in _FG_HALF_WIDTHS:
        top, bottom = np.clip(rows - n + 1, 0, h), np.clip(rows + n + 1, 0, h)
        left, right = np.clip(cols - n + 1, 0, w), np.clip(cols + n + 1, 0, w)
        near, far = m - n + 1, m + n + 1  # padded offsets of the top / left and bottom / right
        at_top, at_bottom = padded[:, near : near + h], padded[:, far : far + h]
        windows.append(
            at_bottom[:, :, far : far + w]
            + at_top[:, :, near : near + w]
            - at_bottom[:, :, near : near + w]
            - at_top[:, :, far : far + w]
        )
        others.append((bottom - top)[:, None] * (right - left)[None, :] - 1)
    # All scales at once, (scales, B, H, W): one kernel for the six windows, one for their
    # quotients and sums, where a loop over the scales compiles a kernel per scale.
    window = jnp.stack(windows)
    # Full-shape, behind a barrier: XLA turns a division by a constant or by a broadcast into
    # a multiplication by a rounded reciprocal, which changes the truncation in a few pixels.
    count = np.stack(others).astype(np.float32)[:, None]
    count = jax.lax.optimization_barrier(jnp.broadcast_to(jnp.asarray(count), window.shape))
    centre_f = img.astype(jnp.float32)
    surround = (window - centre_f) / count
    on_sum = jnp.sum(jnp.floor(jnp.maximum(centre_f - surround, 0.0)).astype(jnp.int32), axis=0)
    off_sum = jnp.sum(jnp.floor(jnp.maximum(surround - centre_f, 0.0)).astype(jnp.int32), axis=0)

    on = _rescale_to_255(on_sum)
    off = _rescale_to_255(off_sum)
    peak = jnp.maximum(
        jnp.max(on, axis=(1, 2), keepdims=True), jnp.max(off, axis=(1, 2), keepdims=True)
    )
    # OpenCV divides in double; with integers the floor of the exact quotient is the same. Where
    # on + off exceeds 255 (rare: a pixel brighter than its near and darker than its far
    # surround) OpenCV's cast to uchar keeps the low byte, so 256 becomes 0; reproduced here so
    # that maps equal the ones the released code reads.
    mixed = jnp.where(peak > 0, (255 * (on + off)) // jnp.maximum(peak, 1), 0)
    mixed = mixed % 256
    # OpenCV's convertTo(CV_32F, 1/255) multiplies by the float32 reciprocal.
    return mixed.astype(jnp.float32) * jnp.float32(1.0 / 255.0)


# ----------------------------------------------------------------------------------------------
# Spectral residual (Hou & Zhang) saliency
# ----------------------------------------------------------------------------------------------
def _linear_resize_matrix(n_in: int, n_out: int, weight_steps: int | None) -> np.ndarray:
    """(n_out, n_in) matrix of OpenCV's INTER_LINEAR along one axis.

    Sample positions are (d + 0.5) * n_in / n_out - 0.5 (computed in float32, as OpenCV does),
    clamped to the first/last pixel; no antialiasing when shrinking. `weight_steps` quantises the
    weights as INTER_LINEAR_EXACT does for uint8 images (8 fractional bits).
    """
    d = np.arange(n_out, dtype=np.float64)
    pos = ((d + 0.5) * (n_in / n_out) - 0.5).astype(np.float32)
    start = np.floor(pos)
    frac32 = (pos - start).astype(np.float32)
    start = start.astype(np.int64)
    frac32 = np.where(start < 0, np.float32(0), frac32)
    start = np.maximum(start, 0)
    frac32 = np.where(start >= n_in - 1, np.float32(0), frac32)
    start = np.minimum(start, n_in - 1)
    frac = frac32.astype(np.float64)
    if weight_steps is not None:
        frac = np.round(frac * weight_steps) / weight_steps
    m = np.zeros((n_out, n_in), np.float64)
    np.add.at(m, (np.arange(n_out), start), 1.0 - frac)
    np.add.at(m, (np.arange(n_out), np.minimum(start + 1, n_in - 1)), frac)
    return m.astype(np.float32)


def _resize(x: jax.Array, out_h: int, out_w: int, weight_steps: int | None) -> jax.Array:
    my = jnp.asarray(_linear_resize_matrix(x.shape[1], out_h, weight_steps))
    mx = jnp.asarray(_linear_resize_matrix(x.shape[2], out_w, weight_steps))
    return jnp.einsum("oh,bhw,pw->bop", my, x, mx, precision=_HIGHEST)


def _gaussian_taps(size: int, sigma: float) -> np.ndarray:
    t = np.arange(size) - (size - 1) / 2
    k = np.exp(-(t**2) / (2.0 * sigma**2))
    return (k / k.sum()).astype(np.float32)


@jax.jit
def spectral_residual(gray: jax.Array) -> jax.Array:
    """Spectral-residual saliency, matching OpenCV's StaticSaliencySpectralResidual.

    Args:
      gray: (B, H, W) grey levels in [0, 1]; OpenCV is given round(gray * 255) as uint8.
    Returns:
      (B, H, W) float32 in [0, 1] (within about 1e-4 of OpenCV, which works in float64 and
      approximates the phase angle).

    Steps (as OpenCV): shrink to 64x64 with bit-exact bilinear interpolation (uint8 result); FFT;
    log(1 + amplitude) minus its 3x3 mean (reflect-101 border, on the unshifted spectrum); back to
    the image domain with the original phase; 5x5 Gaussian blur (sigma 8) of the magnitude, then
    its square; divide by the maximum (OpenCV divides by the maximum only, it does not subtract the
    minimum); resize back bilinearly.
    """
    _check_gray(gray, "spectral_residual")
    _, h, w = gray.shape
    levels = _uint8_levels(gray)
    # INTER_LINEAR_EXACT on uint8: weights in 1/256 steps, result rounded half up.
    small = jnp.floor(_resize(levels.astype(jnp.float32), _SR_SIZE, _SR_SIZE, 256) + 0.5)

    spectrum = jnp.fft.fft2(small)
    log_amp = jnp.log1p(jnp.abs(spectrum))
    phase = jnp.angle(spectrum)
    residual = log_amp - _separable_filter(log_amp, np.full(3, 1.0 / 3.0, np.float32))
    back = jnp.fft.ifft2(jnp.exp(residual) * jnp.exp(1j * phase))

    smooth = _separable_filter(jnp.abs(back), _gaussian_taps(_SR_BLUR_TAPS, _SR_BLUR_SIGMA))
    energy = smooth * smooth
    peak = jnp.max(energy, axis=(1, 2), keepdims=True)
    energy = jnp.where(peak > 0, energy / jnp.where(peak > 0, peak, 1.0), 0.0)

    out = jnp.clip(_resize(energy, h, w, None), 0.0, 1.0)
    return jnp.where(_is_constant(levels)[:, None, None], 0.0, out).astype(jnp.float32)


# ----------------------------------------------------------------------------------------------
# Gradient saliency
# ----------------------------------------------------------------------------------------------
def _per_image_minmax(x: jax.Array) -> jax.Array:
    """Min-max normalise each (H, W) map to [0, 1]; a constant map becomes zeros."""
    lo = jnp.min(x, axis=(1, 2), keepdims=True)
    span = jnp.max(x, axis=(1, 2), keepdims=True) - lo
    ok = span > 0
    return jnp.where(ok, jnp.clip((x - lo) / jnp.where(ok, span, 1.0), 0.0, 1.0), 0.0)


def gradient(
    score_fn: Callable[[jax.Array], jax.Array],
    images: jax.Array,
    labels: jax.Array | None = None,
    *,
    score: str = "label",
) -> jax.Array:
    """Input-gradient saliency (docs/method.md section 4): |d score / d image|, max over colour.

    Each map is min-max normalised per image.

    Args:
      score_fn: images -> logits (B, C); close over the (key-encoder) parameters.
      images: (B, H, W, 3) model inputs (whatever normalisation score_fn expects).
      labels: (B,) int class indices, or (B, C) one-hot / soft targets (score = their dot product
        with the logits); required for score='label'.
      score: 'label' (the label's logit) or 'top' (the largest logit).
    Returns:
      (B, H, W) float32 in [0, 1], with no gradient flowing back through it.
    """
    _check_rgb(images, "gradient")
    if score not in SCORES:
        raise ValueError(f"unknown gradient score {score!r}; valid: {', '.join(SCORES)}")
    if score == "label" and labels is None:
        raise ValueError("gradient saliency with score='label' needs labels")

    def total_score(x: jax.Array) -> jax.Array:
        logits = score_fn(x)
        if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
            raise ValueError(f"score_fn must return (B, C) logits, got {tuple(logits.shape)}")
        logits = logits.astype(jnp.float32)
        if score == "top":
            return jnp.sum(jnp.max(logits, axis=-1))
        lab = jnp.asarray(labels)
        if lab.ndim == 1:
            picked = jnp.take_along_axis(logits, lab.astype(jnp.int32)[:, None], axis=-1)
            return jnp.sum(picked)
        if lab.shape != logits.shape:
            raise ValueError(f"labels {tuple(lab.shape)} do not match logits {tuple(logits.shape)}")
        return jnp.sum(logits * jax.lax.stop_gradient(lab.astype(jnp.float32)))

    grads = jax.lax.stop_gradient(jax.grad(total_score)(images))
    magnitude = jnp.max(jnp.abs(grads.astype(jnp.float32)), axis=-1)
    return _per_image_minmax(magnitude)


# ----------------------------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------------------------
def compute(
    method: str,
    images: jax.Array,
    *,
    score_fn: Callable[[jax.Array], jax.Array] | None = None,
    labels: jax.Array | None = None,
    score: str = "label",
) -> jax.Array:
    """Saliency of a batch of views by method name (config `saliency.method`).

    `images` are (B, H, W, 3) RGB in [0, 1] (un-normalised views). For 'gradient', `score_fn`
    receives exactly these images, so it must apply any input normalisation itself.
    """
    if method not in METHODS:
        raise ValueError(f"unknown saliency method {method!r}; valid: {', '.join(METHODS)}")
    _check_rgb(images, "compute")
    if method == "gradient":
        if score_fn is None:
            raise ValueError("saliency method 'gradient' needs score_fn")
        return gradient(score_fn, images, labels, score=score)
    gray = to_gray(images)
    if method == "fine_grained":
        return fine_grained(gray)
    return spectral_residual(gray)
