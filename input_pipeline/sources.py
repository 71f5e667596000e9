"""The reading side: a split of a dataset as a random-access source plus its labels and counts.

`get_split(config.data, split)` is what the pipeline and training use. For `data.name`:
- `synthetic`: the built-in long-tailed data (`input_pipeline.synthetic`).
- `folder_csv` / `isic2018`: the dataset built under `<data_dir>/<name>/<builder_config>/`
  (newest version). If it is missing and `data.source_dir` is set, it is built first (a folder
  with labels.csv for folder_csv, the manual dir of downloads for isic2018, default options).
- `tfds`: any ArrayRecord dataset built by TFDS; `data_dir` is its version directory (the one
  holding `dataset_info.json`) or a parent with one dataset under it (`builder_config` picks
  the config folder when there are several). Records need `image` and `label`; a missing
  `image_id` becomes `<split>:<index>` and a missing `lesion_id` ''.

Labels never require decoding images: datasets built here store each split's labels and class
counts in `metadata.json`; for other datasets one pass reads the labels with image decoding
skipped, and the result is cached for the process.

In a multi-process run only process 0 builds a missing dataset; the others wait for it through
jax's distributed runtime (`data.data_dir` must then be a folder every host sees).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline.data_split import DataSplit, as_rgb_uint8  # also used as `sources.<name>`
from input_pipeline.errors import UserError
from input_pipeline.locate import (
    BUILT_NAMES,
    _builder,
    _stamp,
    build_metadata,
    check_records,
    dataset_dir,
    open_builder,
)

# Every value config.data.name may take (see the module docstring).
DATASET_NAMES = ("synthetic", *BUILT_NAMES, "tfds")
_LABEL_BATCH = 1024


class RecordSource:
    """Random access to decoded records of one split.

    `source[i]` -> `{'image': uint8 (H, W, 3), 'label': int, 'image_id': str,
    'lesion_id': str}`, plus `'box'` int32 (top, left, height, width) for a dataset built with
    raw-pixel storage, whose images are stored frames. Picklable (grain workers), and
    `__getitems__` reads many at once.
    """

    def __init__(self, data_source: Any, split: str, path: str):
        self._source = data_source
        self._split = split
        self._path = path

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self._source):
            raise IndexError(f"index {index} out of range for {len(self._source)} records")
        return self._record(self._source[index], index)

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        indices = [int(i) for i in indices]
        raws = self._source.__getitems__(indices)
        return [self._record(raw, i) for raw, i in zip(raws, indices, strict=True)]

    def __repr__(self) -> str:
        return f"RecordSource({self._path}, split={self._split!r}, len={len(self)})"

    def _record(self, raw: dict[str, Any], index: int) -> dict[str, Any]:
        image_id = _as_text(raw.get("image_id"), f"{self._split}:{index}")
        record = {
            "image": as_rgb_uint8(raw["image"], image_id),
            "label": int(raw["label"]),
            "image_id": image_id,
            "lesion_id": _as_text(raw.get("lesion_id"), ""),
        }
        if "box" in raw:  # raw-pixel storage: the stored frame's valid region (pipeline.py)
            record["box"] = np.asarray(raw["box"], np.int32)
        return record


def _as_text(value: Any, default: str) -> str:
    if value is None:
        return default
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return _as_text(value.item(), default)
    return str(value)


# ------------------------------------------------------------------------------------------
# Locating (and if needed building) a dataset
# ------------------------------------------------------------------------------------------
_label_lock = threading.Lock()
_label_cache: dict[tuple[str, int, str], np.ndarray] = {}


def split_labels(path: str, split: str) -> np.ndarray:
    """int64 labels of `split` in record order, without decoding images (cached)."""
    key = (path, _stamp(path), split)
    with _label_lock:
        if key in _label_cache:
            return _label_cache[key]
    meta = build_metadata(path)
    if meta is not None and split in meta["splits"]:
        labels = np.asarray(meta["splits"][split]["labels"], np.int64)
    else:
        builder = _builder(path)
        if "label" not in builder.info.features:
            raise ValueError(f"{path}: the dataset has no 'label' feature")
        decoders = {
            name: tfds.decode.SkipDecoding() for name in builder.info.features if name != "label"
        }
        raw = builder.as_data_source(split, decoders=decoders)
        labels = np.empty(len(raw), np.int64)
        for start in range(0, len(raw), _LABEL_BATCH):
            indices = list(range(start, min(start + _LABEL_BATCH, len(raw))))
            labels[start : start + len(indices)] = [
                int(r["label"]) for r in raw.__getitems__(indices)
            ]
    labels.setflags(write=False)
    with _label_lock:
        _label_cache[key] = labels
    return labels


def _check_classes(data_cfg: Any, names: tuple[str, ...], path: str) -> None:
    """The dataset owns its classes; `data.num_classes` / `data.class_names`, when set (not 0 /
    empty), only check them."""
    wanted = tuple(data_cfg.class_names)
    count = data_cfg.num_classes
    if (wanted and names != wanted) or (count and count != len(names)):
        tuple_text = "(" + ",".join(repr(n) for n in names) + ("," if len(names) == 1 else "") + ")"
        raise UserError(
            f"{path} has classes {list(names)}, but config.data says num_classes="
            f"{data_cfg.num_classes}, class_names={list(wanted)}. Leave both unset (0 and ()) "
            "to take the dataset's, or pass "
            f'--config.data.num_classes={len(names)} --config.data.class_names="{tuple_text}"'
        )


def get_split(data_cfg: Any, split: str, require_train: bool = True) -> DataSplit:
    """The split `split` of the dataset `data_cfg` (= config.data) describes.

    `class_counts` are those of the training split. `require_train=False` (evaluation) also
    opens a dataset without one, e.g. a folder built whole as `test`: the counts are then
    zeros, and `train_class_counts` returns None for it.
    """
    if data_cfg.name == "synthetic":
        from input_pipeline import (
            synthetic,
        )  # imported on first use: only synthetic configs need it

        return synthetic.get_split(data_cfg, split)
    if data_cfg.name not in DATASET_NAMES:
        raise UserError(
            f"unknown config.data.name {data_cfg.name!r}; expected one of "
            f"{', '.join(DATASET_NAMES)}"
        )
    path = dataset_dir(data_cfg)
    builder = open_builder(data_cfg, path)
    available = list(builder.info.splits)
    has_train = data_cfg.train_split in available
    for name in (split, data_cfg.train_split) if require_train else (split,):
        if name not in available:
            raise UserError(
                f"split {name!r} is not in the dataset at {path}; it has {available}. Choose "
                "one with config.data.train_split / eval_split / test_split, or rebuild with "
                "other --split_fractions."
            )
    file_format = getattr(builder.info.file_format, "value", builder.info.file_format)
    if file_format != "array_record":
        raise UserError(
            f"{path} is stored as {file_format}; random access needs ArrayRecord. Rebuild it "
            "with file_format='array_record' (python -m input_pipeline.build does)."
        )
    if "label" not in builder.info.features or "image" not in builder.info.features:
        raise UserError(
            f"{path}: records need 'image' and 'label' features, got "
            f"{sorted(builder.info.features)}"
        )
    label_feature = builder.info.features["label"]
    names = tuple(label_feature.names)
    _check_classes(data_cfg, names, path)
    check_records(data_cfg, path, split)
    labels = split_labels(path, split)
    meta = build_metadata(path)
    if meta is not None and data_cfg.train_split in meta["splits"]:
        counts = np.asarray(meta["splits"][data_cfg.train_split]["class_counts"], np.int64)
    elif not has_train:
        counts = np.zeros(len(names), np.int64)
    else:
        train = split_labels(path, data_cfg.train_split)
        counts = np.bincount(train[train >= 0], minlength=len(names)).astype(np.int64)
    source = RecordSource(builder.as_data_source(split), split, path)
    if len(source) != len(labels):
        raise UserError(
            f"{path}: split {split} has {len(source)} records but {len(labels)} stored labels; "
            "the dataset is inconsistent, rebuild it with --overwrite"
        )
    return DataSplit(
        source=source,
        class_counts=counts,
        class_names=names,
        split=split,
        labels=labels,
    )


def train_class_counts(data_cfg: Any) -> np.ndarray | None:
    """Class counts of the dataset's training split, or None when the dataset has none."""
    if data_cfg.name == "synthetic":
        return get_split(data_cfg, data_cfg.train_split).class_counts
    path = dataset_dir(data_cfg)
    if data_cfg.train_split not in open_builder(data_cfg, path).info.splits:
        return None
    meta = build_metadata(path)
    if meta is not None and data_cfg.train_split in meta["splits"]:
        return np.asarray(meta["splits"][data_cfg.train_split]["class_counts"], np.int64)
    train = split_labels(path, data_cfg.train_split)
    names = _builder(path).info.features["label"].names
    return np.bincount(train[train >= 0], minlength=len(names)).astype(np.int64)
