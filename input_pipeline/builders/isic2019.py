"""`isic2019`: ISIC 2019 (lesion diagnosis, 8 classes) from the official downloads.

The training release (25,331 dermoscopy images) is split here by lesion, stratified by class and
seeded, 80/10/10 into `train`, `validation` and `test`: the metadata's `lesion_id` groups images
of one lesion, and an image without a lesion id (about 2,100 of them) is its own group, so no
lesion is on two sides. The official test release, when present, becomes `official_test` (rows
of the eight classes; label -1 throughout when its ground truth is absent) and
`official_test_unk` (rows whose only positive is `UNK`, label -1): UNK is no training class, so
those images are kept apart rather than dropped.

Configs: `short256` (default: images downscaled so the shorter side is 256, JPEG q95),
`original` (the downloaded bytes), `short<N>`; a `_seed<S>` suffix draws the split with seed S.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import tensorflow_datasets as tfds

from input_pipeline.builders import base, csv_layout, image_files, splitting

# The eight diagnoses, in the ground-truth CSVs' column order; `UNK` follows them there.
ISIC2019_CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
UNKNOWN_COLUMN = "UNK"
OFFICIAL_TRAIN_COUNT = 25331
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
TRAIN_INPUT = "ISIC_2019_Training_Input"
TRAIN_GROUND_TRUTH = "ISIC_2019_Training_GroundTruth.csv"
TRAIN_METADATA = "ISIC_2019_Training_Metadata.csv"
TEST_INPUT = "ISIC_2019_Test_Input"
TEST_GROUND_TRUTH = "ISIC_2019_Test_GroundTruth.csv"
TEST_METADATA = "ISIC_2019_Test_Metadata.csv"
# Non-class columns of some copies of the ground truth (the test ground truth's weights).
_IGNORED_COLUMNS = ("score_weight", "validation_weight")

_MANUAL = f"""\
Download ISIC 2019 from https://challenge.isic-archive.com/data/#2019 and put the files, zipped
or extracted, in one folder (the manual dir):

  {TRAIN_INPUT}/                 (or {TRAIN_INPUT}.zip; 25,331 JPEGs)
  {TRAIN_GROUND_TRUTH}       (image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK)
  {TRAIN_METADATA}           (image,age_approx,anatom_site_general,lesion_id,sex)
  {TEST_INPUT}/                     (optional, or .zip; 8,238 JPEGs)
  {TEST_GROUND_TRUTH}           (optional: labels of the test images)

Then run
  python -m input_pipeline.build --builder=isic2019 --manual_dir=DIR --data_dir=OUT
"""


Isic2019Config = base.GroupSplitConfig


_make = functools.partial(
    base.make_group_split_config,
    split=(
        "ISIC 2019: the training release split by lesion 80/10/10 (seed {seed}) into "
        "train / validation / test; official test as official_test"
    ),
)


def isic2019_config(name: str = "short256", *, seed: int | None = None) -> str | Isic2019Config:
    """Resolves `(original|short<N>)[_seed<S>]` (plus an optional seed) to a config."""
    return base.group_split_config(Isic2019, name, seed, _make)


class Isic2019(base.GroupSplitBuilder):
    """ISIC 2019 from a manual dir of the official downloads."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL
    BUILDER_CONFIGS = [_make("short256", 256, 0), _make("original", 0, 0)]
    CLASSES = ISIC2019_CLASSES
    TITLE = "ISIC 2019."

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        c = self._config
        report = base.BuildReport()
        parts, problems = plan_isic2019(manual_dir, report)
        checked: dict[str, list[image_files.Item]] = {}
        for part, items in parts.items():
            good, bad = image_files.check_images(
                items, f"Checking {part} images", self._num_threads, self._max_image_bytes
            )
            checked[part] = good
            problems += bad
        csv_layout.raise_unless_skipping(problems, self._skip_bad, manual_dir)
        report.skipped = list(problems)
        pool = checked.pop("train")
        if len(pool) != OFFICIAL_TRAIN_COUNT:
            report.warnings.append(
                f"the training release has {len(pool)} usable images; the official one has "
                f"{OFFICIAL_TRAIN_COUNT}"
            )
        no_lesion = sum(not it.lesion_id for it in pool)
        if no_lesion:
            report.warnings.append(
                f"{no_lesion} training image(s) have no lesion id; each is its own group"
            )
        groups = [it.lesion_id or f"image:{it.image_id}" for it in pool]
        splits = splitting.split_items(pool, groups, c.split_fractions, c.seed, report.warnings)
        if checked.get("official_test_unk"):
            report.warnings.append(
                f"{len(checked['official_test_unk'])} official test image(s) are labelled only "
                "UNK (no training class): kept apart as split official_test_unk with label -1"
            )
        splits.update({name: items for name, items in checked.items() if items})
        return self._finish(splits, report, manual_dir)


