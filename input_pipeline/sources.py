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

import functools
import os
import re
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from input_pipeline.builders import DEFAULT_CONFIGS, METADATA_KEY
from input_pipeline.data_split import DataSplit, as_rgb_uint8  # also used as `sources.<name>`
from spmix_jax.errors import NotFoundError, UserError

BUILT_NAMES = ("folder_csv", "isic2018")
# Every value config.data.name may take (see the module docstring).
DATASET_NAMES = ("synthetic", *BUILT_NAMES, "tfds")
_VERSION_DIR = re.compile(r"^\d+\.\d+\.\d+$")
_LABEL_BATCH = 1024


class RecordSource:
    """Random access to decoded records of one split.

    `source[i]` -> `{'image': uint8 (H, W, 3), 'label': int, 'image_id': str,
    'lesion_id': str}`. Picklable (grain workers), and `__getitems__` reads many at once.
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
        return {
            "image": as_rgb_uint8(raw["image"], image_id),
            "label": int(raw["label"]),
            "image_id": image_id,
            "lesion_id": _as_text(raw.get("lesion_id"), ""),
        }


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
def _subdirs(path: epath.Path) -> list[epath.Path]:
    if not path.is_dir():
        return []
    return sorted(
        (p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def _version_key(path: epath.Path) -> tuple[int, ...]:
    return tuple(int(x) for x in path.name.split("."))


def _newest_version(config_dir: epath.Path) -> epath.Path | None:
    versions = [
        p
        for p in _subdirs(config_dir)
        if _VERSION_DIR.match(p.name) and (p / "dataset_info.json").exists()
    ]
    return max(versions, key=_version_key) if versions else None


def describe_built(data_dir: str | os.PathLike, max_depth: int = 3) -> list[str]:
    """Relative paths of the built datasets under `data_dir` with their splits."""
    root = epath.Path(data_dir)
    found: list[str] = []

    def walk(path: epath.Path, depth: int) -> None:
        if (path / "dataset_info.json").exists():
            try:
                splits = ", ".join(tfds.builder_from_directory(os.fspath(path)).info.splits)
            except Exception:  # listing only; an unreadable directory is still worth naming
                splits = "unreadable"
            rel = os.path.relpath(os.fspath(path), os.fspath(root))
            found.append(f"{rel} (splits: {splits})")
            return
        if depth < max_depth:
            for sub in _subdirs(path):
                walk(sub, depth + 1)

    walk(root, 0)
    return found


def build_command(name: str, data_dir: str, builder_config: str, source_dir: str = "") -> str:
    """The command that builds the dataset a config asks for."""
    config = builder_config or DEFAULT_CONFIGS.get(name, "")
    if name == "isic2018":
        src = f"--manual_dir={source_dir or 'DIR_WITH_ISIC2018_DOWNLOADS'}"
    else:
        src = f"--source={source_dir or 'DIR_WITH_IMAGES_AND_labels.csv'}"
    return (
        f"python -m input_pipeline.build --builder={name} {src} --data_dir={data_dir} "
        f"--config={config}"
    )


def _missing_error(data_cfg: Any, looked_at: epath.Path, why: str) -> NotFoundError:
    existing = describe_built(data_cfg.data_dir) if epath.Path(data_cfg.data_dir).is_dir() else []
    listing = "\n".join(f"  {e}" for e in existing) or "  (nothing)"
    hint = ""
    if data_cfg.name in BUILT_NAMES:
        command = build_command(
            data_cfg.name, data_cfg.data_dir, data_cfg.builder_config, data_cfg.source_dir
        )
        hint = (
            f"\nBuild it with:\n  {command}\nor pass --config.data.source_dir=DIR (the raw "
            "folder) to build it automatically; configs/ham10000.py also reads that folder from "
            "the environment variable SPMIX_HAM10000_DIR."
        )
    return NotFoundError(
        f"No dataset for data.name={data_cfg.name!r}, builder_config="
        f"{data_cfg.builder_config!r} at {looked_at}: {why}.\n"
        f"Built datasets under {data_cfg.data_dir}:\n{listing}{hint}"
    )


def _refuse_outdated(data_cfg: Any, version: epath.Path) -> None:
    """Refuses a build older than its config's content (e.g. isic2018 `released` before it
    used the released code's split lists), with the command that rebuilds it."""
    if data_cfg.name != "isic2018":
        return
    from input_pipeline.builders import isic2018

    needed = isic2018.required_version(data_cfg.builder_config or DEFAULT_CONFIGS["isic2018"])
    if needed is None or _version_key(version) >= needed:
        return
    command = build_command(
        data_cfg.name, data_cfg.data_dir, data_cfg.builder_config, data_cfg.source_dir
    )
    raise UserError(
        f"{version} was built by an older isic2018 builder (version {version.name}); config "
        f"{data_cfg.builder_config!r} now needs version {'.'.join(map(str, needed))} or later "
        f"(its split changed). Rebuild it with:\n  {command} --overwrite"
    )


