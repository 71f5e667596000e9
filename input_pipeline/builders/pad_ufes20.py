"""`pad_ufes20`: PAD-UFES-20 (smartphone images of skin lesions, 6 classes) from Mendeley Data.

The download holds `metadata.csv` (one row per image: the patient, the lesion, the diagnosis
and 22 clinical columns) and 2,298 PNGs named `PAT_<patient>_<lesion>_<n>.png`, in one
`images/` folder or in the three parts the download ships (`imgs_part_1..3`, zipped or not,
beside metadata.csv or inside `images/`). The labels are the `diagnostic` column; the split is by
patient (all of a patient's lesions and images on one side), stratified by class and seeded,
80/10/10 into `train`, `validation` and `test`. The clinical columns are not used for training;
they are kept in the dataset's metadata (`clinical`: columns and one row per image id) for
models that read them.

Configs: `short256` (default: images downscaled so the shorter side is 256, JPEG q95),
`original` (the PNGs, converted to RGB where they carry alpha), `short<N>`; a `_seed<S>` suffix
draws the split with seed S.
"""

from __future__ import annotations

import csv
import functools
import os
from typing import Any

import tensorflow_datasets as tfds

from input_pipeline.builders import base, csv_layout, image_files, splitting

# The six diagnoses of the `diagnostic` column, sorted as the released code numbers them.
PAD_UFES20_CLASSES = ("ACK", "BCC", "MEL", "NEV", "SCC", "SEK")
OFFICIAL_COUNT = 2298
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
METADATA_CSV = "metadata.csv"
# The 26 columns of metadata.csv as published.
COLUMNS = (
    "patient_id",
    "lesion_id",
    "smoke",
    "drink",
    "background_father",
    "background_mother",
    "age",
    "pesticide",
    "gender",
    "skin_cancer_history",
    "cancer_history",
    "has_piped_water",
    "has_sewage_system",
    "fitspatrick",
    "region",
    "diameter_1",
    "diameter_2",
    "diagnostic",
    "itch",
    "grew",
    "hurt",
    "changed",
    "bleed",
    "elevation",
    "img_id",
    "biopsed",
)
IMAGE_FOLDER = "images"
IMAGE_PARTS = ("imgs_part_1", "imgs_part_2", "imgs_part_3")

_MANUAL = f"""\
Download PAD-UFES-20 from Mendeley Data (https://data.mendeley.com/datasets/zr7vgbcyr2/1),
unzip it, and point --manual_dir at the folder holding:

  {METADATA_CSV}                   ({len(COLUMNS)} columns: patient_id,lesion_id,...,img_id,biopsed)
  {IMAGE_FOLDER}/                      the PNGs, or the parts {", ".join(IMAGE_PARTS)}
                               (folders or .zip, beside metadata.csv or inside {IMAGE_FOLDER}/)

Then run
  python -m input_pipeline.build --builder=pad_ufes20 --manual_dir=DIR --data_dir=OUT
"""


PadUfes20Config = base.GroupSplitConfig


_make = functools.partial(
    base.make_group_split_config,
    split="PAD-UFES-20: split by patient 80/10/10 (seed {seed}) into train / validation / test",
)


def pad_ufes20_config(name: str = "short256", *, seed: int | None = None) -> str | PadUfes20Config:
    """Resolves `(original|short<N>)[_seed<S>]` (plus an optional seed) to a config."""
    return base.group_split_config(PadUfes20, name, seed, _make)


