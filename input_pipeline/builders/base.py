"""Machinery shared by the dataset builders: image stores, image checks, splits, writing.

A build runs in three phases. *Plan*: parse CSVs and match their rows to image files (folders or
zip archives), collecting every bad item as a `Problem`. *Check*: decode every image once (in
threads) so a corrupt or truncated file is found before anything is written. *Write*: the
surviving items, in a fixed order per split, go to ArrayRecord through TFDS; labels and class
counts per split are stored in the dataset's metadata so readers never decode images to get them.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import io
import os
import threading
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from input_pipeline import csv_layout
from input_pipeline.csv_layout import DataError, Problem

# Key of this project's block inside the TFDS metadata (`metadata.json` next to the records).
METADATA_KEY = "spmix"
METADATA_FORMAT = 1
JPEG_QUALITY = 95
# Keys are spread over [0, 2**128), the range of TFDS's example keys (see _generate_examples).
_KEY_RANGE = 2**128
# Examples prepared ahead of the writer (bounds memory while keeping the threads busy).
_PREFETCH = 64


def default_num_threads() -> int:
    """Threads for decoding and encoding; PIL releases the GIL while it does either."""
    return max(1, min(16, os.cpu_count() or 1))


# ------------------------------------------------------------------------------------------
# Image stores
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ImageRef:
    """Where an image's bytes live: a file, or a member of a zip archive at `path`."""

    path: str
    member: str = ""

    def __str__(self) -> str:
        return f"{self.path}:{self.member}" if self.member else self.path


_thread_state = threading.local()


def _open_zip(path: str) -> zipfile.ZipFile:
    """One open handle per archive and thread (ZipFile reads are not safe to interleave)."""
    zips = getattr(_thread_state, "zips", None)
    if zips is None:
        zips = _thread_state.zips = {}
    if path not in zips:
        zips[path] = zipfile.ZipFile(path)
    return zips[path]


def read_image_bytes(ref: ImageRef) -> bytes:
    """The stored bytes of `ref`, unchanged."""
    if ref.member:
        return _open_zip(ref.path).read(ref.member)
    return epath.Path(ref.path).read_bytes()


def _is_image_name(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    if any(p == "__MACOSX" or p.startswith(".") for p in parts):
        return False  # macOS archive metadata and hidden files are not images
    return os.path.splitext(parts[-1])[1].lower() in csv_layout.IMAGE_EXTENSIONS


@dataclasses.dataclass
class ImageIndex:
    """Image id (file stem) -> location, for one folder tree or zip archive."""

    root: str
    refs: dict[str, ImageRef]
    problems: list[Problem]
    duplicates: set[str]  # ids found more than once; reported in `problems`, left out of `refs`


def index_images(root: str | os.PathLike) -> ImageIndex:
    """Indexes every image file under a folder (recursively) or inside a `.zip` archive.

    Ids are file stems (`ISIC_0024306.jpg` -> `ISIC_0024306`). An id found twice (two
    extensions, two sub-folders) is ambiguous: it becomes a `duplicate_id` problem.
    """
    root = os.fspath(root)
    found: dict[str, list[ImageRef]] = collections.defaultdict(list)
    if os.path.isfile(root) and zipfile.is_zipfile(root):
        with zipfile.ZipFile(root) as zf:
            for info in zf.infolist():
                if not info.is_dir() and _is_image_name(info.filename):
                    stem = os.path.splitext(info.filename.rsplit("/", 1)[-1])[0]
                    found[stem].append(ImageRef(root, info.filename))
    elif os.path.isdir(root):
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d != "__MACOSX" and not d.startswith("."))
            for name in sorted(filenames):
                if _is_image_name(name):
                    found[os.path.splitext(name)[0]].append(ImageRef(os.path.join(dirpath, name)))
    else:
        raise DataError(f"{root}: not a folder or zip archive of images")
    refs: dict[str, ImageRef] = {}
    problems: list[Problem] = []
    duplicates: set[str] = set()
    for image_id in sorted(found):
        locations = found[image_id]
        if len(locations) == 1:
            refs[image_id] = locations[0]
        else:
            duplicates.add(image_id)
            shown = ", ".join(str(r) for r in locations)
            problems.append(
                Problem(
                    "duplicate_id", str(locations[1]), 0, image_id,
                    f"image id {image_id} has {len(locations)} files ({shown}); expected one "
                    "file per id",
                )
            )
    return ImageIndex(root, refs, problems, duplicates)