def _ground_truth(
    path: str, *, test: bool
) -> tuple[list[csv_layout.LabelRow], list[csv_layout.LabelRow], list[csv_layout.Problem]]:
    """(rows of the eight classes, UNK-only rows with label -1, problems) of a ground truth CSV.

    UNK is parsed as a ninth one-hot column; in the training CSV it is all zero, so a training
    row marked UNK is a problem, while in the test CSV it marks an image of no training class.
    """
    rows, problems = csv_layout.parse_label_csv(
        path, (*ISIC2019_CLASSES, UNKNOWN_COLUMN), ignore_columns=_IGNORED_COLUMNS
    )
    unknown = len(ISIC2019_CLASSES)
    known = [r for r in rows if r.label != unknown]
    unk = [dataclasses.replace(r, label=-1) for r in rows if r.label == unknown]
    if unk and not test:
        problems += [
            csv_layout.Problem(
                "bad_label",
                r.file,
                r.line,
                r.image_id,
                f"{r.image_id}: only UNK is 1; the training ground truth has UNK all 0 (one of "
                f"{','.join(ISIC2019_CLASSES)} expected)",
            )
            for r in unk
        ]
        unk = []
    return known, unk, problems


def plan_isic2019(
    manual_dir: str, report: base.BuildReport
) -> tuple[dict[str, list[image_files.Item]], list[csv_layout.Problem]]:
    """Items of the training pool (`train`) and of the official test parts found in
    `manual_dir`, and the problems met on the way."""
    if not os.path.isdir(manual_dir):
        raise csv_layout.DataError(f"{manual_dir}: manual dir not found.\n{_MANUAL}")
    train_input = image_files.find_folder_or_zip(manual_dir, (TRAIN_INPUT,))
    train_gt = os.path.join(manual_dir, TRAIN_GROUND_TRUTH)
    if train_input is None or not os.path.isfile(train_gt):
        missing = f"{TRAIN_INPUT} (folder or .zip)" if train_input is None else TRAIN_GROUND_TRUTH
        raise csv_layout.DataError(f"{manual_dir}: {missing} not found; it is required.\n{_MANUAL}")
    problems: list[csv_layout.Problem] = []
    lesions: dict[str, str] = {}
    metadata = os.path.join(manual_dir, TRAIN_METADATA)
    if os.path.isfile(metadata):
        lesions, lesion_problems = csv_layout.parse_lesion_csv(metadata)
        problems += lesion_problems
    else:
        report.warnings.append(f"{TRAIN_METADATA} not found: training images have no lesion ids")
    rows, _, row_problems = _ground_truth(train_gt, test=False)
    problems += row_problems
    index = image_files.index_images(train_input)
    problems += index.problems
    train, match_problems = image_files.match_rows(rows, index, lesions)
    problems += match_problems + image_files.unlabelled_images(
        index, {r.image_id for r in rows}, train_gt
    )
    parts = {"train": train}
    test_input = image_files.find_folder_or_zip(manual_dir, (TEST_INPUT,))
    if test_input is None:
        report.warnings.append(f"{TEST_INPUT} not found: no official_test split")
        return parts, problems
    test_index = image_files.index_images(test_input)
    problems += test_index.problems
    test_gt = os.path.join(manual_dir, TEST_GROUND_TRUTH)
    if os.path.isfile(test_gt):
        known, unk, test_problems = _ground_truth(test_gt, test=True)
        problems += test_problems
        listed = {r.image_id for r in known + unk}
        parts["official_test"], no_image = image_files.match_rows(known, test_index)
        parts["official_test_unk"], no_image_unk = image_files.match_rows(unk, test_index)
        problems += no_image + no_image_unk
        problems += image_files.unlabelled_images(test_index, listed, test_gt)
    else:
        report.warnings.append(
            f"{TEST_GROUND_TRUTH} not found: official_test is stored with label -1"
        )
        parts["official_test"] = [
            image_files.Item(image_id, -1, "", ref, str(ref), 0)
            for image_id, ref in sorted(test_index.refs.items())
        ]
    overlap = sorted({it.image_id for it in train} & {it.image_id for it in parts["official_test"]})
    if overlap:
        raise csv_layout.DataError(
            f"{len(overlap)} image id(s) are in both the training and the test release (first: "
            f"{', '.join(overlap[:5])}); expected each image in one release"
        )
    return parts, problems
