"""`folder_csv`: any folder of images plus a label CSV, split by lesion, stratified and seeded.

Parameters travel in a `FolderCsvConfig` made at build time (see `folder_csv_config`); TFDS writes
the config name and description into `dataset_info.json`, and the full parameter set into the
`spmix` block of `metadata.json`, so a built dataset records how it was made. Readers need none
of this: `tfds.builder_from_directory` restores everything from the built directory.

Split rule: examples are grouped by `lesion_id` (from a `lesion_id` column of the label CSV or
from a separate lesion CSV such as HAM10000's `metadata.csv`); an image without a lesion id is
its own group. Groups never cross splits; see `splitting.grouped_split` for the stratification.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline.builders import base, csv_layout, image_files, splitting

SPLIT_NAMES = splitting.SPLIT_NAMES
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


@dataclasses.dataclass(eq=False)
class FolderCsvConfig(tfds.core.BuilderConfig):
    """What to build from. Paths are absolute; `metadata == ''` means no lesion CSV."""

    source_dir: str = ""
    csv: str = ""
    metadata: str = ""
    images: str = ""
    class_names: tuple[str, ...] = ()
    split_fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    seed: int = 0
    short_side: int = 0


def parse_fractions(text: str | Sequence[float]) -> tuple[float, ...]:
    """`'0.8,0.1,0.1'` -> (0.8, 0.1, 0.1): fractions of train, validation, test (1 to 3)."""
    if isinstance(text, str):
        parts = [p for p in text.replace(" ", "").split(",") if p]
        try:
            values = tuple(float(p) for p in parts)
        except ValueError:
            raise ValueError(
                f"split fractions must be numbers like 0.8,0.1,0.1, got {text!r}"
            ) from None
    else:
        values = tuple(float(v) for v in text)
    if not 1 <= len(values) <= len(SPLIT_NAMES):
        raise ValueError(
            f"give 1 to 3 split fractions (train[,validation[,test]]), got {len(values)}: {text!r}"
        )
    if any(not np.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
        raise ValueError(f"split fractions must be >= 0 and not all 0, got {text!r}")
    return values


def folder_csv_config(
    source_dir: str | os.PathLike,
    *,
    name: str = "default",
    csv: str = "labels.csv",
    metadata: str = "auto",
    images: str = "",
    class_names: Sequence[str] = (),
    split_fractions: str | Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    short_side: int = 0,
) -> FolderCsvConfig:
    """A config for `source_dir`; relative `csv`, `metadata`, `images` are under `source_dir`.

    `metadata='auto'` uses `<source_dir>/metadata.csv` when it exists; `''` or `'none'` uses no
    lesion CSV. `images=''` searches the whole `source_dir` for image files. Without
    `class_names` the classes are those the CSV names (`csv_layout.class_names_in_rows`).
    """
    source = os.path.abspath(os.fspath(source_dir))
    if not os.path.isdir(source):
        raise csv_layout.DataError(f"{source}: source folder does not exist")

    def under_source(path: str) -> str:
        return path if os.path.isabs(path) else os.path.join(source, path)

    csv_path = under_source(csv)
    if not os.path.isfile(csv_path):
        raise csv_layout.DataError(f"{csv_path}: label CSV not found (set --csv)")
    if metadata == "auto":
        candidate = os.path.join(source, "metadata.csv")
        metadata_path = candidate if os.path.isfile(candidate) else ""
    elif metadata in ("", "none"):
        metadata_path = ""
    else:
        metadata_path = under_source(metadata)
        if not os.path.isfile(metadata_path):
            raise csv_layout.DataError(f"{metadata_path}: lesion CSV not found (set --metadata)")
    images_path = under_source(images) if images else source
    fractions = parse_fractions(split_fractions)
    if short_side < 0:
        raise ValueError(f"short_side must be >= 0 (0 keeps the original bytes), got {short_side}")
    if not class_names:  # the CSV names its classes (sorted labels, or one-hot columns)
        class_names = csv_layout.class_names_in_rows(csv_layout.read_text(csv_path), csv_path)
    if len(set(class_names)) != len(class_names) or not all(class_names):
        raise ValueError(f"class names must be unique and non-empty, got {class_names}")
    images_text = image_files.describe_storage(short_side)
    description = (
        f"Images from {images_path} labelled by {csv_path}"
        + (f", lesions from {metadata_path}" if metadata_path else ", no lesion ids")
        + f"; split fractions {fractions} ({','.join(SPLIT_NAMES[: len(fractions)])}) "
        f"grouped by lesion, seed {seed}; images: {images_text}."
    )
    return FolderCsvConfig(
        name=name,
        description=description,
        source_dir=source,
        csv=csv_path,
        metadata=metadata_path,
        images=images_path,
        class_names=tuple(class_names),
        split_fractions=fractions,
        seed=int(seed),
        short_side=int(short_side),
    )


def plan_folder_csv(
    config: FolderCsvConfig,
) -> tuple[list[image_files.Item], list[csv_layout.Problem], list[str]]:
    """Parses the CSVs and matches rows to image files: (items, problems, unlisted image ids)."""
    rows, problems = csv_layout.parse_label_csv(config.csv, config.class_names)
    lesions: dict[str, str] = {}
    if config.metadata:
        lesions, lesion_problems = csv_layout.parse_lesion_csv(config.metadata)
        problems += lesion_problems
    index = image_files.index_images(config.images)
    problems += index.problems
    items, match_problems = image_files.match_rows(rows, index, lesions)
    problems += match_problems
    listed = {r.image_id for r in rows}
    unlisted = sorted(set(index.refs) - listed)
    return items, problems, unlisted


class FolderCsv(base.ArrayRecordBuilder):
    """Images in a folder, labels in a CSV (`image,MEL,NV,...` one-hot or `image,label`)."""

    BUILDER_CONFIGS: list[FolderCsvConfig] = []

    def __init__(self, *, config: FolderCsvConfig | None = None, **kwargs: Any):
        if config is None or isinstance(config, str):
            raise ValueError(
                "folder_csv needs a FolderCsvConfig made at build time: "
                "FolderCsv(config=folder_csv_config(source_dir, ...), data_dir=...)"
            )
        super().__init__(config=config, **kwargs)

    @property
    def _config(self) -> FolderCsvConfig:
        return self.builder_config

    def _class_names(self) -> tuple[str, ...]:
        return tuple(self._config.class_names)

    def _description(self) -> str:
        return self._config.description or "Images from a folder with a label CSV."

    def _short_side(self) -> int:
        return self._config.short_side

    def _fingerprint_roots(self, source: str) -> tuple[str, list[str]]:
        c = self._config
        return c.source_dir, [c.csv, c.metadata, c.images]

    def _build_params(self) -> dict[str, Any]:
        c = self._config
        return {
            "source_dir": c.source_dir,
            "csv": c.csv,
            "metadata": c.metadata,
            "images": c.images,
            "split_fractions": list(c.split_fractions),
            "seed": c.seed,
            "short_side": c.short_side,
        }

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # everything is local and named by the config
        c = self._config
        report = base.BuildReport()
        items, problems, unlisted = plan_folder_csv(c)
        items, image_problems = image_files.check_images(
            items, f"Checking images of {c.csv}", self._num_threads, self._max_image_bytes
        )
        problems += image_problems
        csv_layout.raise_unless_skipping(problems, self._skip_bad, f"{c.csv} / {c.images}")
        report.skipped = list(problems)
        report.unlisted_images = unlisted
        if unlisted:
            report.warnings.append(
                f"{len(unlisted)} image(s) under {c.images} have no row in {c.csv} and are not "
                f"in the dataset (e.g. {', '.join(unlisted[:5])})"
            )
        if not items:
            raise csv_layout.DataError(f"{c.csv}: no usable rows (expected at least one image)")
        no_lesion = sum(not it.lesion_id for it in items)
        if no_lesion:
            report.warnings.append(
                f"{no_lesion} image(s) have no lesion id; each is its own group in the split"
            )
        groups = [it.lesion_id or f"image:{it.image_id}" for it in items]
        splits = splitting.split_items(items, groups, c.split_fractions, c.seed, report.warnings)
        return self._finish(splits, report, c.csv)
