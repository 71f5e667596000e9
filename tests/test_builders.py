"""Dataset builders: folder_csv and isic2018 built from real HAM10000 images in tmp_path.

References are computed independently of the code under test: labels come from reading the CSVs
with the csv module, image bytes from the copied files, resized pixels from OpenCV.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import cv2
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from input_pipeline import build
from input_pipeline.builders import csv_layout, image_files, isic2018, splitting
from input_pipeline.builders.csv_layout import DataError

CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
REPO = pathlib.Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------
# Fixture data (copies of a few hundred subset images; tmp files only)
# ------------------------------------------------------------------------------------------
def read_ham(ham_dir: pathlib.Path):
    """(labels, lesions, header): labels from the one-hot CSV by argmax of the '1.0' column."""
    with open(ham_dir / "labels.csv", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        labels = {row[0]: [float(v) for v in row[1:]].index(1.0) for row in reader}
    with open(ham_dir / "metadata.csv", newline="") as f:
        lesions = {row["image_id"]: row["lesion_id"] for row in csv.DictReader(f)}
    return labels, lesions, header


def select_images(ham_dir: pathlib.Path, per_class: int, offset: int = 0) -> list[str]:
    """Whole lesions, in lesion-id order from `offset` (wrapping), until each class has at least
    `per_class` images."""
    labels, lesions, _ = read_ham(ham_dir)
    by_lesion = collections.defaultdict(list)
    for image, lesion in lesions.items():
        by_lesion[lesion].append(image)
    chosen = []
    for k in range(len(CLASSES)):
        names = sorted(les for les, imgs in by_lesion.items() if labels[imgs[0]] == k)
        count = 0
        start = offset % len(names)
        for lesion in names[start:] + names[:start]:
            chosen.extend(sorted(by_lesion[lesion]))
            count += len(by_lesion[lesion])
            if count >= per_class:
                break
    return sorted(chosen)


def write_source(ham_dir, dest: pathlib.Path, images: list[str], *, rows=None) -> pathlib.Path:
    """`dest/images/*.jpg`, `dest/labels.csv` (original rows), `dest/metadata.csv`."""
    (dest / "images").mkdir(parents=True)
    for image in images:
        shutil.copy(ham_dir / "images" / f"{image}.jpg", dest / "images")
    wanted = set(images)
    with open(ham_dir / "labels.csv", newline="") as f:
        all_rows = list(csv.reader(f))
    with open(dest / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(all_rows[0])
        writer.writerows(rows if rows is not None else [r for r in all_rows[1:] if r[0] in wanted])
    with open(ham_dir / "metadata.csv", newline="") as f:
        meta_rows = list(csv.reader(f))
    with open(dest / "metadata.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(meta_rows[0])
        writer.writerows(r for r in meta_rows[1:] if r[1] in wanted)
    return dest


def read_split(path: str, split: str):
    """(image_ids, labels, lesion_ids, raw image bytes) of a built split, images not decoded."""
    ds = tfds.builder_from_directory(path).as_data_source(
        split, decoders={"image": tfds.decode.SkipDecoding()}
    )
    records = [ds[i] for i in range(len(ds))]
    return (
        [r["image_id"].decode() for r in records],
        [int(r["label"]) for r in records],
        [r["lesion_id"].decode() for r in records],
        [r["image"] for r in records],
    )


@pytest.fixture(scope="module")
def folder_source(ham10000_dir, tmp_path_factory):
    images = select_images(ham10000_dir, per_class=30)
    return write_source(ham10000_dir, tmp_path_factory.mktemp("folder_src"), images)


@pytest.fixture(scope="module")
def folder_built(folder_source, tmp_path_factory):
    out = tmp_path_factory.mktemp("folder_out")
    path = build.build_dataset(
        "folder_csv",
        os.fspath(out),
        source=os.fspath(folder_source),
        split_fractions="0.7,0.15,0.15",
        seed=3,
    )
    return path


# ------------------------------------------------------------------------------------------
# folder_csv
# ------------------------------------------------------------------------------------------
def test_folder_csv_counts_labels_ids(folder_source, folder_built, ham10000_dir):
    labels, lesions, _ = read_ham(ham10000_dir)
    with open(folder_source / "labels.csv", newline="") as f:
        csv_ids = [row[0] for row in list(csv.reader(f))[1:]]
    assert len(csv_ids) > 200
    meta = build.load_build_metadata(folder_built)
    info = tfds.builder_from_directory(folder_built).info
    assert info.features["label"].names == list(CLASSES)
    assert info.file_format.value == "array_record"
    seen = []
    for split in ("train", "validation", "test"):
        ids, got_labels, got_lesions, raw = read_split(folder_built, split)
        assert ids == sorted(ids)  # stored in id order
        assert got_labels == [labels[i] for i in ids]
        assert got_lesions == [lesions[i] for i in ids]
        # original config: the stored bytes are the file's bytes
        for image_id, data in zip(ids[:20], raw[:20], strict=True):
            assert data == (folder_source / "images" / f"{image_id}.jpg").read_bytes()
        split_meta = meta["splits"][split]
        assert split_meta["labels"] == got_labels
        assert split_meta["num_examples"] == len(ids) == info.splits[split].num_examples
        expected_counts = np.bincount(got_labels, minlength=7)
        np.testing.assert_array_equal(split_meta["class_counts"], expected_counts)
        seen.extend(ids)
    assert sorted(seen) == sorted(csv_ids)  # every row once, none lost
    assert meta["report"]["skipped"] == [] and meta["report"]["reencoded"] == 0
    assert meta["params"]["seed"] == 3 and meta["params"]["split_fractions"] == [0.7, 0.15, 0.15]
    # decoded pixels (OpenCV inside TFDS) match PIL's decode of the file
    decoded = tfds.builder_from_directory(folder_built).as_data_source("train")[0]
    reference = np.asarray(Image.open(folder_source / "images" / f"{seen[0]}.jpg").convert("RGB"))
    assert decoded["image"].shape == reference.shape == (150, 200, 3)
    assert np.abs(decoded["image"].astype(int) - reference).mean() < 1.0


def test_folder_csv_split_is_lesion_disjoint_and_stratified(folder_built, ham10000_dir):
    _, lesions, _ = read_ham(ham10000_dir)
    per_split = {s: read_split(folder_built, s) for s in ("train", "validation", "test")}
    lesion_sets = {s: {lesions[i] for i in v[0]} for s, v in per_split.items()}
    multi = collections.Counter(lesions[i] for v in per_split.values() for i in v[0])
    assert any(n > 1 for n in multi.values())  # the fixture has multi-image lesions
    assert not lesion_sets["train"] & lesion_sets["validation"]
    assert not lesion_sets["train"] & lesion_sets["test"]
    assert not lesion_sets["validation"] & lesion_sets["test"]
    total = sum(len(v[0]) for v in per_split.values())
    train_counts = np.bincount(per_split["train"][1], minlength=7)
    assert np.all(train_counts > 0)
    assert 0.6 < len(per_split["train"][0]) / total < 0.8
    for s in ("validation", "test"):
        assert 0.08 < len(per_split[s][0]) / total < 0.22
        assert len(set(per_split[s][1])) >= 5  # stratified: most classes in each small split


def test_folder_csv_split_is_deterministic(folder_source, folder_built, tmp_path):
    # Same seed, rows in reverse order: the same split. Another seed: a different split.
    src = tmp_path / "reversed"
    shutil.copytree(folder_source, src)
    with open(folder_source / "labels.csv", newline="") as f:
        rows = list(csv.reader(f))
    with open(src / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([rows[0], *reversed(rows[1:])])
    same = build.build_dataset(
        "folder_csv",
        os.fspath(tmp_path / "a"),
        source=os.fspath(src),
        split_fractions="0.7,0.15,0.15",
        seed=3,
    )
    other = build.build_dataset(
        "folder_csv",
        os.fspath(tmp_path / "b"),
        source=os.fspath(src),
        split_fractions="0.7,0.15,0.15",
        seed=4,
    )
    for split in ("train", "validation", "test"):
        assert read_split(same, split)[0] == read_split(folder_built, split)[0]
    assert read_split(other, "validation")[0] != read_split(folder_built, "validation")[0]


def test_grouped_split_pure():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 400)
    groups = [f"L{i // 3}" for i in range(400)]  # lesions of 3 images
    labels = np.asarray([labels[(i // 3) * 3] for i in range(400)])  # one label per lesion
    a = splitting.grouped_split(labels, groups, (0.6, 0.2, 0.2), seed=1)
    perm = rng.permutation(400)
    b = splitting.grouped_split(labels[perm], [groups[i] for i in perm], (0.6, 0.2, 0.2), seed=1)
    np.testing.assert_array_equal(a[perm], b)  # independent of input order
    for g in set(groups):
        assert len({a[i] for i in range(400) if groups[i] == g}) == 1
    for k in range(3):  # per class, shares within one lesion (3 images) of the target
        n = np.sum(labels == k)
        for s, frac in enumerate((0.6, 0.2, 0.2)):
            assert abs(np.sum((labels == k) & (a == s)) - frac * n) <= 3
    # a class with one lesion lands in train
    single = splitting.grouped_split([0, 0, 1], ["x", "x", "y"], (0.1, 0.9), seed=0)
    np.testing.assert_array_equal(single, [0, 0, 0])
    # a zero share for train keeps everything for evaluation (a folder used as a test set)
    whole = splitting.grouped_split([0, 1, 1], ["x", "y", "z"], (0.0, 0.0, 1.0), seed=0)
    np.testing.assert_array_equal(whole, [2, 2, 2])
    with pytest.raises(ValueError, match="fractions"):
        splitting.grouped_split([0], ["x"], (0.0, 0.0), seed=0)


def test_folder_csv_short_side_and_label_layout(ham10000_dir, tmp_path):
    # `image,label` CSV with names and indices; images downscaled to short side 100.
    labels, _, _ = read_ham(ham10000_dir)
    images = select_images(ham10000_dir, per_class=2, offset=50)
    src = write_source(ham10000_dir, tmp_path / "src", images)
    with open(src / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "label"])
        for n, image in enumerate(images):
            label = labels[image]
            writer.writerow([f"{image}.jpg", CLASSES[label].lower() if n % 2 else str(label)])
    path = build.build_dataset(
        "folder_csv",
        os.fspath(tmp_path / "out"),
        source=os.fspath(src),
        config="small",
        metadata="none",
        class_names=CLASSES,  # the labels mix names and indices
        split_fractions="1",
        short_side=100,
    )
    ids, got, lesion_ids, raw = read_split(path, "train")
    assert ids == sorted(images) and got == [labels[i] for i in ids]
    assert set(lesion_ids) == {""}
    assert list(tfds.builder_from_directory(path).info.splits) == ["train"]
    image = Image.open(io.BytesIO(raw[0]))
    assert image.format == "JPEG" and image.size == (133, 100)  # 200x150 -> short side 100
    stored = np.asarray(image.convert("RGB")).astype(float)
    original = np.asarray(Image.open(src / "images" / f"{ids[0]}.jpg").convert("RGB"))
    reference = cv2.resize(original, (133, 100), interpolation=cv2.INTER_AREA).astype(float)
    assert np.abs(stored - reference).mean() < 4.0
    assert build.load_build_metadata(path)["report"]["reencoded"] == len(images)


def test_folder_csv_whole_folder_as_test_split(ham10000_dir, tmp_path):
    # A new labelled folder to evaluate a trained model on: every image goes to `test`, and
    # a class may be missing (only a training split must hold every class).
    labels, _, _ = read_ham(ham10000_dir)
    images = [i for i in select_images(ham10000_dir, per_class=1, offset=7) if labels[i] != 5]
    src = write_source(ham10000_dir, tmp_path / "src", images)
    path = build.build_dataset(
        "folder_csv", os.fspath(tmp_path / "out"), source=os.fspath(src), split_fractions="0,0,1"
    )
    assert list(tfds.builder_from_directory(path).info.splits) == ["test"]
    ids, got, _, _ = read_split(path, "test")
    assert ids == sorted(images) and got == [labels[i] for i in ids]
    meta = build.load_build_metadata(path)
    assert meta["splits"]["test"]["class_counts"][5] == 0
    table = build.summary_table(meta)
    assert table.splitlines()[0].split() == ["class", "test"]


# ------------------------------------------------------------------------------------------
# Bad input: pure validation functions
# ------------------------------------------------------------------------------------------
HEADER = "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\n"


def parse(text: str):
    return csv_layout.parse_label_rows(io.StringIO(text), "labels.csv", CLASSES)


def test_csv_not_one_hot_and_bad_values():
    rows, problems = parse(
        HEADER
        + "a,1.0,0.0,0.0,0.0,0.0,0.0,0.0\n"
        + "b,1.0,1.0,0.0,0.0,0.0,0.0,0.0\n"
        + "c,0.5,0.5,0.0,0.0,0.0,0.0,0.0\n"
        + "d,0,0,0,0,0,0,0\n"
        + "e,x,0,0,0,0,0,1\n"
        + "f,0,0,0,0,0,1\n"
        + "g,0,0,0,0,0,0,1\n"
    )
    assert [(r.image_id, r.label, r.line) for r in rows] == [("a", 0, 2), ("g", 6, 8)]
    assert [(p.kind, p.line) for p in problems] == [
        ("not_one_hot", 3),
        ("not_one_hot", 4),
        ("not_one_hot", 5),
        ("not_one_hot", 6),
        ("malformed_row", 7),
    ]
    assert str(problems[0]).startswith("labels.csv, line 3: b: expected one-hot")
    assert "MEL=1.0, NV=1.0" in str(problems[0])
    assert "MEL=0.5, NV=0.5" in str(problems[1])
    assert "column MEL is 'x', not a number" in str(problems[3])
    assert "expected 8 fields" in problems[4].message and "got 7" in problems[4].message


def test_csv_header_errors():
    unknown = r"labels.csv, line 1: unknown class column\(s\) \['MELX'\]"
    with pytest.raises(DataError, match=unknown):
        parse("image,MELX,NV,BCC,AKIEC,BKL,DF,VASC\na,1,0,0,0,0,0,0\n")
    with pytest.raises(DataError, match=r"line 1: missing class column\(s\) \['VASC'\]"):
        parse("image,MEL,NV,BCC,AKIEC,BKL,DF\na,1,0,0,0,0,0\n")
    with pytest.raises(DataError, match="no image-id column"):
        parse("name,MEL,NV,BCC,AKIEC,BKL,DF,VASC\n")
    with pytest.raises(DataError, match="empty"):
        parse("")
    with pytest.raises(DataError, match="appears more than once"):
        parse("image,MEL,MEL,NV,BCC,AKIEC,BKL,DF,VASC\n")
    # columns in another order are fine; labels follow the class list
    rows, problems = parse("image,VASC,DF,BKL,AKIEC,BCC,NV,MEL\na,1,0,0,0,0,0,0\n")
    assert rows[0].label == 6 and not problems


def test_csv_label_layout_and_duplicates():
    rows, problems = parse(
        "image,label,lesion_id\nISIC_1.jpg,nv,L1\nISIC_2,3,L1\nISIC_3,FOO,L2\nISIC_4,7,L3\n"
        "ISIC_1,MEL,L9\n"
    )
    assert [(r.image_id, r.label, r.lesion_id) for r in rows] == [
        ("ISIC_1", 1, "L1"),
        ("ISIC_2", 3, "L1"),
    ]
    assert [(p.kind, p.line) for p in problems] == [
        ("bad_label", 4),
        ("bad_label", 5),
        ("duplicate_id", 6),
    ]
    assert "neither a class name" in problems[0].message
    assert "outside [0, 6]" in problems[1].message
    assert "first on line 2" in problems[2].message
    lesions, lesion_problems = csv_layout.parse_lesion_rows(
        io.StringIO("lesion_id,image_id,dx\nL1,a,nv\nL2,b,nv\nL3,a,nv\n"), "metadata.csv"
    )
    assert lesions == {"a": "L1", "b": "L2"}
    assert [(p.kind, p.line) for p in lesion_problems] == [("duplicate_id", 4)]


def test_empty_class_raises():
    with pytest.raises(DataError, match=r"\['DF'\] have 0 training images"):
        csv_layout.check_no_empty_class([0, 1, 2, 3, 4, 6], CLASSES, "labels.csv (train split)")
    np.testing.assert_array_equal(
        csv_layout.check_no_empty_class([0, 1, 2, 3, 4, 5, 6, 6, -1], CLASSES, "x"),
        [1, 1, 1, 1, 1, 1, 2],
    )


def test_image_problems(ham10000_dir, tmp_path):
    good = (ham10000_dir / "images" / "ISIC_0024306.jpg").read_bytes()
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    (folder / "ok.jpg").write_bytes(good)
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "garbage.jpg").write_bytes(b"not an image at all")
    (folder / "empty.png").write_bytes(b"")
    (folder / "twice.jpg").write_bytes(good)
    (folder / "sub" / "twice.png").write_bytes(good)
    (folder / "._ok.jpg").write_bytes(b"\0\5\0\0")  # macOS metadata: not an image
    index = image_files.index_images(folder)
    assert sorted(index.refs) == ["empty", "garbage", "ok", "truncated"]
    assert index.duplicates == {"twice"}
    assert index.problems[0].kind == "duplicate_id" and "twice.png" in str(index.problems[0])
    rows, _ = parse(
        HEADER
        + "".join(
            f"{n},1,0,0,0,0,0,0\n"
            for n in ("ok", "truncated", "garbage", "empty", "twice", "absent")
        )
    )
    items, problems = image_files.match_rows(rows, index)
    assert [(p.kind, p.line, p.image_id) for p in problems] == [("missing_image", 7, "absent")]
    assert "expected absent{.jpg" in problems[0].message and str(folder) in problems[0].message
    good_items, bad = image_files.check_images(items)
    assert [it.image_id for it in good_items] == ["ok"]
    assert [(p.kind, p.line) for p in bad] == [
        ("corrupt_image", 3),
        ("corrupt_image", 4),
        ("corrupt_image", 5),
    ]
    assert "truncated.jpg" in str(bad[0]) and "labels.csv, line 3" in str(bad[0])
    assert "truncated" in bad[0].message  # PIL's reason is kept
    with pytest.raises(ValueError, match="empty"):
        image_files.inspect_image(b"")
    # grayscale PNG is converted to RGB on storage; RGB JPEG kept as is
    buf = io.BytesIO()
    Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4)).save(buf, format="PNG")
    stored, changed = image_files.prepare_image(buf.getvalue())
    assert changed and Image.open(io.BytesIO(stored)).mode == "RGB"
    np.testing.assert_array_equal(
        np.asarray(Image.open(io.BytesIO(stored)))[..., 1], np.arange(12).reshape(3, 4)
    )
    assert image_files.prepare_image(good) == (good, False)
    assert image_files.prepare_image(good, short_side=150) == (good, False)  # no upscaling / no-op
    assert image_files.short_side_size(200, 150, 100) == (133, 100)
    assert image_files.short_side_size(450, 600, 256) == (256, 341)


def make_bad_source(ham_dir, dest: pathlib.Path) -> pathlib.Path:
    """A small source with one of each item problem (and enough good rows for every class)."""
    images = select_images(ham_dir, per_class=3, offset=100)
    src = write_source(ham_dir, dest, images)
    truncated = src / "images" / f"{images[0]}.jpg"
    truncated.write_bytes(truncated.read_bytes()[:3000])
    with open(src / "labels.csv", "a", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ISIC_9999999", 1, 0, 0, 0, 0, 0, 0])  # no such image
        writer.writerow([images[1], 1, 1, 0, 0, 0, 0, 0])  # not one-hot (and duplicate id)
        writer.writerow([images[2], 0, 1, 0, 0, 0, 0, 0])  # duplicate id
    # an image without a CSV row: not an error for folder_csv, but reported
    shutil.copy(ham_dir / "images" / "ISIC_0024306.jpg", src / "images" / "unlisted.jpg")
    return src


def test_bad_items_raise_with_file_and_line(ham10000_dir, tmp_path):
    src = make_bad_source(ham10000_dir, tmp_path / "src")
    n_rows = sum(1 for _ in open(src / "labels.csv")) - 1
    with pytest.raises(DataError) as err:
        build.build_dataset("folder_csv", os.fspath(tmp_path / "out"), source=os.fspath(src))
    message = str(err.value)
    csv_path = os.fspath(src / "labels.csv")
    assert "4 bad input item(s)" in message and "--skip_bad" in message
    assert f"{csv_path}, line {n_rows - 1}: no image file for ISIC_9999999" in message
    assert f"{csv_path}, line {n_rows}: " in message and "expected one-hot" in message
    assert f"{csv_path}, line {n_rows + 1}: duplicate image id" in message
    assert "cannot be decoded" in message and "line 2" in message
    assert not (tmp_path / "out" / "folder_csv" / "default" / "1.0.0").exists()


def test_skip_bad_counts(ham10000_dir, tmp_path):
    src = make_bad_source(ham10000_dir, tmp_path / "src")
    labels, _, _ = read_ham(ham10000_dir)
    path = build.build_dataset(
        "folder_csv",
        os.fspath(tmp_path / "out"),
        source=os.fspath(src),
        skip_bad=True,
        split_fractions="1",
    )
    meta = build.load_build_metadata(path)
    assert meta["report"]["skipped_counts"] == {
        "corrupt_image": 1,
        "missing_image": 1,
        "not_one_hot": 1,
        "duplicate_id": 1,
    }
    assert meta["params"]["skip_bad"] is True
    with open(src / "labels.csv", newline="") as f:
        listed = sorted({row[0] for row in list(csv.reader(f))[1:]} - {"ISIC_9999999"})
    ids, got, _, _ = read_split(path, "train")
    corrupt = meta["report"]["skipped"][
        [p["kind"] for p in meta["report"]["skipped"]].index("corrupt_image")
    ]["image_id"]
    assert ids == [i for i in listed if i != corrupt]  # only the corrupt image is lost
    assert got == [labels[i] for i in ids]
    table = build.summary_table(meta)
    assert "skipped 4 bad item(s)" in table and "corrupt_image: 1" in table
    assert meta["report"]["unlisted_images"] == ["unlisted"]
    assert "1 image(s) under" in table and "have no row in" in table


def test_empty_class_in_build(ham10000_dir, tmp_path):
    labels, _, _ = read_ham(ham10000_dir)
    images = [i for i in select_images(ham10000_dir, per_class=2) if labels[i] != 5]
    src = write_source(ham10000_dir, tmp_path / "src", images)
    with pytest.raises(DataError, match=r"\['DF'\] have 0 training images"):
        build.build_dataset("folder_csv", os.fspath(tmp_path / "out"), source=os.fspath(src))


# ------------------------------------------------------------------------------------------
# isic2018
# ------------------------------------------------------------------------------------------
def write_gt(path: pathlib.Path, images, labels):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", *CLASSES])
        for image in images:
            writer.writerow([image, *[f"{float(k == labels[image]):.1f}" for k in range(7)]])


@pytest.fixture(scope="module")
def isic_manual(ham10000_dir, tmp_path_factory):
    """Official layout in miniature: zipped training input, GT folder, lesion groupings,
    validation input folder with zipped GT, test input without GT."""
    labels, lesions, _ = read_ham(ham10000_dir)
    train = select_images(ham10000_dir, per_class=8)
    val = [i for i in select_images(ham10000_dir, per_class=2, offset=200) if i not in train]
    test = [
        i
        for i in select_images(ham10000_dir, per_class=1, offset=300)
        if i not in train and i not in val
    ]
    manual = tmp_path_factory.mktemp("isic_manual")
    with zipfile.ZipFile(manual / "ISIC2018_Task3_Training_Input.zip", "w") as zf:
        for image in train:
            zf.write(
                ham10000_dir / "images" / f"{image}.jpg",
                f"ISIC2018_Task3_Training_Input/{image}.jpg",
            )
        zf.writestr("ISIC2018_Task3_Training_Input/ATTRIBUTION.txt", "attribution")
        zf.writestr(f"__MACOSX/ISIC2018_Task3_Training_Input/._{train[0]}.jpg", b"\0\5")
    write_gt(
        manual / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv",
        train,
        labels,
    )
    with open(manual / "ISIC2018_Task3_Training_LesionGroupings.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "lesion_id", "diagnosis_confirm_type"])
        writer.writerows([i, lesions[i], "histopathology"] for i in train)
    (manual / "ISIC2018_Task3_Validation_Input").mkdir()
    for image in val:
        shutil.copy(
            ham10000_dir / "images" / f"{image}.jpg", manual / "ISIC2018_Task3_Validation_Input"
        )
    gt = manual / "gt_tmp" / "ISIC2018_Task3_Validation_GroundTruth.csv"
    write_gt(gt, val, labels)
    with zipfile.ZipFile(manual / "ISIC2018_Task3_Validation_GroundTruth.zip", "w") as zf:
        zf.write(
            gt, "ISIC2018_Task3_Validation_GroundTruth/ISIC2018_Task3_Validation_GroundTruth.csv"
        )
    shutil.rmtree(manual / "gt_tmp")
    (manual / "ISIC2018_Task3_Test_Input").mkdir()
    for image in test:
        shutil.copy(ham10000_dir / "images" / f"{image}.jpg", manual / "ISIC2018_Task3_Test_Input")
    return manual, {"train": train, "validation": val, "test": test}


def test_isic2018_official_splits(isic_manual, ham10000_dir, tmp_path):
    manual, expected = isic_manual
    labels, lesions, _ = read_ham(ham10000_dir)
    path = build.build_dataset(
        "isic2018", os.fspath(tmp_path), manual_dir=os.fspath(manual), config="short100"
    )
    assert path.endswith(os.path.join("isic2018", "short100", "1.1.0"))
    meta = build.load_build_metadata(path)
    for split in ("train", "validation", "test"):
        ids, got, got_lesions, raw = read_split(path, split)
        assert ids == sorted(expected[split])
        if split == "test":
            assert got == [-1] * len(ids) and not meta["splits"]["test"]["has_labels"]
        else:
            assert got == [labels[i] for i in ids] and meta["splits"][split]["has_labels"]
        assert got_lesions == ([lesions[i] for i in ids] if split == "train" else [""] * len(ids))
        assert Image.open(io.BytesIO(raw[0])).size == (133, 100)
    np.testing.assert_array_equal(
        meta["splits"]["train"]["class_counts"],
        np.bincount([labels[i] for i in expected["train"]], minlength=7),
    )
    warnings = "\n".join(meta["report"]["warnings"])
    assert "Test_GroundTruth.csv not found" in warnings
    assert "split train has" in warnings and "official release has 10015" in warnings
    assert meta["report"]["skipped"] == []
    table = build.summary_table(meta)
    assert "no ground truth in test" in table


def test_isic2018_released_split(isic_manual, ham10000_dir, tmp_path):
    manual, expected = isic_manual
    labels, _, _ = read_ham(ham10000_dir)
    config = isic2018.isic2018_config("released_original", holdout_per_class=2, seed=1)
    assert config.name == "released_original_holdout2_seed1"
    path = build.build_dataset(
        "isic2018",
        os.fspath(tmp_path),
        manual_dir=os.fspath(manual),
        config="released_original",
        holdout_per_class=2,
        seed=1,
    )
    train_ids, train_labels, _, raw = read_split(path, "train")
    val_ids, val_labels, _, _ = read_split(path, "validation")
    pooled = expected["train"] + expected["validation"]
    assert sorted(train_ids + val_ids) == sorted(pooled)
    assert np.bincount(val_labels, minlength=7).tolist() == [2] * 7
    assert val_labels == [labels[i] for i in val_ids]
    assert raw[0] == (ham10000_dir / "images" / f"{train_ids[0]}.jpg").read_bytes()
    assert read_split(path, "test")[0] == sorted(expected["test"])
    # the hold-out is the pure function's choice: seeded, order-independent
    pooled_labels = [labels[i] for i in pooled]
    mask = splitting.holdout_per_class(pooled_labels, pooled, 2, 1, CLASSES)
    assert sorted(np.asarray(pooled)[mask]) == val_ids
    rev = splitting.holdout_per_class(pooled_labels[::-1], pooled[::-1], 2, 1, CLASSES)
    np.testing.assert_array_equal(rev, mask[::-1])
    assert not np.array_equal(
        splitting.holdout_per_class(pooled_labels, pooled, 2, 2, CLASSES), mask
    )
    with pytest.raises(DataError, match="class MEL has"):
        splitting.holdout_per_class(pooled_labels, pooled, 50, 0, CLASSES)


def test_released_lists_are_shipped_as_package_data():
    """The released code's lists: 9886 train and 322 held out (46 per class), no duplicates."""
    import tomllib

    lists = isic2018.read_released_lists()
    assert len(lists) == 10208
    splits = collections.Counter(split for _, split in lists.values())
    assert splits == {"train": 9886, "heldout": 322}
    held = collections.Counter(label for label, split in lists.values() if split == "heldout")
    assert held == {name: 46 for name in CLASSES}
    assert (isic2018.RELEASED_LISTS.parent / "SOURCE.md").exists()
    root = pathlib.Path(__file__).resolve().parents[1]
    with open(root / "pyproject.toml", "rb") as f:
        patterns = tomllib.load(f)["tool"]["setuptools"]["package-data"]["input_pipeline"]
    package = root / "input_pipeline"
    shipped = {p for pattern in patterns for p in package.glob(pattern)}
    assert (
        isic2018.RELEASED_LISTS in shipped
        and isic2018.RELEASED_LISTS.parent / "SOURCE.md" in shipped
    )


