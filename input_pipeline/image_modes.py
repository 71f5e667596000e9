"""Any image PIL opens, as the 8-bit RGB every stored and fed image is.

PIL's own `convert("RGB")` clips 16-bit and 32-bit samples to 255, so a 16-bit grayscale PNG
(mode I;16, common for dermoscopy exports) would become all white. Here 16-bit samples are scaled
by 255/65535 and rounded; float images must hold values in [0, 1] (scaled by 255); alpha is
dropped (as `data_split.as_rgb_uint8` does for arrays); palette, CMYK, 1-bit and the other colour
modes go through PIL's conversion. A mode with no unambiguous 8-bit reading is refused, naming the
image.

A photo whose EXIF orientation tag says the camera was turned (values 2-8) is turned upright
(`upright`), as every image viewer shows it; the stored pixels carry no tag any more.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# Modes PIL converts to RGB without losing range (alpha, if any, is dropped).
PIL_CONVERTED = ("RGB", "RGBA", "RGBX", "RGBa", "L", "LA", "La", "1", "P", "PA", "CMYK", "YCbCr",
                 "LAB", "HSV")  # fmt: skip


EXIF_ORIENTATION = 0x0112  # the TIFF/EXIF tag; 1 (or absent) means already upright


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation of `image` (1 when absent or unreadable)."""
    try:
        return int(image.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except Exception:  # a damaged EXIF block: PIL shows the pixels as stored, so do we
        return 1


def needs_turning(image: Image.Image) -> bool:
    """True when `upright` would change `image` (orientation tag 2-8)."""
    return exif_orientation(image) not in (0, 1)


def upright(image: Image.Image) -> Image.Image:
    """`image` turned as its EXIF orientation says (a new image), or `image` itself if upright."""
    if not needs_turning(image):
        return image
    return ImageOps.exif_transpose(image)


def scale_16bit(samples: np.ndarray) -> np.ndarray:
    """16-bit samples (0..65535) as uint8: x * 255 / 65535, rounded to nearest."""
    return np.round(samples.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)


def to_rgb(image: Image.Image, name: str = "?") -> Image.Image:
    """`image` as 8-bit RGB; ValueError naming `name` for modes without a clear 8-bit reading."""
    mode = image.mode
    if mode in PIL_CONVERTED:
        return image.convert("RGB")  # a new image also for RGB: callers close the original
    samples = np.asarray(image)
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        if samples.size and (samples.min() < 0 or samples.max() > 65535):
            raise ValueError(
                f"image {name}: mode {mode} with values in [{samples.min()}, {samples.max()}] "
                "has no 8-bit reading (expected 16-bit samples 0..65535)"
            )
        gray = scale_16bit(samples)
    elif mode == "F":
        if samples.size and not (
            np.isfinite(samples).all() and 0 <= samples.min() <= samples.max() <= 1
        ):
            raise ValueError(
                f"image {name}: float image (mode F) with values outside [0, 1] has no 8-bit "
                "reading; save it as 8- or 16-bit"
            )
        gray = np.round(samples.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise ValueError(f"image {name}: unsupported image mode {mode!r}; save it as RGB")
    return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2))
