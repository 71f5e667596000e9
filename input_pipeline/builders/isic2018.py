"""`isic2018`: ISIC 2018 Task 3 (lesion diagnosis, = HAM10000) from the official downloads.

Splits of the standard configs: `train` (10015, with lesion ids from the lesion groupings CSV
when present), `validation` (193) and `test` (1512). A split whose ground-truth CSV is absent
(typically `test`) is still built from its images with label -1 (TFDS ClassLabel's "no label"
value) and `has_labels: false` in the `spmix` metadata block.

Configs (see `isic2018_config` for the name grammar):
  short256          images downscaled so the shorter side is 256, JPEG quality 95 (default)
  original          the downloaded bytes, unchanged
  released          the released code's split, from its own lists (shipped in
                    `builders/data/isic2018_released_split.csv`, see SOURCE.md there): official
                    train + validation pooled, the 322 listed images (46 per class) as
                    `validation`, the 9886 others `train`; `test` as above. Images as in
                    short256. The lists are by image, not by lesion.
  short<N>, released_original, released_short<N>: variants of the image storage.
  released..._holdout<H>_seed<S>: a released-style split drawn here instead (H per class held
                    out with seed S), not the released code's lists.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import pathlib
import re
import zipfile
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline.builders import base, csv_layout, image_files, splitting

# The seven diagnoses of ISIC 2018 Task 3 / HAM10000, in the ground-truth CSVs' column order.
ISIC_CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
OFFICIAL_COUNTS = {"train": 10015, "validation": 193, "test": 1512}
RELEASED_HOLDOUT = 46
# The released code's split lists (image_id, label, split = train | heldout), package data.
RELEASED_LISTS = pathlib.Path(__file__).parent / "data" / "isic2018_released_split.csv"
# Builds older than this hold a `released` split drawn by seed, not the released code's lists.
LISTED_SPLIT_VERSION = (1, 1, 0)
# (split, file-name stem used by the challenge); the Test input also circulates as *_Test_Images.
_PARTS = (
    ("train", "ISIC2018_Task3_Training", ("ISIC2018_Task3_Training_Input",)),
    ("validation", "ISIC2018_Task3_Validation", ("ISIC2018_Task3_Validation_Input",)),
    ("test", "ISIC2018_Task3_Test", ("ISIC2018_Task3_Test_Input", "ISIC2018_Task3_Test_Images")),
)
LESION_CSV = "ISIC2018_Task3_Training_LesionGroupings.csv"
# Non-class columns some copies of the ground-truth CSVs carry; they are ignored.
_IGNORED_COLUMNS = ("score_weight", "validation_weight")

_MANUAL = """\
Download the ISIC 2018 Task 3 files from https://challenge.isic-archive.com/data/#2018 and
put them, zipped or extracted, in one folder (the manual dir):

  ISIC2018_Task3_Training_Input/            (or ISIC2018_Task3_Training_Input.zip)
  ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv  (or the .zip)
  ISIC2018_Task3_Training_LesionGroupings.csv          (optional: lesion ids of train)
  ISIC2018_Task3_Validation_Input/          (or .zip)
  ISIC2018_Task3_Validation_GroundTruth/ISIC2018_Task3_Validation_GroundTruth.csv  (or .zip)
  ISIC2018_Task3_Test_Input/                (or .zip; *_Test_Images also accepted)
  ISIC2018_Task3_Test_GroundTruth/ISIC2018_Task3_Test_GroundTruth.csv  (optional, or .zip)

A ground-truth CSV may also sit directly in the manual dir. Training input and ground truth are
required; a missing validation or test input leaves that split out (with a warning); test
images without ground truth get label -1. Then run
  python -m input_pipeline.build --builder=isic2018 --manual_dir=DIR --data_dir=OUT
"""


@dataclasses.dataclass(eq=False)
class Isic2018Config(tfds.core.BuilderConfig):
    """short_side 0 keeps the original bytes; `released` pools and re-splits train+validation,
    with the released code's lists when `listed`, else holding out `holdout_per_class` by seed."""

    short_side: int = 256
    released: bool = False
    holdout_per_class: int = RELEASED_HOLDOUT
    seed: int = 0
    listed: bool = False