def _write_lists(path: pathlib.Path, labels: dict[str, int], train, heldout) -> pathlib.Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "label", "split"])
        for split, ids in (("train", train), ("heldout", heldout)):
            writer.writerows([i, CLASSES[labels[i]], split] for i in ids)
    return path


def test_listed_split_follows_the_lists_and_names_what_is_missing():
    def item(image_id, label):
        return image_files.Item(image_id, label, "", image_id, "gt.csv", 1)

    parts = {
        "train": [item("a", 0), item("b", 1), item("c", 2)],
        "validation": [item("d", 0)],
        "test": [item("t", -1)],
    }
    lists = {"a": ("MEL", "heldout"), "b": ("NV", "train"), "c": ("BCC", "train")}
    lists["d"] = ("MEL", "train")
    got = isic2018.listed_split(parts, lists)
    assert [it.image_id for it in got["train"]] == ["b", "c", "d"]
    assert [it.image_id for it in got["validation"]] == ["a"]
    assert [it.image_id for it in got["test"]] == ["t"]
    with pytest.raises(DataError, match=r"1 of the 5 .* \(first: e\)"):
        isic2018.listed_split(parts, {**lists, "e": ("MEL", "train")})
    with pytest.raises(DataError, match="another label .* b: ground truth NV, listed MEL"):
        isic2018.listed_split(parts, {**lists, "b": ("MEL", "train")})


