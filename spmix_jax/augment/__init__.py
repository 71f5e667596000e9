"""Device-side view augmentation (docs/method.md section 3), pure jax.numpy, batched with `vmap`.

The host only decodes and resizes to an S x S uint8 square; everything else runs inside the jitted
step, keyed by the step RNG, one key per example.

Modules
- `geometry`: affine matrices (output -> input, pixel-edge units, PIL's AFFINE data tuple) and
  bilinear resampling with PIL's fill rule.
- `colour`: colour ops with PIL's uint8 semantics on float images in [0, 1] (continuous
  intermediates: PIL rounds or truncates to uint8 after every op, these ops do not; differences
  are below one grey level).
- `randaugment`: the RandAugment op table, its sampling, and its geometric / colour halves.
- `views`: `ViewSettings`, per-image parameters, the query, key and evaluation views, `normalize`.

Query view: RandomResizedCrop, horizontal flip, colour jitter, RandAugment. Efficiency: the crop,
the flip and RandAugment's geometric ops (rotate, shear, translate) are composed into one affine
map per image, and the source is resampled ONCE, then the colour ops run. torchvision resamples
after each geometric op and runs RandAugment after the jitter; the differences are:
1. interpolation: one bilinear sample of the source instead of an antialiased resize followed by
   one resample per geometric op (the released code picks bilinear or bicubic at random; bilinear
   throughout is what this package does), and no antialiasing when the crop is shrunk (by at most
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
A saliency map of the source (`maps=` of `query_view` / `key_view`) rides through the same
resampling as a fourth channel, so it moves exactly as the pixels, and takes its own fill value
where a geometric op brings in fill (docs/method.md section 4).
Colour jitter applies brightness, contrast and saturation in a random order per image (as
torchvision's ColorJitter); hue jitter is not supported (docs/method.md section 3 uses 0).
`tests/test_augment.py` compares whole views built from explicit parameters with the PIL chain
(mean error <= 3 levels).

Key view: RandomResizedCrop + horizontal flip (one warp), colour jitter (random order), grayscale
with probability `grayscale_p`, Gaussian blur with probability `blur_p`. The blur is a separable
Gaussian truncated at radius ceil(3 * sigma_max) (13 taps for sigma_max = 2, the support of PIL's
three-pass box approximation used by `ImageFilter.GaussianBlur(radius=sigma)`), edges replicated.
The batched key view runs the blur as a batch-level stage after the per-image colour ops
(`views.blur_batch`), so that XLA does not recompute those ops for every tap of the blur.

Evaluation view: short side resized (antialiased bilinear) to out_size * eval_resize_ratio, centre
crop. Every view is normalised by `normalize`.
"""

from spmix_jax.augment import colour, geometry, randaugment, views
from spmix_jax.augment.views import (
    ViewSettings,
    eval_view,
    example_keys,
    key_view,
    normalize,
    query_and_key_views,
    query_view,
)

__all__ = [
    "ViewSettings",
    "colour",
    "eval_view",
    "example_keys",
    "geometry",
    "key_view",
    "normalize",
    "query_and_key_views",
    "query_view",
    "randaugment",
    "views",
]
