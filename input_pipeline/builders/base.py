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
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from input_pipeline.builders import csv_layout, fingerprint, image_files
from input_pipeline.builders.csv_layout import DataError, Problem
from input_pipeline.builders.image_files import Item

# Key of this project's block inside the TFDS metadata (`metadata.json` next to the records).
METADATA_KEY = "spmix"
METADATA_FORMAT = 1
# Keys are spread over [0, 2**128), the range of TFDS's example keys (see _generate_examples).
_KEY_RANGE = 2**128
# Examples prepared ahead of the writer (bounds memory while keeping the threads busy).
_PREFETCH = 64


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


class ArrayRecordBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):  # type: ignore[call-arg]
    """A GeneratorBasedBuilder that writes ArrayRecord in a fixed order with per-split labels.

    Build-time switches that do not change what a valid dataset contains (`skip_bad`, the thread
    count) are constructor arguments; everything that does lives in the BuilderConfig.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}

    def __init__(self, *, skip_bad: bool = False, num_threads: int = 0, **kwargs: Any):
        self._skip_bad = skip_bad
        self._num_threads = num_threads or image_files.default_num_threads()
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
        self, splits: Mapping[str, Sequence[Item]], report: BuildReport, source: str
    ) -> dict[str, Iterator[tuple[int, dict[str, Any]]]]:
        """Records labels, counts and the report in the metadata; returns the split generators.

        Refuses a train split with an empty class (`source` names the input in the message) and
        logs the report's warnings first; a dataset without a train split (a folder kept whole
        for evaluation) may miss classes. Items are written sorted by image id; the stored
        labels follow the same order.
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
        }
        return {name: self._generate_examples(items) for name, items in ordered.items()}

    def _prepare(self, item: Item) -> bytes:
        try:
            raw = image_files.read_image_bytes(item.ref)
            data, changed = image_files.prepare_image(raw, self._short_side())
            turned = changed and image_files.is_turned(raw)
        except Exception as e:  # checked before writing, so this means the file changed since
            raise DataError(f"{item.origin}: image {item.ref} could not be prepared: {e}") from e
        if changed:
            with self._reencoded_lock:
                self._reencoded += 1
                self._turned += turned
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
                yield (
                    index * stride,
                    {
                        "image": pending.popleft().result(),
                        "label": item.label,
                        "image_id": item.image_id,
                        "lesion_id": item.lesion_id,
                    },
                )
        block = self.info.metadata.get(METADATA_KEY)
        if block is not None:  # keep the re-encoding count current as splits finish
            block["report"]["reencoded"] = self._reencoded
            block["report"]["turned_upright"] = self._turned