# ------------------------------------------------------------------------------------------
# Items: one future example
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Item:
    """An example to write: label -1 means no ground truth; `file`/`line` say where it came from."""

    image_id: str
    label: int
    lesion_id: str
    ref: ImageRef
    file: str = ""
    line: int = 0

    @property
    def origin(self) -> str:
        if self.line:
            return f"{self.file}, line {self.line}"
        return self.file or str(self.ref)


def match_rows(
    rows: Sequence[csv_layout.LabelRow],
    index: ImageIndex,
    lesions: Mapping[str, str] | None = None,
) -> tuple[list[Item], list[Problem]]:
    """Pairs each labelled row with its image file; a row without a file is `missing_image`."""
    lesions = lesions or {}
    items: list[Item] = []
    problems: list[Problem] = []
    extensions = "/".join(csv_layout.IMAGE_EXTENSIONS)
    for row in rows:
        if row.image_id in index.duplicates:
            continue  # already reported by the index
        ref = index.refs.get(row.image_id)
        if ref is None:
            problems.append(
                Problem(
                    "missing_image", row.file, row.line, row.image_id,
                    f"no image file for {row.image_id}; expected {row.image_id}"
                    f"{{{extensions}}} under {index.root}",
                )
            )
            continue
        lesion = row.lesion_id or lesions.get(row.image_id, "")
        items.append(Item(row.image_id, row.label, lesion, ref, row.file, row.line))
    return items, problems


# ------------------------------------------------------------------------------------------
# Images: check and prepare
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    mode: str
    format: str


def inspect_image(data: bytes) -> ImageInfo:
    """Decodes `data` completely; raises ValueError if it is not a whole, readable image.

    A full decode (not just the header) is what catches truncated JPEGs.
    """
    if not data:
        raise ValueError("the file is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, mode = im.format or "", im.mode
            im.load()
            if mode != "RGB":
                im.convert("RGB")
            width, height = im.size
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError
        raise ValueError(f"{type(e).__name__}: {e}") from None
    if width < 1 or height < 1:
        raise ValueError(f"image has size {width}x{height}")
    return ImageInfo(width, height, mode, fmt)


def short_side_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) scaled so the shorter side is `short_side`, rounding half up."""
    scale = short_side / min(width, height)
    if width <= height:
        return short_side, max(1, int(height * scale + 0.5))
    return max(1, int(width * scale + 0.5)), short_side


def _is_8bit_png(data: bytes) -> bool:
    # IHDR is the first chunk: 8-byte signature, 4 length, 4 type, 4 width, 4 height, bit depth.
    return len(data) > 24 and data[24] == 8


def prepare_image(data: bytes, short_side: int = 0) -> tuple[bytes, bool]:
    """The bytes to store for an image and whether they differ from `data`.

    `short_side == 0`: RGB JPEGs and 8-bit RGB PNGs are kept byte for byte; other modes or
    formats are converted to RGB (JPEG stays JPEG at quality 95, anything else becomes PNG) so
    every stored image decodes to uint8 (H, W, 3). `short_side > 0`: images whose shorter side
    exceeds it are downscaled (bicubic, antialiased) to that short side and stored as JPEG
    quality 95; smaller images are not upscaled.
    """
    with Image.open(io.BytesIO(data)) as im:
        fmt, mode = im.format, im.mode
        width, height = im.size
        keep = mode == "RGB" and (fmt == "JPEG" or (fmt == "PNG" and _is_8bit_png(data)))
        resize = short_side > 0 and min(width, height) > short_side
        if keep and not resize:
            return data, False
        rgb = im.convert("RGB")
    if resize:
        size = short_side_size(width, height, short_side)
        rgb = rgb.resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    if resize or fmt == "JPEG":
        rgb.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        rgb.save(buffer, format="PNG")
    return buffer.getvalue(), True


def _check_item(item: Item) -> Problem | None:
    try:
        data = read_image_bytes(item.ref)
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        return Problem(
            "unreadable_image", item.file or str(item.ref), item.line, item.image_id,
            f"image {item.ref} for {item.image_id} cannot be read: {e}",
        )
    try:
        inspect_image(data)
    except ValueError as e:
        return Problem(
            "corrupt_image", item.file or str(item.ref), item.line, item.image_id,
            f"image {item.ref} for {item.image_id} cannot be decoded ({e}); expected a "
            "complete JPEG or PNG file",
        )
    return None


def _progress(iterable, total: int, desc: str):
    """A tqdm bar on terminals; silent in logs and tests."""
    try:
        from tqdm import auto as tqdm_auto
    except ImportError:  # pragma: no cover - tqdm comes with tensorflow-datasets
        return iterable
    return tqdm_auto.tqdm(iterable, total=total, desc=desc, unit=" img", disable=None)


def check_images(
    items: Sequence[Item], desc: str = "Checking images", num_threads: int = 0
) -> tuple[list[Item], list[Problem]]:
    """Decodes every item's image; returns the readable items and a problem per bad one."""
    good: list[Item] = []
    problems: list[Problem] = []
    workers = num_threads or default_num_threads()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = pool.map(_check_item, items)
        for item, problem in _progress(zip(items, results, strict=True), len(items), desc):
            if problem is None:
                good.append(item)
            else:
                problems.append(problem)
    return good, problems