def _describe(short_side: int, released: bool, holdout: int, seed: int, listed: bool) -> str:
    images = image_files.describe_storage(short_side)
    if listed:
        split = (
            "the released code's lists: official train+validation pooled, 322 listed images "
            "(46 per class) as validation, the other 9886 train; official test"
        )
    elif released:
        split = (
            f"official train+validation pooled, {holdout} per class held out as validation "
            f"(seed {seed}), the rest train; official test"
        )
    else:
        split = "official train / validation / test"
    return f"ISIC 2018 Task 3: {split}; images: {images}."


def _make(
    name: str, short_side: int, released: bool, holdout: int, seed: int, listed: bool = False
) -> Isic2018Config:
    return Isic2018Config(
        name=name,
        description=_describe(short_side, released, holdout, seed, listed),
        short_side=short_side,
        released=released,
        holdout_per_class=holdout,
        seed=seed,
        listed=listed,
    )


_CONFIG_NAME = re.compile(
    r"^(?:(?P<released>released)(?:_(?P<r_images>original|short(?P<r_size>\d+)))?"
    r"(?:_holdout(?P<holdout>\d+))?(?:_seed(?P<seed>\d+))?"
    r"|(?P<images>original|short(?P<size>\d+)))$"
)


class Isic2018(base.ArrayRecordBuilder):
    """ISIC 2018 Task 3 from a manual dir of the official downloads."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL
    VERSION = tfds.core.Version(".".join(map(str, LISTED_SPLIT_VERSION)))
    RELEASE_NOTES = {
        "1.0.0": "First release.",
        "1.1.0": "`released` configs use the released code's split lists.",
    }
    BUILDER_CONFIGS = [
        _make("short256", 256, False, RELEASED_HOLDOUT, 0),
        _make("original", 0, False, RELEASED_HOLDOUT, 0),
        _make("released", 256, True, RELEASED_HOLDOUT, 0, listed=True),
    ]

    @property
    def _config(self) -> Isic2018Config:
        return self.builder_config

    def _class_names(self) -> tuple[str, ...]:
        return ISIC_CLASSES

    def _description(self) -> str:
        return self._config.description or "ISIC 2018 Task 3."

    def _short_side(self) -> int:
        return self._config.short_side

    def _build_params(self) -> dict[str, Any]:
        c = self._config
        return {
            "short_side": c.short_side,
            "released": c.released,
            "holdout_per_class": c.holdout_per_class,
            "seed": c.seed,
            "released_lists": c.listed,
        }

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        c = self._config
        report = base.BuildReport()
        parts, problems = plan_isic2018(manual_dir, report)
        checked: dict[str, list[image_files.Item]] = {}
        for split, items in parts.items():
            good, bad = image_files.check_images(
                items, f"Checking {split} images", self._num_threads, self._max_image_bytes
            )
            checked[split] = good
            problems += bad
        csv_layout.raise_unless_skipping(problems, self._skip_bad, manual_dir)
        report.skipped = list(problems)
        if c.listed:
            checked = listed_split(checked, read_released_lists(RELEASED_LISTS))
        elif c.released:
            checked = released_split(checked, c.holdout_per_class, c.seed)
        else:
            for split, expected in OFFICIAL_COUNTS.items():
                if split in checked and len(checked[split]) != expected:
                    report.warnings.append(
                        f"split {split} has {len(checked[split])} images; the official release "
                        f"has {expected}"
                    )
        return self._finish(checked, report, manual_dir)


def isic2018_config(
    name: str = "short256", *, holdout_per_class: int | None = None, seed: int | None = None
) -> str | Isic2018Config:
    """Resolves a config name (plus optional released-split overrides) to a config.

    Grammar: `[released_](original|short<N>)[_holdout<H>][_seed<S>]`, or `released` alone
    (= `released_short256`). A released name without hold-out or seed (in the name or as
    arguments) uses the released code's lists; with them, a hold-out drawn by seed. Predefined
    names come back as strings (TFDS then uses its own instance); anything else becomes a custom
    `Isic2018Config` whose name spells its values.
    """
    match = _CONFIG_NAME.match(name)
    if match is None:
        raise ValueError(
            f"unknown isic2018 config {name!r}; expected short256, original, released, "
            "short<N>, released_original, released_short<N> (optionally _holdout<H>_seed<S>)"
        )
    released = bool(match["released"])
    images = match["r_images"] if released else match["images"]
    size = match["r_size"] if released else match["size"]
    short_side = 256 if images is None else int(size or 0)
    if images and images.startswith("short") and short_side <= 0:
        raise ValueError(f"{name!r}: short<N> needs N > 0")
    holdout = int(match["holdout"]) if match["holdout"] else RELEASED_HOLDOUT
    chosen_seed = int(match["seed"]) if match["seed"] else 0
    if not released and (holdout_per_class is not None or seed is not None):
        raise ValueError(f"{name!r}: holdout_per_class / seed only apply to released configs")
    drawn = bool(match["holdout"] or match["seed"]) or (
        holdout_per_class is not None or seed is not None
    )
    if holdout_per_class is not None:
        holdout = holdout_per_class
    if seed is not None:
        chosen_seed = seed
    if holdout < 1:
        raise ValueError(f"holdout_per_class must be >= 1, got {holdout}")
    images = "original" if short_side == 0 else f"short{short_side}"
    if released:
        canonical = "released" if short_side == 256 else f"released_{images}"
        if drawn:
            canonical += f"_holdout{holdout}_seed{chosen_seed}"
    else:
        canonical = images
    if canonical in {c.name for c in Isic2018.BUILDER_CONFIGS}:
        return canonical
    return _make(canonical, short_side, released, holdout, chosen_seed, released and not drawn)


def required_version(name: str) -> tuple[int, int, int] | None:
    """The oldest build version whose content config `name` still accepts (None: any)."""
    config = isic2018_config(name)
    listed = config == "released" if isinstance(config, str) else config.listed
    return LISTED_SPLIT_VERSION if listed else None


# ------------------------------------------------------------------------------------------
# Planning from the manual dir (pure functions of the files found)
# ------------------------------------------------------------------------------------------
def _read_ground_truth(manual_dir: str, stem: str) -> tuple[str, bytes] | None:
    """(display name, bytes) of `<stem>_GroundTruth.csv`, from a folder, the top, or a zip."""
    gt = f"{stem}_GroundTruth"
    csv_name = f"{gt}.csv"
    for path in (os.path.join(manual_dir, gt, csv_name), os.path.join(manual_dir, csv_name)):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                return path, f.read()
    archive = os.path.join(manual_dir, f"{gt}.zip")
    if os.path.isfile(archive):
        with zipfile.ZipFile(archive) as zf:
            members = [
                m for m in zf.namelist() if m.rsplit("/", 1)[-1] == csv_name and "__MACOSX" not in m
            ]
            if not members:
                raise csv_layout.DataError(f"{archive}: no {csv_name} inside the archive")
            return f"{archive}:{members[0]}", zf.read(members[0])
    return None


def plan_isic2018(
    manual_dir: str, report: base.BuildReport
) -> tuple[dict[str, list[image_files.Item]], list[csv_layout.Problem]]:
    """Items of every official split found in `manual_dir`, and the problems met on the way."""
    if not os.path.isdir(manual_dir):
        raise csv_layout.DataError(f"{manual_dir}: manual dir not found.\n{_MANUAL}")
    lesions: dict[str, str] = {}
    problems: list[csv_layout.Problem] = []
    lesion_path = os.path.join(manual_dir, LESION_CSV)
    if os.path.isfile(lesion_path):
        lesions, lesion_problems = csv_layout.parse_lesion_csv(lesion_path)
        problems += lesion_problems
    else:
        report.warnings.append(f"{LESION_CSV} not found: train images have no lesion ids")
    parts: dict[str, list[image_files.Item]] = {}
    seen: dict[str, str] = {}  # image id -> split, to catch ids in two splits
    for split, stem, input_names in _PARTS:
        input_path = image_files.find_folder_or_zip(manual_dir, input_names)
        gt = _read_ground_truth(manual_dir, stem)
        if split == "train" and (input_path is None or gt is None):
            missing = input_names[0] if input_path is None else f"{stem}_GroundTruth.csv"
            raise csv_layout.DataError(
                f"{manual_dir}: {missing} (folder or .zip) not found; it is required.\n{_MANUAL}"
            )
        if input_path is None:
            report.warnings.append(f"{input_names[0]} not found: split {split} is left out")
            continue
        index = image_files.index_images(input_path)
        problems += index.problems
        if gt is not None:
            source, data = gt
            rows, row_problems = csv_layout.parse_label_rows(
                csv_layout.text_lines(data),
                source,
                ISIC_CLASSES,
                ignore_columns=_IGNORED_COLUMNS,
            )
            problems += row_problems
            items, match_problems = image_files.match_rows(
                rows, index, lesions if split == "train" else None
            )
            problems += match_problems
            problems += image_files.unlabelled_images(index, {r.image_id for r in rows}, source)
        else:
            report.warnings.append(
                f"{stem}_GroundTruth.csv not found: split {split} is stored with label -1"
            )
            items = [
                image_files.Item(image_id, -1, "", ref, str(ref), 0)
                for image_id, ref in sorted(index.refs.items())
            ]
        kept = []
        for item in items:
            if item.image_id in seen:
                problems.append(
                    csv_layout.Problem(
                        "duplicate_id",
                        item.file,
                        item.line,
                        item.image_id,
                        f"image id {item.image_id} is in split {seen[item.image_id]} and in "
                        f"split {split}; expected each image in one split",
                    )
                )
                continue
            seen[item.image_id] = split
            kept.append(item)
        parts[split] = kept
    return parts, problems


def read_released_lists(path: str | os.PathLike = RELEASED_LISTS) -> dict[str, tuple[str, str]]:
    """image id -> (label name, `train` | `heldout`) from the released code's split lists."""
    lists: dict[str, tuple[str, str]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["label"] not in ISIC_CLASSES or row["split"] not in ("train", "heldout"):
                raise csv_layout.DataError(f"{path}: unexpected row {row}")
            lists[row["image_id"]] = (row["label"], row["split"])
    return lists


def listed_split(
    parts: dict[str, list[image_files.Item]], lists: dict[str, tuple[str, str]]
) -> dict[str, list[image_files.Item]]:
    """The released code's split from its lists: listed `train` rows train, `heldout` rows
    become `validation`. Every listed image must be among the official train + validation
    images found, with the listed label."""
    pooled = {it.image_id: it for it in parts["train"] + parts.get("validation", [])}
    missing = sorted(set(lists) - set(pooled))
    if missing:
        raise csv_layout.DataError(
            f"{len(missing)} of the {len(lists)} images the released split lists are not among "
            f"the official training and validation images found (first: {', '.join(missing[:5])}"
            "); the released split needs both the Training and the Validation input and ground "
            "truth"
        )
    wrong = [i for i, (label, _) in lists.items() if ISIC_CLASSES[pooled[i].label] != label]
    if wrong:
        raise csv_layout.DataError(
            f"{len(wrong)} images carry another label than the released split lists "
            f"(first: {wrong[0]}: ground truth {ISIC_CLASSES[pooled[wrong[0]].label]}, listed "
            f"{lists[wrong[0]][0]})"
        )
    result = {
        "train": [pooled[i] for i in sorted(lists) if lists[i][1] == "train"],
        "validation": [pooled[i] for i in sorted(lists) if lists[i][1] == "heldout"],
    }
    if "test" in parts:
        result["test"] = parts["test"]
    return result


def released_split(
    parts: dict[str, list[image_files.Item]], holdout: int, seed: int
) -> dict[str, list[image_files.Item]]:
    """The released code's split: train+validation pooled, `holdout` per class held out."""
    pooled = parts["train"] + parts.get("validation", [])
    if any(it.label < 0 for it in pooled):
        raise csv_layout.DataError(
            "the released split pools labelled train and validation images; validation ground "
            "truth is missing"
        )
    mask = splitting.holdout_per_class(
        np.asarray([it.label for it in pooled]),
        [it.image_id for it in pooled],
        holdout,
        seed,
        ISIC_CLASSES,
    )
    result = {
        "train": [it for it, m in zip(pooled, mask, strict=True) if not m],
        "validation": [it for it, m in zip(pooled, mask, strict=True) if m],
    }
    if "test" in parts:
        result["test"] = parts["test"]
    return result