class PadUfes20(base.GroupSplitBuilder):
    """PAD-UFES-20 from a manual dir holding the Mendeley Data download."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL
    BUILDER_CONFIGS = [_make("short256", 256, 0), _make("original", 0, 0)]
    CLASSES = PAD_UFES20_CLASSES
    TITLE = "PAD-UFES-20."

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        c = self._config
        report = base.BuildReport()
        items, patients, clinical, problems = plan_pad_ufes20(manual_dir)
        items, bad = image_files.check_images(
            items, "Checking images", self._num_threads, self._max_image_bytes
        )
        problems += bad
        csv_layout.raise_unless_skipping(problems, self._skip_bad, manual_dir)
        report.skipped = list(problems)
        if len(items) != OFFICIAL_COUNT:
            report.warnings.append(
                f"{len(items)} usable images; the published dataset has {OFFICIAL_COUNT}"
            )
        groups = [patients[it.image_id] for it in items]
        splits = splitting.split_items(items, groups, c.split_fractions, c.seed, report.warnings)
        kept = {it.image_id for it in items}
        extra = {
            "clinical": {
                "columns": list(COLUMNS),
                "rows": {k: v for k, v in sorted(clinical.items()) if k in kept},
            }
        }
        return self._finish(splits, report, manual_dir, extra)


def parse_metadata(
    lines: Any, source: str
) -> tuple[
    list[csv_layout.LabelRow], dict[str, str], dict[str, list[str]], list[csv_layout.Problem]
]:
    """(label rows, image id -> patient, image id -> the row's values, problems) of
    PAD-UFES-20's metadata.csv.

    The header must hold the published columns (in any order); rows with another field count,
    an empty image or patient id, a diagnosis outside the six classes or a repeated image id are
    problems naming the line.
    """
    reader = csv.reader(lines)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise csv_layout.DataError(
            f"{source}: the CSV file is empty (expected a header line)"
        ) from None
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise csv_layout.DataError(
            f"{source}, line 1: missing column(s) {missing}; expected PAD-UFES-20's "
            f"{len(COLUMNS)} columns ({','.join(COLUMNS)})"
        )
    col = {name: header.index(name) for name in COLUMNS}
    rows: list[csv_layout.LabelRow] = []
    patients: dict[str, str] = {}
    clinical: dict[str, list[str]] = {}
    problems: list[csv_layout.Problem] = []
    first_line: dict[str, int] = {}
    for fields in reader:
        line = reader.line_num
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            problems.append(
                csv_layout.Problem(
                    "malformed_row",
                    source,
                    line,
                    "",
                    f"expected {len(header)} fields ({','.join(header)}), got {len(fields)}",
                )
            )
            continue
        image_id = csv_layout.image_id_from_value(fields[col["img_id"]])
        patient = fields[col["patient_id"]].strip()
        diagnosis = fields[col["diagnostic"]].strip()
        if not image_id or not patient:
            problems.append(
                csv_layout.Problem(
                    "malformed_row", source, line, image_id, "empty img_id or patient_id"
                )
            )
            continue
        if diagnosis not in PAD_UFES20_CLASSES:
            problems.append(
                csv_layout.Problem(
                    "bad_label",
                    source,
                    line,
                    image_id,
                    f"{image_id}: diagnostic {diagnosis!r} is not one of "
                    f"{','.join(PAD_UFES20_CLASSES)}",
                )
            )
            continue
        if image_id in first_line:
            problems.append(
                csv_layout.Problem(
                    "duplicate_id",
                    source,
                    line,
                    image_id,
                    f"duplicate img_id {image_id} (first on line {first_line[image_id]}); "
                    "expected each image once",
                )
            )
            continue
        first_line[image_id] = line
        label = PAD_UFES20_CLASSES.index(diagnosis)
        rows.append(
            csv_layout.LabelRow(image_id, label, fields[col["lesion_id"]].strip(), source, line)
        )
        patients[image_id] = patient
        clinical[image_id] = [fields[col[name]].strip() for name in COLUMNS]
    return rows, patients, clinical, problems


def image_stores(manual_dir: str) -> list[str]:
    """The folders or zips holding the PNGs: the three parts (beside metadata.csv or inside
    `images/`) when present, else `images/` (folder or zip)."""
    parents = (manual_dir, os.path.join(manual_dir, IMAGE_FOLDER))
    parts = [
        found
        for part in IMAGE_PARTS
        for parent in parents
        if (found := image_files.find_folder_or_zip(parent, (part,))) is not None
    ]
    if parts:
        return parts
    whole = image_files.find_folder_or_zip(manual_dir, (IMAGE_FOLDER,))
    if whole is None:
        raise csv_layout.DataError(
            f"{manual_dir}: no {IMAGE_FOLDER}/ folder and none of {', '.join(IMAGE_PARTS)} "
            f"(folder or .zip) found.\n{_MANUAL}"
        )
    return [whole]


def plan_pad_ufes20(
    manual_dir: str,
) -> tuple[list[image_files.Item], dict[str, str], dict[str, list[str]], list[csv_layout.Problem]]:
    """(items, image id -> patient, image id -> clinical values, problems) of the download."""
    if not os.path.isdir(manual_dir):
        raise csv_layout.DataError(f"{manual_dir}: manual dir not found.\n{_MANUAL}")
    source = os.path.join(manual_dir, METADATA_CSV)
    if not os.path.isfile(source):
        raise csv_layout.DataError(f"{source} not found; it is required.\n{_MANUAL}")
    rows, patients, clinical, problems = parse_metadata(csv_layout.read_text(source), source)
    index = image_files.merge_indexes(
        [image_files.index_images(p) for p in image_stores(manual_dir)]
    )
    problems += index.problems
    items, missing = image_files.match_rows(rows, index)
    problems += missing + image_files.unlabelled_images(index, {r.image_id for r in rows}, source)
    return items, patients, clinical, problems