def test_isic2018_released_uses_the_released_lists(
    isic_manual, ham10000_dir, tmp_path, monkeypatch
):
    manual, expected = isic_manual
    labels, _, _ = read_ham(ham10000_dir)
    pooled = sorted(expected["train"] + expected["validation"])
    # Held out: every third pooled image, whichever official split it came from.
    heldout = pooled[::3]
    train = [i for i in pooled if i not in heldout]
    lists = _write_lists(tmp_path / "lists.csv", labels, train, heldout)
    monkeypatch.setattr(isic2018, "RELEASED_LISTS", lists)
    config = isic2018.isic2018_config("released_short100")
    assert config.listed and config.name == "released_short100"
    path = build.build_dataset(
        "isic2018",
        os.fspath(tmp_path / "out"),
        manual_dir=os.fspath(manual),
        config="released_short100",
    )
    train_ids, train_labels, _, _ = read_split(path, "train")
    val_ids, val_labels, _, _ = read_split(path, "validation")
    assert train_ids == sorted(train) and val_ids == sorted(heldout)
    assert val_labels == [labels[i] for i in val_ids]
    assert read_split(path, "test")[0] == sorted(expected["test"])
    assert build.load_build_metadata(path)["params"]["released_lists"] is True
    # A listed image that is not in the downloads stops the build, naming it.
    labels["ISIC_9999999"] = 0
    _write_lists(lists, labels, train + ["ISIC_9999999"], heldout)
    with pytest.raises(DataError, match="ISIC_9999999"):
        build.build_dataset(
            "isic2018",
            os.fspath(tmp_path / "out2"),
            manual_dir=os.fspath(manual),
            config="released_short100",
        )