_stale_warned: dict[tuple[str, int, str], str] = {}


def _warn_if_stale(data_cfg: Any, path: str) -> None:
    """Warns when `data.source_dir` changed since the dataset was built from it: training
    would silently use the old images or labels. The same finding is reported once."""
    source_dir = data_cfg.source_dir
    if not source_dir or not os.path.isdir(source_dir):
        return
    meta = build_metadata(path)
    stored = None if meta is None else meta.get("source_fingerprint")
    if not stored:  # built before fingerprints were recorded
        return
    from input_pipeline.builders import fingerprint

    changed = fingerprint.changes(stored, source_dir)
    key = (path, _stamp(path), os.path.abspath(source_dir))
    if changed is None or _stale_warned.get(key) == changed:
        return
    _stale_warned[key] = changed
    command = build_command(data_cfg.name, data_cfg.data_dir, data_cfg.builder_config, source_dir)
    message = (
        f"the dataset at {path} is older than its source {source_dir}, which changed since the "
        f"build ({changed}). Training uses the dataset as built. Rebuild it with (and the "
        f"options it was built with, see its metadata.json):\n  {command} --overwrite"
    )
    logging.warning("%s", message)
    print(f"warning: {message}", flush=True)


def dataset_dir(data_cfg: Any) -> str:
    """The version directory of the dataset `data_cfg` names, building it if allowed."""
    if not data_cfg.data_dir:
        raise UserError(
            f"config.data.data_dir is empty; data.name={data_cfg.name!r} reads a dataset built "
            "there (python -m input_pipeline.build ... --data_dir=DIR)"
        )
    root = epath.Path(data_cfg.data_dir)
    if data_cfg.name == "tfds":
        return os.fspath(_find_tfds_dir(data_cfg, root))
    config_dir = root / data_cfg.name / (data_cfg.builder_config or DEFAULT_CONFIGS[data_cfg.name])
    index, count = _processes()
    if count == 1:
        return _find_or_build(data_cfg, config_dir)
    return _find_or_build_coordinated(data_cfg, config_dir, index)


# How long the other processes of a multi-process run wait for process 0 to build a dataset.
BUILD_WAIT_S = 6 * 3600


def _processes() -> tuple[int, int]:
    import jax  # only here: reading datasets needs no accelerator runtime otherwise

    return jax.process_index(), jax.process_count()


def _coordination_client() -> Any:
    """The key-value store of jax's distributed runtime (multi-process runs), or None."""
    from jax._src import distributed

    return distributed.global_state.client


def _find_or_build_coordinated(data_cfg: Any, config_dir: epath.Path, index: int) -> str:
    """Several processes: process 0 finds or builds the dataset and tells the others, which
    wait for it instead of building the same folder at once (data_dir must be shared)."""
    client = _coordination_client()
    key = f"spmix_dataset_ready:{os.path.abspath(os.fspath(config_dir))}"
    if index == 0:
        try:
            path = _find_or_build(data_cfg, config_dir)
        except Exception as error:
            if client is not None:
                client.key_value_set(key, f"failed: {error}", allow_overwrite=True)
            raise
        if client is not None:
            client.key_value_set(key, "ok", allow_overwrite=True)
        return path
    version = _newest_version(config_dir)
    if version is not None or not data_cfg.source_dir or not os.path.isdir(data_cfg.source_dir):
        return _find_or_build(data_cfg, config_dir, build=False)  # found, or the missing error
    command = build_command(
        data_cfg.name, data_cfg.data_dir, data_cfg.builder_config, data_cfg.source_dir
    )
    if client is None:
        raise UserError(
            f"process {index}: the dataset at {config_dir} is missing and only process 0 may "
            f"build it, but this run has no distributed runtime to wait on. Build it before the "
            f"multi-process job:\n  {command}"
        )
    print(
        f"process {index}: waiting for process 0 to build the dataset at {config_dir}", flush=True
    )
    try:
        status = str(client.blocking_key_value_get(key, BUILD_WAIT_S * 1000))
    except Exception as error:  # the runtime raises its own error type on a timeout
        raise UserError(
            f"process {index}: process 0 did not finish building {config_dir} within "
            f"{BUILD_WAIT_S} s ({error}). Build it before the multi-process job:\n  {command}"
        ) from error
    if status != "ok":
        raise UserError(
            f"process {index}: process 0 could not build the dataset at {config_dir} "
            f"({status.removeprefix('failed: ')}). Fix that, or build it before the "
            f"multi-process job:\n  {command}"
        )
    return _find_or_build(data_cfg, config_dir, build=False)


