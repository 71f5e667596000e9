"""Source images that would build into silently wrong examples: ids that differ only in letter
case, and photos turned by their EXIF orientation tag."""

import csv
import subprocess

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image, ImageOps

from input_pipeline.builders.csv_layout import DataError

from . import helpers


def _case_twins(source):
    """`ISIC_0024306.jpg` and `isic_0024306.JPG`, listed with different labels."""
    rng = np.random.default_rng(1)
    for name in ("ISIC_0024306.jpg", "isic_0024306.JPG"):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), np.uint8)).save(source / "images" / name)
    with open(source / "labels.csv", "a", newline="") as f:
        csv.writer(f).writerows([("ISIC_0024306", "MEL"), ("isic_0024306", "NV")])


def test_ids_differing_only_in_case_are_refused_naming_both(tmp_path):
    """Today both are built: the same lesion once as MEL, once as NV."""
    source = helpers.make_source(tmp_path / "src", per_class=2)
    _case_twins(source)
    with pytest.raises(DataError) as err:
        helpers.build(source, tmp_path / "tfds")
    message = str(err.value)
    assert "ISIC_0024306" in message and "isic_0024306" in message
    assert "case" in message
    assert not (tmp_path / "tfds" / "folder_csv").exists() or not list(
        (tmp_path / "tfds").rglob("dataset_info.json")
    )


def test_csv_rows_differing_only_in_case_are_refused(tmp_path):
    """Two rows for one file on a case-insensitive file system (one file here)."""
    source = helpers.make_source(tmp_path / "src", per_class=2)
    with open(source / "labels.csv", "a", newline="") as f:
        csv.writer(f).writerows([("IMG_0_0", "NV")])
    with pytest.raises(DataError) as err:
        helpers.build(source, tmp_path / "tfds")
    message = str(err.value)
    assert "IMG_0_0" in message and "img_0_0" in message and "line 16" in message


def test_build_command_names_both_case_twins(tmp_path):
    source = helpers.make_source(tmp_path / "src", per_class=2)
    _case_twins(source)
    proc = subprocess.run(
        [helpers.python(), "-m", "input_pipeline.build", "--builder=folder_csv",
         f"--source={source}", f"--data_dir={tmp_path / 'tfds'}", "--split_fractions=1",
         "--metadata=none"],
        capture_output=True, text=True, env=helpers.subprocess_env(), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert "ISIC_0024306" in proc.stderr and "isic_0024306" in proc.stderr


def _turned_photo(path):
    """A 64x40 JPEG (wider than tall as stored) whose EXIF says: rotate 90 degrees clockwise
    to view (orientation 6). Returns the pixels a viewer shows (from PIL's own transpose)."""
    rng = np.random.default_rng(2)
    pixels = np.kron(rng.integers(0, 256, (5, 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, format="JPEG", quality=100, exif=exif.tobytes())
    with Image.open(path) as stored:
        return np.asarray(ImageOps.exif_transpose(stored).convert("RGB"))


def test_exif_orientation_is_applied_and_counted(tmp_path):
    """Today the photo is stored as saved (20 tall, 32 wide), unlike every viewer shows it."""
    source = helpers.make_source(tmp_path / "src", per_class=2)
    (source / "images" / "img_0_0.png").unlink()
    viewed = _turned_photo(source / "images" / "img_0_0.jpg")
    assert viewed.shape == (64, 40, 3)
    path = helpers.build(source, tmp_path / "tfds")
    builder = tfds.builder_from_directory(path)
    records = builder.as_data_source("train")
    record = next(records[i] for i in range(len(records)) if records[i]["image_id"] == b"img_0_0")
    assert record["image"].shape == (64, 40, 3)
    # JPEG re-encoding at quality 95 moves values a little; a turn the wrong way moves them a lot.
    stored = record["image"].astype(int)
    error = np.abs(stored - viewed).mean()
    wrong_way = np.abs(stored - viewed[::-1, ::-1]).mean()
    assert error < 6 and error < wrong_way / 5, (error, wrong_way)
    report = builder.info.metadata["spmix"]["report"]
    assert report["turned_upright"] == 1