# ------------------------------------------------------------------------------------------
# Splits
# ------------------------------------------------------------------------------------------
def grouped_split(
    labels: Sequence[int] | np.ndarray,
    groups: Sequence[str],
    fractions: Sequence[float],
    seed: int,
) -> np.ndarray:
    """Assigns every example to a split index so that no group crosses splits.

    Stratified by class: each group takes the most common label of its members (ties: lowest
    index); per class, the groups (sorted by name, then shuffled with `seed`) are dealt one by
    one to the split furthest below its share of that class's images. The first group of every
    class goes to split 0, so split 0 (train) holds every class that has data. The result does
    not depend on the order of the inputs.
    """
    labels = np.asarray(labels, np.int64)
    fractions = np.asarray(fractions, np.float64)
    if len(labels) != len(groups):
        raise ValueError(f"{len(labels)} labels but {len(groups)} groups")
    if fractions.ndim != 1 or len(fractions) == 0 or np.any(fractions < 0) or fractions[0] <= 0:
        raise ValueError(f"split fractions must be >= 0 with the first > 0, got {fractions}")
    fractions = fractions / fractions.sum()
    members: dict[str, list[int]] = collections.defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    by_class: dict[int, list[str]] = collections.defaultdict(list)
    for g in sorted(members):
        counts = np.bincount(labels[members[g]] + 1)  # +1 keeps an unknown label (-1) countable
        by_class[int(np.argmax(counts)) - 1].append(g)
    rng = np.random.default_rng(seed)
    assignment = np.zeros(len(labels), np.int64)
    for label in sorted(by_class):
        names = by_class[label]
        order = rng.permutation(len(names))
        target = fractions * sum(len(members[g]) for g in names)
        filled = np.zeros(len(fractions))
        for rank, j in enumerate(order):
            g = names[j]
            split = 0 if rank == 0 else int(np.argmax(target - filled))
            filled[split] += len(members[g])
            assignment[members[g]] = split
    return assignment


def holdout_per_class(
    labels: Sequence[int] | np.ndarray,
    ids: Sequence[str],
    per_class: int,
    seed: int,
    class_names: Sequence[str],
) -> np.ndarray:
    """Boolean mask of `per_class` examples of every class held out, chosen with `seed`.

    Within a class the candidates are ordered by id before the seeded draw, so the choice does
    not depend on the input order. At least one example per class must stay in training.
    """
    labels = np.asarray(labels, np.int64)
    ids = np.asarray(ids, dtype=object)
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), bool)
    for k, name in enumerate(class_names):
        candidates = np.flatnonzero(labels == k)
        candidates = candidates[np.argsort(ids[candidates], kind="stable")]
        if len(candidates) <= per_class:
            raise DataError(
                f"class {name} has {len(candidates)} pooled images; holding out {per_class} "
                "per class needs at least one more to train on"
            )
        mask[candidates[rng.choice(len(candidates), per_class, replace=False)]] = True
    return mask


# ------------------------------------------------------------------------------------------
# Build report and the shared TFDS builder
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class BuildReport:
    """What happened to the input besides being written: nothing is dropped without a trace."""

    skipped: list[Problem] = dataclasses.field(default_factory=list)
    reencoded: int = 0
    unlisted_images: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "skipped_counts": dict(collections.Counter(p.kind for p in self.skipped)),
            "skipped": [p.to_json() for p in self.skipped],
            "reencoded": self.reencoded,
            "num_unlisted_images": len(self.unlisted_images),
            "unlisted_images": self.unlisted_images[:100],
            "warnings": self.warnings,
        }


