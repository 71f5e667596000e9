"""The host's only image work: decode, convert to 8-bit RGB, resize, and place in a frame.

Training images keep their aspect ratio: the short side goes to `image_size`, and the long side
is cropped or edge-padded to one fixed frame per dataset (`frame_shape`), with a box marking the
real image so that random crops never sample padding (docs/method.md section 3). Evaluation
images are resized and centre-cropped to a square.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from input_pipeline import image_modes
from input_pipeline.data_split import as_rgb_uint8


def decode_image(image: Any, image_size: int, image_id: str = "?") -> np.ndarray | Image.Image:
    """Pixels of a record's image: a uint8 (H, W, 3) array, or a loaded RGB PIL image for bytes.

    Accepts a uint8 (H, W, 3|1|4) or (H, W) array, or encoded JPEG/PNG bytes. JPEGs are decoded
    at the smallest DCT scale that still covers `image_size` on both sides (PIL `draft`), which
    costs a fraction of a full decode for large sources. Errors name `image_id`.
    """
    if isinstance(image, np.ndarray) and image.dtype == object and image.ndim == 0:
        image = image.item()
    if isinstance(image, (bytes, bytearray, memoryview)):
        try:  # PIL raises several exception types for broken data
            pil = Image.open(io.BytesIO(bytes(image)))
            if pil.format == "JPEG":
                pil.draft("RGB", (image_size, image_size))
            # Files given to prediction may carry an EXIF orientation; built records never do.
            return image_modes.to_rgb(image_modes.upright(pil), image_id)
        except Exception as err:
            raise ValueError(f"cannot decode image {image_id!r}: {err}") from err
    return as_rgb_uint8(image, image_id)


def resize_centre_square(image: np.ndarray | Image.Image, image_size: int) -> np.ndarray:
    """Short side to `image_size`, centre square crop: one antialiased bilinear resampling (PIL)."""
    if isinstance(image, np.ndarray):
        if image.shape[:2] == (image_size, image_size):
            return np.ascontiguousarray(image)
        image = Image.fromarray(np.ascontiguousarray(image))
    width, height = image.size
    if (width, height) != (image_size, image_size):
        short = min(width, height)
        left, top = (width - short) / 2.0, (height - short) / 2.0
        image = image.resize(
            (image_size, image_size),
            Image.Resampling.BILINEAR,
            box=(left, top, left + short, top + short),
        )
    return np.asarray(image, dtype=np.uint8)


def frame_shape(image_size: int, image_aspect: float = 1.0) -> tuple[int, int]:
    """(height, width) of the training frame: short side `image_size`, long side x aspect."""
    if image_aspect < 1.0:
        raise ValueError(f"image_aspect must be >= 1 (long side / short side), got {image_aspect}")
    return int(image_size), int(round(image_size * image_aspect))


def resize_to_frame(
    image: np.ndarray | Image.Image, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """The whole image in a fixed (height, width) frame, and its valid region.

    The short side goes to min(height, width) (one antialiased bilinear resampling); a side
    longer than the frame is centre-cropped, a shorter one is centred and padded by repeating
    its edge pixels (so that bilinear sampling at the border never reads a foreign colour).
    Returns the uint8 (height, width, 3) frame and int32 (top, left, height, width) of the image
    inside it. A square frame gives the centre square of `resize_centre_square`, box = frame.
    """
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.ascontiguousarray(image))
    src_w, src_h = image.size
    scale = min(height, width) / min(src_w, src_h)
    new_w, new_h = min(width, round(src_w * scale)), min(height, round(src_h * scale))
    # The source region that fills (new_h, new_w): all of it, or its centre where it is cropped.
    box_w, box_h = min(src_w, width / scale), min(src_h, height / scale)
    left, top = (src_w - box_w) / 2.0, (src_h - box_h) / 2.0
    if (new_w, new_h) != (src_w, src_h) or (box_w, box_h) != (src_w, src_h):
        image = image.resize(
            (new_w, new_h),
            Image.Resampling.BILINEAR,
            box=(left, top, left + box_w, top + box_h),
        )
    pixels = np.asarray(image, dtype=np.uint8)
    pad_top, pad_left = (height - new_h) // 2, (width - new_w) // 2
    if (new_h, new_w) != (height, width):
        pad = ((pad_top, height - new_h - pad_top), (pad_left, width - new_w - pad_left), (0, 0))
        pixels = np.pad(pixels, pad, mode="edge")
    return np.ascontiguousarray(pixels), np.array([pad_top, pad_left, new_h, new_w], np.int32)


def frame_image(
    image: Any, frame: tuple[int, int], image_id: str = "?"
) -> tuple[np.ndarray, np.ndarray]:
    """A record's image (pixels or encoded bytes) in the training frame, and its valid region.

    The one definition of the training frame: the reader applies it per sample to stored
    JPEGs, and the raw-pixel build applies it once per image, so both storages give the same
    pixels.
    """
    height, width = frame
    decoded = decode_image(image, max(frame), image_id)
    if isinstance(decoded, np.ndarray) and decoded.shape[:2] == tuple(frame):
        return np.ascontiguousarray(decoded), np.array([0, 0, height, width], np.int32)
    return resize_to_frame(decoded, height, width)


def reframe(
    pixels: np.ndarray, box: np.ndarray, frame: tuple[int, int], image_id: str = "?"
) -> tuple[np.ndarray, np.ndarray]:
    """A stored frame with its valid region, in the training frame `frame`.

    Raw-pixel datasets store the frame they were built for: read as they are when the run uses
    that frame (no resampling), else their valid region is framed anew.
    """
    box = np.asarray(box, np.int32)
    if pixels.shape[:2] == tuple(frame):
        return pixels, box
    top, left, height, width = (int(v) for v in box)
    return frame_image(pixels[top : top + height, left : left + width], frame, image_id)


def prepare_image(image: Any, image_size: int, image_id: str = "?") -> np.ndarray:
    """Decodes if needed, resizes the short side to `image_size` and crops the centre square."""
    return resize_centre_square(decode_image(image, image_size, image_id), image_size)
