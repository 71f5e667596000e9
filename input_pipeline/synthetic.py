"""Built-in long-tailed demo data: lesion-like images drawn procedurally on demand.

The demo and the tests need a data set that exists everywhere, costs no disk, is long-tailed like
ISIC 2018 (head class 1 = NV, about 50:1 from head to tail) and is learnable but not trivial. Each
image is drawn from a generator seeded by (seed, split, index), so any index can be read in any
order, by any worker, and always gives the same pixels.

What tells the classes apart is what tells real lesions apart: colour (dark brown, tan, pink, red,
purple), texture (pigment network, mottling, scale, stripes, vessels, lacunae) and shape (regular
oval, irregular border, small ring, lobules). What blurs it: skin tone from light to dark, uneven
lighting, hair, colour jitter, random size, position, aspect and rotation, and pixel noise.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from input_pipeline.data_split import DataSplit

CLASS_NAMES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
NUM_CLASSES = len(CLASS_NAMES)
# Class indices from the most to the least frequent, as in the ISIC 2018 training counts
# (NV 6705, MEL 1113, BKL 1099, BCC 514, AKIEC 327, VASC 142, DF 115).
FREQUENCY_ORDER = (1, 0, 4, 2, 3, 6, 5)
SPLITS = ("train", "validation", "test")
_SPLIT_CODES = {name: code for code, name in enumerate(SPLITS)}
# Tag mixed into the seed of the label layout so that it never equals an image seed.
_LAYOUT_TAG = 1_000_003

_SKIN_LIGHT = np.array([0.96, 0.82, 0.74], np.float32)
_SKIN_DARK = np.array([0.48, 0.32, 0.23], np.float32)
_HAIR = np.array([0.14, 0.10, 0.08], np.float32)

# Per class: base colour, second colour, size range (semi-major axis, in units of half the image),
# aspect range (minor/major), border irregularity, edge softness (in half-image units).
_SPECS: dict[int, dict[str, Any]] = {
    0: dict(  # MEL: large, irregular, dark brown mottled with blue-grey and black
        c1=(0.32, 0.19, 0.13),
        c2=(0.36, 0.39, 0.50),
        size=(0.42, 0.70),
        aspect=(0.55, 0.95),
        irregular=0.22,
        soft=0.05,
    ),
    1: dict(  # NV: regular oval, medium brown, pigment network
        c1=(0.55, 0.36, 0.24),
        c2=(0.38, 0.24, 0.16),
        size=(0.28, 0.58),
        aspect=(0.75, 1.0),
        irregular=0.04,
        soft=0.06,
    ),
    2: dict(  # BCC: pearly pink with red branching vessels and a few blue-grey ovoids
        c1=(0.90, 0.66, 0.66),
        c2=(0.72, 0.16, 0.22),
        size=(0.30, 0.60),
        aspect=(0.60, 0.95),
        irregular=0.08,
        soft=0.10,
    ),
    3: dict(  # AKIEC: red-pink with whitish scale
        c1=(0.83, 0.46, 0.42),
        c2=(0.95, 0.91, 0.80),
        size=(0.34, 0.64),
        aspect=(0.55, 0.95),
        irregular=0.14,
        soft=0.08,
    ),
    4: dict(  # BKL: tan, waxy, cerebriform stripes, sharp border
        c1=(0.72, 0.54, 0.38),
        c2=(0.50, 0.36, 0.24),
        size=(0.34, 0.64),
        aspect=(0.60, 0.95),
        irregular=0.07,
        soft=0.03,
    ),
    5: dict(  # DF: small, brown ring around a white scar-like centre
        c1=(0.60, 0.42, 0.31),
        c2=(0.93, 0.87, 0.82),
        size=(0.20, 0.38),
        aspect=(0.80, 1.0),
        irregular=0.05,
        soft=0.07,
    ),
    6: dict(  # VASC: red-purple lobules with darker lacunae
        c1=(0.64, 0.13, 0.27),
        c2=(0.34, 0.05, 0.16),
        size=(0.26, 0.50),
        aspect=(0.70, 1.0),
        irregular=0.05,
        soft=0.05,
    ),
}


def long_tailed_counts(
    num_examples: int, imbalance: float, order: tuple[int, ...] = FREQUENCY_ORDER
) -> np.ndarray:
    """Per-class counts falling geometrically from head to tail, head/tail about `imbalance`.

    `order` lists class indices from head to tail. Counts sum to `num_examples` exactly (largest
    remainder rounding) and every class keeps at least one example. `imbalance=1` gives a balanced
    split (the first classes of `order` take the remainder).
    """
    num_classes = len(order)
    if sorted(order) != list(range(num_classes)):
        raise ValueError(f"order must be a permutation of 0..{num_classes - 1}, got {order}")
    if num_examples < num_classes:
        raise ValueError(
            f"need at least {num_classes} examples (one per class), got {num_examples}"
        )
    if not imbalance >= 1.0:
        raise ValueError(f"imbalance must be >= 1 (head/tail ratio), got {imbalance}")
    rank = np.arange(num_classes, dtype=np.float64)
    ratios = imbalance ** (-rank / max(num_classes - 1, 1))
    raw = num_examples * ratios / ratios.sum()
    by_rank = np.maximum(1, np.floor(raw)).astype(np.int64)
    deficit = num_examples - int(by_rank.sum())
    if deficit > 0:
        # Largest fractional parts first; ties go to the head (stable sort).
        by_rank[np.argsort(-(raw - np.floor(raw)), kind="stable")[:deficit]] += 1
    elif deficit < 0:
        by_rank[0] += deficit  # only the at-least-one floor can overshoot; the head absorbs it
    counts = np.zeros(num_classes, np.int64)
    counts[np.asarray(order)] = by_rank
    return counts


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1]: an (S, 1) column and a (1, S) row (broadcast)."""
    axis = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0).astype(np.float32)
    return axis[:, None], axis[None, :]


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _curvy_line(
    yy: np.ndarray,
    xx: np.ndarray,
    rng: np.random.Generator,
    width: float,
    centre=(0.0, 0.0),
    spread: float = 1.0,
) -> np.ndarray:
    """Intensity in [0, 1] of a gently curved line of the given half-width."""
    angle = _u(rng, 0.0, math.pi)
    nx, ny = math.cos(angle), math.sin(angle)
    offset = _u(rng, -0.6, 0.6) * spread
    along = (xx - centre[0]) * -ny + (yy - centre[1]) * nx
    across = (xx - centre[0]) * nx + (yy - centre[1]) * ny - offset
    across = across + _u(rng, 0.02, 0.15) * spread * np.sin(
        _u(rng, 2.0, 6.0) / spread * along + _u(rng, 0.0, 6.3)
    )
    return np.exp(-np.square(across / width))