def features(class_names: Sequence[str]) -> tfds.features.FeaturesDict:
    """The feature set of every dataset this package builds."""
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(names=list(class_names)),
            "image_id": tfds.features.Text(),
            "lesion_id": tfds.features.Text(),
        }
    )


class ArrayRecordBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A GeneratorBasedBuilder that writes ArrayRecord in a fixed order with per-split labels.

    Build-time switches that do not change what a valid dataset contains (`skip_bad`, the thread
    count) are constructor arguments; everything that does lives in the BuilderConfig.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}

    def __init__(self, *, skip_bad: bool = False, num_threads: int = 0, **kwargs: Any):
        self._skip_bad = skip_bad
        self._num_threads = num_threads or default_num_threads()
        self._reencoded = 0
        self._reencoded_lock = threading.Lock()
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    # Subclasses provide these.
    def _class_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _description(self) -> str:
        raise NotImplementedError

    def _build_params(self) -> dict[str, Any]:
        raise NotImplementedError

    def _short_side(self) -> int:
        raise NotImplementedError

    def recorded_params(self) -> dict[str, Any]:
        """The parameters stored in the metadata (what the content of the dataset depends on)."""
        return {**self._build_params(), "skip_bad": self._skip_bad}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self._description(),
            features=features(self._class_names()),
            supervised_keys=("image", "label"),
            disable_shuffling=True,  # records stay in the order of the stored label lists
            metadata=tfds.core.MetadataDict(),
        )

    def _finish(
        self, splits: Mapping[str, Sequence[Item]], report: BuildReport
    ) -> dict[str, Iterator[tuple[int, dict[str, Any]]]]:
        """Records labels, counts and the report in the metadata; returns the split generators.

        Items are written sorted by image id; the stored labels follow the same order.
        """
        class_names = self._class_names()
        meta_splits = {}
        ordered = {}
        for name, items in splits.items():
            items = sorted(items, key=lambda it: it.image_id)
            labels = [it.label for it in items]
            has_labels = all(v >= 0 for v in labels)
            counts = np.bincount(
                np.asarray([v for v in labels if v >= 0], np.int64), minlength=len(class_names)
            )
            meta_splits[name] = {
                "num_examples": len(items),
                "has_labels": has_labels,
                "labels": labels,
                "class_counts": counts.tolist(),
            }
            ordered[name] = items
        self.info.metadata[METADATA_KEY] = {
            "format": METADATA_FORMAT,
            "builder": self.name,
            "config": self.builder_config.name if self.builder_config else "",
            "params": self.recorded_params(),
            "class_names": list(class_names),
            "splits": meta_splits,
            "report": report.to_json(),
        }
        return {name: self._generate_examples(items) for name, items in ordered.items()}

    def _prepare(self, item: Item) -> bytes:
        try:
            data, changed = prepare_image(read_image_bytes(item.ref), self._short_side())
        except Exception as e:  # checked before writing, so this means the file changed since
            raise DataError(f"{item.origin}: image {item.ref} could not be prepared: {e}") from e
        if changed:
            with self._reencoded_lock:
                self._reencoded += 1
        return data

    def _generate_examples(self, items: Sequence[Item]) -> Iterator[tuple[int, dict[str, Any]]]:
        """Yields (key, example) in order; images are prepared in threads, a bounded window
        ahead of the writer.

        With shuffling disabled TFDS stores examples in key order and, past 1 GB, spills them
        into 1000 buckets by key range; keys spread evenly over that range keep the order and
        fill the buckets evenly instead of loading everything back from one.
        """
        stride = _KEY_RANGE // max(1, len(items))
        with concurrent.futures.ThreadPoolExecutor(self._num_threads) as pool:
            pending: collections.deque = collections.deque()
            next_item = 0
            for index in range(len(items)):
                while next_item < len(items) and len(pending) < _PREFETCH:
                    pending.append(pool.submit(self._prepare, items[next_item]))
                    next_item += 1
                item = items[index]
                yield index * stride, {
                    "image": pending.popleft().result(),
                    "label": item.label,
                    "image_id": item.image_id,
                    "lesion_id": item.lesion_id,
                }
        block = self.info.metadata.get(METADATA_KEY)
        if block is not None:  # keep the re-encoding count current as splits finish
            block["report"]["reencoded"] = self._reencoded
