"""What a split of a dataset is for the pipeline: records by index plus labels known up front.

A leaf module (numpy only), so every source of splits (built datasets, the synthetic data, a
benchmark's own folder reader) can make one without importing the others.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass
class DataSplit:
    """One split, ready for sampling: records by index plus labels known without decoding."""

    source: Any  # random access: len(source), source[i] -> record dict
    class_counts: np.ndarray  # int64 [C], counts of the TRAIN split (for sampler/prior/groups)
    class_names: tuple[str, ...]
    split: str
    labels: np.ndarray  # int64 [len(source)], labels of THIS split; -1 = no ground truth


def as_rgb_uint8(image: Any, image_id: str = "?") -> np.ndarray:
    """A decoded image as the uint8 (H, W, 3) records carry: gray is repeated, alpha dropped.

    Accepts (H, W) or (H, W, 1|3|4) uint8 or uint16 pixels; errors name `image_id`.
    """
    image = np.asarray(image)
    if image.dtype == np.uint16:  # 16-bit samples: scaled by 255/65535, never clipped
        image = np.round(image.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    if image.dtype != np.uint8:
        raise ValueError(f"image {image_id!r} must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image {image_id!r} must be (H, W, 1|3|4), got shape {image.shape}")
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    return image[:, :, :3]