def test_isic2018_released_refuses_a_build_before_the_lists(tmp_path):
    """A `released` build made before the released code's lists is refused with the command."""
    from input_pipeline import sources
    from spmix_jax.errors import UserError

    old = tmp_path / "isic2018" / "released" / "1.0.0"
    old.mkdir(parents=True)
    (old / "dataset_info.json").write_text("{}")
    cfg = ml_collections.ConfigDict(
        {
            "name": "isic2018",
            "data_dir": os.fspath(tmp_path),
            "builder_config": "released",
            "source_dir": "",
        }
    )
    with pytest.raises(UserError, match="--builder=isic2018 .*--config=released --overwrite"):
        sources.dataset_dir(cfg)
    # A drawn hold-out never used the lists: its old builds stay readable.
    drawn = tmp_path / "isic2018" / "released_holdout46_seed1" / "1.0.0"
    drawn.mkdir(parents=True)
    (drawn / "dataset_info.json").write_text("{}")
    cfg.builder_config = "released_holdout46_seed1"
    assert sources.dataset_dir(cfg) == os.fspath(drawn)


def test_isic2018_config_names():
    assert isic2018.isic2018_config("short256") == "short256"
    assert isic2018.isic2018_config("released") == "released"
    assert isic2018.isic2018_config("original") == "original"
    custom = isic2018.isic2018_config("short384")
    assert (custom.name, custom.short_side, custom.released) == ("short384", 384, False)
    custom = isic2018.isic2018_config("released_seed3")
    assert (custom.name, custom.short_side, custom.seed) == ("released_holdout46_seed3", 256, 3)
    assert not custom.listed  # a drawn hold-out, not the released code's lists
    custom = isic2018.isic2018_config("released_original")
    assert (custom.name, custom.short_side, custom.listed) == ("released_original", 0, True)
    assert isic2018.required_version("released") == isic2018.LISTED_SPLIT_VERSION
    assert isic2018.required_version("released_holdout46_seed0") is None
    assert isic2018.required_version("short256") is None
    for bad in ("short", "released_bogus", "tiny", "original_seed1"):
        with pytest.raises(ValueError):
            isic2018.isic2018_config(bad)
    with pytest.raises(ValueError, match="released configs"):
        isic2018.isic2018_config("short256", seed=1)


