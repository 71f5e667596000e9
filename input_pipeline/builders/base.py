"""The TFDS builder shared by this package's datasets, and what it records besides the images.

A build runs in three phases. *Plan*: parse CSVs and match their rows to image files (folders or
zip archives), collecting every bad item as a `Problem` (`csv_layout`, `image_files`). *Check*:
decode every image once so a corrupt or truncated file is found before anything is written.
*Write* (here): the surviving items, in a fixed order per split, go to ArrayRecord through TFDS;
labels and class counts per split are stored in the dataset's metadata so readers never decode
images to get them.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from input_pipeline import host_images
from input_pipeline.builders import csv_layout, fingerprint, image_files
from input_pipeline.builders.csv_layout import DataError, Problem
from input_pipeline.builders.image_files import Item
from input_pipeline.data_split import as_rgb_uint8

# Key of this project's block inside the TFDS metadata (`metadata.json` next to the records).
METADATA_KEY = "spmix"
METADATA_FORMAT = 1
# Keys are spread over [0, 2**128), the range of TFDS's example keys (see _generate_examples).
_KEY_RANGE = 2**128
# Examples prepared ahead of the writer (bounds memory while keeping the threads busy).
_PREFETCH = 64
# How images are stored: encoded as built (`jpeg`, the default: the reader decodes and frames
# every sample), or `raw`, each image once decoded into its training frame with its valid
# region, so that the reader only copies (docs/method.md section 3).
STORAGES = ("jpeg", "raw")
# Bytes a raw record adds to its pixels (box, label, ids, ArrayRecord and proto framing); an
# upper bound, so that the disk check errs on the side of room.
_RAW_RECORD_OVERHEAD = 512
# ArrayRecord options of raw-pixel files: one record a chunk (random access), no compression.
_RAW_WRITER_OPTIONS = "group_size:1,uncompressed"
# Free space the disk keeps beyond the estimate (TFDS metadata, a partly filled chunk).
_DISK_MARGIN = 1.05
# The decoder of stored images that readers use (TFDS's own), so a raw build sees their pixels.
_JPEG_FEATURE = tfds.features.Image(shape=(None, None, 3))


@dataclasses.dataclass
class BuildReport:
    """What happened to the input besides being written: nothing is dropped without a trace."""

    skipped: list[Problem] = dataclasses.field(default_factory=list)
    reencoded: int = 0
    turned_upright: int = 0  # of the re-encoded: photos with an EXIF orientation tag 2-8
    unlisted_images: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "skipped_counts": dict(collections.Counter(p.kind for p in self.skipped)),
            "skipped": [p.to_json() for p in self.skipped],
            "reencoded": self.reencoded,
            "turned_upright": self.turned_upright,
            "num_unlisted_images": len(self.unlisted_images),
            "unlisted_images": self.unlisted_images[:100],
            "warnings": self.warnings,
        }


_STORAGE_NAME = re.compile(r"^(?P<images>original|short(?P<size>\d+))(?:_seed(?P<seed>\d+))?$")


def storage_config_name(builder: str, name: str, seed: int | None = None) -> tuple[str, int, int]:
    """(canonical name, short side, split seed) of a config named `(original|short<N>)` with an
    optional `_seed<S>` (`seed` overrides it); 0 as short side keeps the original bytes."""
    match = _STORAGE_NAME.match(name)
    if match is None:
        raise ValueError(
            f"unknown {builder} config {name!r}; expected short256, original or short<N>, "
            "optionally with _seed<S>"
        )
    short_side = int(match["size"] or 0)
    if match["images"].startswith("short") and short_side <= 0:
        raise ValueError(f"{name!r}: short<N> needs N > 0")
    chosen_seed = seed if seed is not None else int(match["seed"] or 0)
    return match["images"] + (f"_seed{chosen_seed}" if chosen_seed else ""), short_side, chosen_seed


def features(
    class_names: Sequence[str], frame: tuple[int, int] | None = None
) -> tfds.features.FeaturesDict:
    """The feature set of every dataset this package builds; with `frame` (raw storage) each
    image is its uint8 (height, width, 3) frame plus its valid region `box`."""
    image: Any = tfds.features.Image(shape=(None, None, 3))
    extra: dict[str, Any] = {}
    if frame is not None:
        image = tfds.features.Tensor(
            shape=(*frame, 3), dtype=np.uint8, encoding=tfds.features.Encoding.BYTES
        )
        extra["box"] = tfds.features.Tensor(shape=(4,), dtype=np.int32)
    return tfds.features.FeaturesDict(
        {
            "image": image,
            **extra,
            "label": tfds.features.ClassLabel(names=list(class_names)),
            "image_id": tfds.features.Text(),
            "lesion_id": tfds.features.Text(),
        }
    )


def raw_frame(frame_size: int, frame_aspect: float) -> tuple[int, int]:
    """(height, width) of the frame a raw build stores: the training frame of a run with
    `data.image_size=frame_size`, `data.image_aspect=frame_aspect`."""
    if frame_size < 1:
        raise ValueError(f"--frame_size must be a positive number of pixels, got {frame_size}")
    return host_images.frame_shape(frame_size, frame_aspect)


def raw_bytes(num_images: int, frame: tuple[int, int]) -> int:
    """Bytes a raw build of `num_images` images in `frame` writes (an upper bound)."""
    return num_images * (frame[0] * frame[1] * 3 + _RAW_RECORD_OVERHEAD)


def store_uncompressed(path: str | os.PathLike) -> None:
    """Rewrites the ArrayRecord files of a raw-pixel dataset without compression.

    TFDS writes ArrayRecord compressed; pixels gain little from it (about 1.5x) and reading a
    frame then costs a decompression per sample, several times the read itself. Each file is
    rewritten next to itself and swapped in, one at a time.
    """
    from array_record.python import array_record_data_source, array_record_module

    for shard in sorted(epath.Path(path).glob("*.array_record-*")):
        staged = shard.parent / f".{shard.name}.uncompressed"
        writer = array_record_module.ArrayRecordWriter(os.fspath(staged), _RAW_WRITER_OPTIONS)
        with array_record_data_source.ArrayRecordDataSource([os.fspath(shard)]) as reader:
            for start in range(0, len(reader), _PREFETCH):
                keys = range(start, min(start + _PREFETCH, len(reader)))
                for record in reader.__getitems__(keys):
                    writer.write(record)
        writer.close()
        staged.replace(shard)


def check_disk_room(path: str, needed: int) -> None:
    """Refuses to start writing `needed` bytes under `path` when its disk has less room."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    free = shutil.disk_usage(existing).free
    if free < needed * _DISK_MARGIN:
        raise DataError(
            f"{path}: the raw-pixel build writes {needed / 1e9:.2f} GB but the disk holding "
            f"{existing} has {free / 1e9:.2f} GB free; free space, choose another --data_dir, "
            "lower --frame_size, or build with --storage=jpeg"
        )


class ArrayRecordBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):  # type: ignore[call-arg]
    """A GeneratorBasedBuilder that writes ArrayRecord in a fixed order with per-split labels.

    Build-time switches that do not change what a valid dataset contains (`skip_bad`, the thread
    count) are constructor arguments; everything that does lives in the BuilderConfig.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}

    def __init__(
        self,
        *,
        skip_bad: bool = False,
        num_threads: int = 0,
        max_image_mb: int = image_files.DEFAULT_MAX_IMAGE_MB,
        storage: str = "jpeg",
        frame: tuple[int, int] | None = None,
        **kwargs: Any,
    ):
        if storage not in STORAGES:
            raise ValueError(f"--storage must be one of {STORAGES}, got {storage!r}")
        if (storage == "raw") != (frame is not None):
            raise ValueError("a raw-pixel build needs its frame (and only a raw build has one)")
        self._storage = storage
        self._frame = None if frame is None else (int(frame[0]), int(frame[1]))
        self._skip_bad = skip_bad
        self._num_threads = num_threads or image_files.default_num_threads()
        self._max_image_bytes = max_image_mb << 20  # larger files are refused, not read
        self._reencoded = 0
        self._turned = 0
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

    def _fingerprint_roots(self, source: str) -> tuple[str, list[str]]:
        """(source folder, files and folders read) for the source fingerprint; by default the
        `source` given to `_finish` (e.g. the manual dir)."""
        return source, [source]

    def recorded_params(self) -> dict[str, Any]:
        """The parameters stored in the metadata (what the content of the dataset depends on)."""
        raw = {"storage": "raw", "frame": list(self._frame)} if self._frame else {}
        return {**self._build_params(), **raw, "skip_bad": self._skip_bad}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self._description(),
            features=features(self._class_names(), self._frame),
            supervised_keys=("image", "label"),
            disable_shuffling=True,  # records stay in the order of the stored label lists
            metadata=tfds.core.MetadataDict(),
        )

    def _finish(
        self,
        splits: Mapping[str, Sequence[Item]],
        report: BuildReport,
        source: str,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Iterator[tuple[int, dict[str, Any]]]]:
        """Records labels, counts and the report in the metadata; returns the split generators.

        Refuses a train split with an empty class (`source` names the input in the message) and
        logs the report's warnings first; a dataset without a train split (a folder kept whole
        for evaluation) may miss classes. Items are written sorted by image id; the stored
        labels follow the same order. `extra` adds builder-specific entries to the metadata
        block (e.g. clinical columns kept for later models).
        """
        class_names = self._class_names()
        if "train" in splits:
            csv_layout.check_no_empty_class(
                [it.label for it in splits["train"]], class_names, f"{source} (train split)"
            )
        for warning in report.warnings:
            logging.warning("%s", warning)
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
        if self._frame is not None:  # the size is known exactly: say it, and check the room
            needed = raw_bytes(sum(len(items) for items in ordered.values()), self._frame)
            frame_text = f"{self._frame[0]}x{self._frame[1]}"
            print(
                f"Raw-pixel storage: {needed / 1e9:.2f} GB ({needed} bytes) for "
                f"{sum(len(items) for items in ordered.values())} images in a {frame_text} frame",
                flush=True,
            )
            check_disk_room(os.fspath(self.data_dir), needed)
        self.info.metadata[METADATA_KEY] = {
            "format": METADATA_FORMAT,
            "builder": self.name,
            "config": self.builder_config.name if self.builder_config else "",
            "params": self.recorded_params(),
            "class_names": list(class_names),
            "splits": meta_splits,
            "report": report.to_json(),
            # Lets training notice a source that changed after this build (sources.py).
            "source_fingerprint": fingerprint.compute(
                *self._fingerprint_roots(source), str(self.VERSION), self.recorded_params()
            ),
            **(extra or {}),
        }
        return {name: self._generate_examples(items) for name, items in ordered.items()}

    def _prepare(self, item: Item) -> dict[str, Any]:
        """The image features of `item`: its stored bytes, or (raw) its frame and box."""
        try:
            raw = image_files.read_image_bytes(item.ref, self._max_image_bytes)
            data, changed = image_files.prepare_image(raw, self._short_side())
            turned = changed and image_files.is_turned(raw)
            if self._frame is not None:
                # Decoded as the reader decodes the stored JPEG, then framed as it frames it.
                decoded = _JPEG_FEATURE.decode_example_np(data)
                frame, box = host_images.frame_image(
                    as_rgb_uint8(decoded, item.image_id), self._frame, item.image_id
                )
                result: dict[str, Any] = {"image": frame, "box": box}
            else:
                result = {"image": data}
        except Exception as e:  # checked before writing, so this means the file changed since
            raise DataError(f"{item.origin}: image {item.ref} could not be prepared: {e}") from e
        if changed:
            with self._reencoded_lock:
                self._reencoded += 1
                self._turned += turned
        return result

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
                yield (
                    index * stride,
                    {
                        **pending.popleft().result(),
                        "label": item.label,
                        "image_id": item.image_id,
                        "lesion_id": item.lesion_id,
                    },
                )
        block = self.info.metadata.get(METADATA_KEY)
        if block is not None:  # keep the re-encoding count current as splits finish
            block["report"]["reencoded"] = self._reencoded
            block["report"]["turned_upright"] = self._turned


@dataclasses.dataclass(eq=False)
class GroupSplitConfig(tfds.core.BuilderConfig):
    """A release split here by group (lesion, patient): short_side 0 keeps the original bytes;
    `split_fractions` (train, validation, test) and `seed` draw the split."""

    short_side: int = 256
    split_fractions: tuple[float, ...] = (0.8, 0.1, 0.1)
    seed: int = 0


class GroupSplitBuilder(ArrayRecordBuilder):
    """A builder of fixed classes (`CLASSES`) whose configs are `GroupSplitConfig`s named
    `(original|short<N>)[_seed<S>]`; subclasses plan the items and split them."""

    CLASSES: tuple[str, ...] = ()
    TITLE = ""

    @property
    def _config(self) -> GroupSplitConfig:
        return self.builder_config

    def _class_names(self) -> tuple[str, ...]:
        return self.CLASSES

    def _description(self) -> str:
        return self._config.description or self.TITLE

    def _short_side(self) -> int:
        return self._config.short_side

    def _build_params(self) -> dict[str, Any]:
        c = self._config
        return {
            "short_side": c.short_side,
            "split_fractions": list(c.split_fractions),
            "seed": c.seed,
        }


def make_group_split_config(
    name: str, short_side: int, seed: int, *, split: str
) -> GroupSplitConfig:
    """A `GroupSplitConfig` whose description says how the release is split (`split`, with
    `{seed}` filled in) and how its images are stored."""
    images = image_files.describe_storage(short_side)
    return GroupSplitConfig(
        name=name,
        description=f"{split.format(seed=seed)}; images: {images}.",
        short_side=short_side,
        seed=seed,
    )


def group_split_config(
    builder: type[GroupSplitBuilder],
    name: str,
    seed: int | None,
    make: Callable[[str, int, int], GroupSplitConfig],
) -> str | GroupSplitConfig:
    """Resolves `(original|short<N>)[_seed<S>]` (plus an optional seed) to a config of
    `builder`: predefined names come back as strings, anything else as a config `make` builds
    from (name, short side, seed), its name spelling its values."""
    canonical, short_side, chosen_seed = storage_config_name(builder.name, name, seed)
    if canonical in {c.name for c in builder.BUILDER_CONFIGS}:
        return canonical
    return make(canonical, short_side, chosen_seed)