def _draw(label: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """One (size, size, 3) uint8 image of class `label`."""
    spec = _SPECS[label]
    yy, xx = _grid(size)
    px = 2.0 / size  # one pixel in grid units

    # Skin: tone between light and dark, a lighting gradient and a vignette.
    tone = _u(rng, 0.0, 1.0) ** 1.4
    skin = (1.0 - tone) * _SKIN_LIGHT + tone * _SKIN_DARK
    skin = skin * np.float32(_u(rng, 0.9, 1.08)) + rng.normal(0, 0.02, 3).astype(np.float32)
    light_angle = _u(rng, 0.0, 2 * math.pi)
    light = (
        1.0
        + _u(rng, 0.0, 0.25) * (math.cos(light_angle) * xx + math.sin(light_angle) * yy)
        - _u(rng, 0.05, 0.35) * (xx * xx + yy * yy)
    )
    image = light[..., None] * skin

    # Lesion frame: centre, size, aspect, rotation.
    cx, cy = _u(rng, -0.3, 0.3), _u(rng, -0.3, 0.3)
    radius = _u(rng, *spec["size"])
    minor = radius * _u(rng, *spec["aspect"])
    rot = _u(rng, 0.0, math.pi)
    cos_r, sin_r = math.cos(rot), math.sin(rot)
    dx, dy = xx - cx, yy - cy
    u = (dx * cos_r + dy * sin_r) / radius
    v = (-dx * sin_r + dy * cos_r) / minor
    r = np.sqrt(u * u + v * v)
    theta = np.arctan2(v, u)
    border = np.ones_like(r)
    for k in range(2, 6):
        border = border + spec["irregular"] * _u(rng, 0.3, 1.0) / math.sqrt(k) * np.cos(
            k * theta + _u(rng, 0.0, 2 * math.pi)
        )
    soft = max(spec["soft"] / radius, 1.5 * px / radius)
    mask = np.clip((border - r) / soft + 0.5, 0.0, 1.0)

    c1 = np.asarray(spec["c1"], np.float32) * np.float32(_u(rng, 0.85, 1.12))
    c1 = c1 + rng.normal(0, 0.03, 3).astype(np.float32)
    c2 = np.asarray(spec["c2"], np.float32) + rng.normal(0, 0.03, 3).astype(np.float32)
    mix = np.zeros_like(r)  # share of the second colour
    shade = np.ones_like(r)  # multiplicative shading of the lesion
    if label == 0:  # MEL: mottled blue-grey, darker centre, black dots
        f1, f2 = _u(rng, 3.0, 6.0), _u(rng, 3.0, 6.0)
        a1, a2 = _u(rng, 0, math.pi), _u(rng, 0, math.pi)
        mottle = np.sin(f1 * (u * math.cos(a1) + v * math.sin(a1)) + _u(rng, 0, 6.3)) * np.sin(
            f2 * (u * math.cos(a2) + v * math.sin(a2)) + _u(rng, 0, 6.3)
        )
        mix = np.clip(mottle * 1.8 - 0.2, 0.0, 1.0)
        shade = 0.65 + 0.35 * np.clip(r, 0.0, 1.0)
    elif label == 1:  # NV: pigment network, slightly darker centre
        freq = _u(rng, 9.0, 15.0)
        net = np.minimum(np.abs(np.sin(freq * u)), np.abs(np.sin(freq * v)))
        mix = np.clip(1.0 - net * 4.0, 0.0, 1.0) * 0.8
        shade = 0.85 + 0.15 * np.clip(r, 0.0, 1.0)
    elif label == 2:  # BCC: pearly sheen, branching red vessels, blue-grey ovoids
        shade = 1.0 + 0.08 * np.clip(1.0 - r, 0.0, 1.0)
        vessels = np.zeros_like(r)
        for _ in range(int(rng.integers(2, 5))):
            line = _curvy_line(yy, xx, rng, max(1.2 * px, 0.025), (cx, cy), radius)
            vessels = np.maximum(vessels, line)
        mix = vessels
        for _ in range(int(rng.integers(0, 3))):
            ox, oy = _u(rng, -0.5, 0.5) * radius, _u(rng, -0.5, 0.5) * radius
            dot = np.exp(-((xx - cx - ox) ** 2 + (yy - cy - oy) ** 2) / (0.08 * radius) ** 2)
            shade = shade * (1.0 - 0.45 * dot)
    elif label == 3:  # AKIEC: blocky whitish scale
        cell = max(2, size // 16)
        blocks = rng.random((size // cell + 1, size // cell + 1), dtype=np.float32)
        blocks = np.repeat(np.repeat(blocks, cell, 0), cell, 1)[:size, :size]
        mix = np.clip((blocks - 0.55) * 3.0, 0.0, 1.0) * np.clip(1.2 - r, 0.0, 1.0)
    elif label == 4:  # BKL: cerebriform stripes
        freq = _u(rng, 7.0, 13.0)
        stripes = np.sin(freq * (u + 0.25 * np.sin(3.0 * v + _u(rng, 0, 6.3))))
        mix = np.clip(stripes, 0.0, 1.0) * 0.9
    elif label == 5:  # DF: white centre inside a brown ring
        inner = _u(rng, 0.35, 0.6)
        mix = np.clip((inner - r) / 0.18 + 0.5, 0.0, 1.0)
    elif label == 6:  # VASC: lobules, each with a dark lacuna, replace the single oval
        lobes = np.zeros_like(r)
        lacunae = np.zeros_like(r)
        for _ in range(int(rng.integers(3, 7))):
            ox, oy = _u(rng, -0.6, 0.6) * radius, _u(rng, -0.6, 0.6) * radius
            lr = radius * _u(rng, 0.3, 0.55)
            d = np.sqrt((xx - cx - ox) ** 2 + (yy - cy - oy) ** 2) / lr
            lobes = np.maximum(lobes, np.clip((1.0 - d) / max(0.15, 1.5 * px / lr) + 0.5, 0, 1))
            lacunae = np.maximum(lacunae, np.clip(1.0 - d * 1.6, 0.0, 1.0))
        mask = lobes
        mix = lacunae
    else:
        raise ValueError(f"unknown synthetic class {label}")

    lesion = ((1.0 - mix)[..., None] * c1 + mix[..., None] * c2) * shade[..., None]
    lesion = lesion * light[..., None]
    alpha = (mask * np.float32(_u(rng, 0.75, 1.0)))[..., None]
    image = image * (1.0 - alpha) + lesion * alpha

    # Hair: a few dark curved lines over everything.
    for _ in range(int(rng.poisson(1.0))):
        hair = _curvy_line(yy, xx, rng, max(0.7 * px, 0.012))[..., None]
        hair = hair * np.float32(_u(rng, 0.5, 0.9))
        image = image * (1.0 - hair) + _HAIR * hair

    image = image + rng.standard_normal((size, size, 3), dtype=np.float32) * np.float32(0.02)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


class SyntheticSource:
    """Random-access source of procedurally drawn, long-tailed lesion-like images.

    `source[i]` -> {'image': uint8 (S, S, 3), 'label': int, 'image_id': str, 'lesion_id': str},
    drawn when asked from a generator seeded by (seed, split, i). Labels are laid out by a seeded
    shuffle of the per-class counts, so neighbouring indices have unrelated classes.
    """

    def __init__(self, num_examples: int, image_size: int, imbalance: float, seed: int, split: str):
        if split not in _SPLIT_CODES:
            raise ValueError(f"unknown synthetic split {split!r}; expected one of {SPLITS}")
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8, got {image_size}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.num_examples = int(num_examples)
        self.image_size = int(image_size)
        self.imbalance = float(imbalance)
        self.seed = int(seed)
        self.split = split
        self.class_counts = long_tailed_counts(self.num_examples, self.imbalance)
        layout = np.random.default_rng([self.seed, _SPLIT_CODES[split], _LAYOUT_TAG])
        labels = np.repeat(np.arange(NUM_CLASSES, dtype=np.int64), self.class_counts)
        self.labels = layout.permutation(labels)

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} examples")
        rng = np.random.default_rng([self.seed, _SPLIT_CODES[self.split], index])
        label = int(self.labels[index])
        image_id = f"SYN_{self.split}_{index:07d}"
        return {
            "image": _draw(label, rng, self.image_size),
            "label": label,
            "image_id": image_id,
            "lesion_id": f"SYN_L_{self.split}_{index:07d}",
        }

    def __repr__(self) -> str:
        return (
            f"SyntheticSource(num_examples={self.num_examples}, image_size={self.image_size}, "
            f"imbalance={self.imbalance}, seed={self.seed}, split={self.split!r})"
        )


def get_split(data_cfg: Any, split: str) -> DataSplit:
    """The synthetic split as a `DataSplit`: train long-tailed, eval splits balanced.

    Reads data_cfg.synthetic.{num_train, num_eval, imbalance, seed} and data_cfg.image_size.
    'validation' and 'test' are drawn from other seeds than 'train' (and from each other).
    """
    syn = data_cfg.synthetic
    num_classes = int(getattr(data_cfg, "num_classes", NUM_CLASSES))
    if num_classes not in (0, NUM_CLASSES):  # 0: unset, the data's own
        raise ValueError(f"synthetic data has {NUM_CLASSES} classes, config asks for {num_classes}")
    if split == "train":
        source = SyntheticSource(syn.num_train, data_cfg.image_size, syn.imbalance, syn.seed, split)
    elif split in ("validation", "test"):
        source = SyntheticSource(syn.num_eval, data_cfg.image_size, 1.0, syn.seed, split)
    else:
        raise ValueError(f"unknown synthetic split {split!r}; expected one of {SPLITS}")
    return DataSplit(
        source=source,
        class_counts=long_tailed_counts(syn.num_train, syn.imbalance),
        class_names=CLASS_NAMES,
        split=split,
        labels=source.labels.copy(),
    )