def _find_or_build(data_cfg: Any, config_dir: epath.Path, build: bool = True) -> str:
    """The newest version in `config_dir`; else builds it from `data.source_dir` (`build`)."""
    version = _newest_version(config_dir)
    if version is not None:
        _refuse_outdated(data_cfg, version)
        _warn_if_stale(data_cfg, os.fspath(version))
        return os.fspath(version)
    if not build:
        raise _missing_error(
            data_cfg,
            config_dir,
            "not built yet; in a multi-process run process 0 builds it, and data.data_dir must "
            "be a folder every process sees",
        )
    if not data_cfg.source_dir:
        raise _missing_error(data_cfg, config_dir, "not built yet and data.source_dir is empty")
    if not os.path.isdir(data_cfg.source_dir):
        raise _missing_error(
            data_cfg,
            config_dir,
            f"not built yet, and data.source_dir={data_cfg.source_dir} (to build it from) is "
            "not a folder",
        )
    from input_pipeline import build as build_lib  # the writer side; only when building

    logging.info(
        "Dataset %s not found; building it from %s: %s",
        config_dir,
        data_cfg.source_dir,
        build_command(
            data_cfg.name, data_cfg.data_dir, data_cfg.builder_config, data_cfg.source_dir
        ),
    )
    source_key = "manual_dir" if data_cfg.name == "isic2018" else "source"
    return build_lib.build_dataset(
        data_cfg.name,
        data_cfg.data_dir,
        config=data_cfg.builder_config,
        **{source_key: data_cfg.source_dir},
    )


def _find_tfds_dir(data_cfg: Any, root: epath.Path) -> epath.Path:
    if (root / "dataset_info.json").exists():
        return root
    path = root / data_cfg.builder_config if data_cfg.builder_config else root
    for _ in range(3):  # <dataset>/<config>/<version>
        if (path / "dataset_info.json").exists():
            return path
        version = _newest_version(path)
        if version is not None:
            return version
        subdirs = _subdirs(path)
        if len(subdirs) != 1:
            break
        path = subdirs[0]
    raise _missing_error(
        data_cfg,
        root,
        "expected a TFDS dataset directory (holding dataset_info.json) or a parent with exactly "
        "one dataset in it",
    )


# ------------------------------------------------------------------------------------------
# Opening a split
# ------------------------------------------------------------------------------------------
def _stamp(path: str) -> int:
    """Changes when a dataset is rebuilt in place, so caches never serve a stale one."""
    try:
        return os.stat(os.path.join(path, "dataset_info.json")).st_mtime_ns
    except OSError:  # remote file systems: the path alone is the key
        return 0


@functools.cache
def _cached_builder(path: str, stamp: int) -> tfds.core.DatasetBuilder:
    del stamp  # part of the cache key only
    return tfds.builder_from_directory(path)


def _builder(path: str) -> tfds.core.DatasetBuilder:
    return _cached_builder(path, _stamp(path))


_label_cache: dict[tuple[str, int, str], np.ndarray] = {}
_label_lock = threading.Lock()


def build_metadata(path: str) -> dict[str, Any] | None:
    """The `spmix` block of a dataset built by this package, or None for other datasets."""
    metadata = _builder(path).info.metadata
    if metadata is None:
        return None
    return metadata.get(METADATA_KEY)


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
    wanted = tuple(data_cfg.class_names)
    if names != wanted or data_cfg.num_classes != len(names):
        tuple_text = "(" + ",".join(repr(n) for n in names) + ("," if len(names) == 1 else "") + ")"
        raise UserError(
            f"{path} has classes {list(names)}, but config.data says num_classes="
            f"{data_cfg.num_classes}, class_names={list(wanted)}. Pass "
            f'--config.data.num_classes={len(names)} --config.data.class_names="{tuple_text}" '
            "(or set them in the config file)."
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
            f"unknown config.data.name {data_cfg.name!r}; expected synthetic, folder_csv, "
            "isic2018 or tfds"
        )
    path = dataset_dir(data_cfg)
    builder = _builder(path)
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
    if data_cfg.train_split not in _builder(path).info.splits:
        return None
    meta = build_metadata(path)
    if meta is not None and data_cfg.train_split in meta["splits"]:
        return np.asarray(meta["splits"][data_cfg.train_split]["class_counts"], np.int64)
    train = split_labels(path, data_cfg.train_split)
    return np.bincount(train[train >= 0], minlength=len(data_cfg.class_names)).astype(np.int64)