def test_isic2018_bad_layout(isic_manual, tmp_path):
    manual, expected = isic_manual
    broken = tmp_path / "manual"
    shutil.copytree(manual, broken)
    os.remove(broken / "ISIC2018_Task3_Training_Input.zip")
    with pytest.raises(DataError, match="needs --manual_dir"):
        build.build_dataset(
            "isic2018", os.fspath(tmp_path / "o0"), manual_dir=os.fspath(tmp_path / "absent")
        )
    with pytest.raises(DataError, match="ISIC2018_Task3_Training_Input .folder or .zip. not found"):
        build.build_dataset("isic2018", os.fspath(tmp_path / "o1"), manual_dir=os.fspath(broken))
    # a validation image without a ground-truth row
    shutil.copytree(manual, tmp_path / "m2")
    first = expected["train"][0]
    with zipfile.ZipFile(manual / "ISIC2018_Task3_Training_Input.zip") as zf:
        data = zf.read(f"ISIC2018_Task3_Training_Input/{first}.jpg")
    (tmp_path / "m2" / "ISIC2018_Task3_Validation_Input" / f"{first}.jpg").write_bytes(data)
    with pytest.raises(DataError) as err:
        build.build_dataset(
            "isic2018", os.fspath(tmp_path / "o2"), manual_dir=os.fspath(tmp_path / "m2")
        )
    assert f"image {first} has no row in" in str(err.value)
    # ... and with a row: the same id in two splits
    labels = {first: 0, **{i: 1 for i in expected["validation"]}}
    os.remove(tmp_path / "m2" / "ISIC2018_Task3_Validation_GroundTruth.zip")
    gt = (
        tmp_path
        / "m2"
        / "ISIC2018_Task3_Validation_GroundTruth"
        / "ISIC2018_Task3_Validation_GroundTruth.csv"
    )
    write_gt(gt, [*expected["validation"], first], labels)
    with pytest.raises(DataError) as err:
        build.build_dataset(
            "isic2018", os.fspath(tmp_path / "o3"), manual_dir=os.fspath(tmp_path / "m2")
        )
    assert (
        f"{gt}, line {len(expected['validation']) + 2}: image id {first} is in split "
        "train and in split validation" in str(err.value)
    )


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------
def test_cli_builds_and_prints_table(ham10000_dir, tmp_path):
    images = select_images(ham10000_dir, per_class=2, offset=400)
    src = write_source(ham10000_dir, tmp_path / "src", images)
    env = {**os.environ, "PYTHONPATH": os.fspath(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "input_pipeline.build",
            "--builder=folder_csv",
            f"--source={src}",
            f"--data_dir={tmp_path / 'out'}",
            "--split_fractions=1",
            "--config=cli",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    counts = np.bincount([read_ham(ham10000_dir)[0][i] for i in images], minlength=7)
    lines = {
        line.split()[0]: line.split()[1:]
        for line in result.stdout.splitlines()
        if line.split() and line.split()[0] in (*CLASSES, "total")
    }
    assert [int(lines[c][0]) for c in CLASSES] == counts.tolist()
    assert int(lines["total"][0]) == len(images)
    assert "--config.data.builder_config=cli" in result.stdout
    info = json.loads(
        (tmp_path / "out" / "folder_csv" / "cli" / "1.0.0" / "metadata.json").read_text()
    )
    assert info["spmix"]["splits"]["train"]["num_examples"] == len(images)
    # --help documents every flag; a flag of the other builder is refused
    help_text = subprocess.run(
        [sys.executable, "-m", "input_pipeline.build", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    ).stdout
    for flag in (
        "builder",
        "data_dir",
        "config",
        "source",
        "csv",
        "metadata",
        "split_fractions",
        "seed",
        "short_side",
        "skip_bad",
        "manual_dir",
        "holdout_per_class",
    ):
        assert f"--{flag}" in help_text or f"--[no]{flag}" in help_text


def test_order_kept_when_tfds_spills_to_disk(ham10000_dir, tmp_path, monkeypatch):
    # Past 1 GB (e.g. isic2018/original) TFDS sorts examples through 1000 key-range buckets on
    # disk; the stored order must still match the label lists in the metadata.
    from tensorflow_datasets.core import shuffle

    monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 20_000)
    images = select_images(ham10000_dir, per_class=5, offset=30)
    src = write_source(ham10000_dir, tmp_path / "src", images)
    path = build.build_dataset(
        "folder_csv", os.fspath(tmp_path / "out"), source=os.fspath(src), split_fractions="1"
    )
    ids, got, _, _ = read_split(path, "train")
    assert ids == sorted(images)
    assert got == build.load_build_metadata(path)["splits"]["train"]["labels"]
    assert got == [read_ham(ham10000_dir)[0][i] for i in ids]
