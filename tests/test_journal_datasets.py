"""ISIC 2019 and PAD-UFES-20 built from fixtures in their publishers' layouts; classes owned by
the dataset; the data package standing alone.

The fixtures are generated here (small random images) with the official file names, headers
and quirks: ISIC 2019's one-hot ground truth with the UNK column, `_downsampled` ids, empty
lesion ids and the test release's UNK-only rows; PAD-UFES-20's 26-column metadata.csv, images in
the three parts of the download (a zip, a folder, a folder inside images/), RGBA PNGs and patients
with several lesions. References are read from the generated files with the csv module and PIL.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import os
import pathlib
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs import common, isic2019, pad_ufes20
from input_pipeline import build
from input_pipeline.builders import csv_layout
from input_pipeline.builders import isic2019 as isic2019_builder
from input_pipeline.builders import pad_ufes20 as pad_builder
from input_pipeline.errors import DataError
from spmix_jax import run_config
from spmix_jax.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[1]
ISIC2019_HEADER = ["image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
ISIC2019_METADATA_HEADER = ["image", "age_approx", "anatom_site_general", "lesion_id", "sex"]
PAD_HEADER = (
    "patient_id,lesion_id,smoke,drink,background_father,background_mother,age,pesticide,gender,"
    "skin_cancer_history,cancer_history,has_piped_water,has_sewage_system,fitspatrick,region,"
    "diameter_1,diameter_2,diagnostic,itch,grew,hurt,changed,bleed,elevation,img_id,biopsed"
).split(",")
PAD_DIAGNOSES = ("ACK", "BCC", "MEL", "NEV", "SCC", "SEK")


def _image_bytes(rng: np.random.Generator, size: tuple[int, int], fmt: str, mode: str) -> bytes:
    pixels = rng.integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format=fmt)
    return buffer.getvalue()


def _write_csv(path: pathlib.Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def read_split(path: str, split: str) -> list[tuple[str, int, str]]:
    """(image_id, label, lesion_id) of every record of a built split."""
    ds = tfds.builder_from_directory(path).as_data_source(
        split, decoders={"image": tfds.decode.SkipDecoding()}
    )
    return [
        (r["image_id"].decode(), int(r["label"]), r["lesion_id"].decode())
        for r in (ds[i] for i in range(len(ds)))
    ]


# ------------------------------------------------------------------------------------------
# ISIC 2019
# ------------------------------------------------------------------------------------------
def make_isic2019(root: pathlib.Path, per_class: int = 20) -> pathlib.Path:
    """The official downloads in miniature: training zip, ground truth, metadata, and an
    extracted test folder with its ground truth (two UNK-only rows) and metadata."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    gt, meta = [], []
    with zipfile.ZipFile(root / "ISIC_2019_Training_Input.zip", "w") as zf:
        zf.writestr("ISIC_2019_Training_Input/LICENSE.txt", "CC-BY-NC")
        for k in range(8):
            for i in range(per_class):
                image = f"ISIC_{k * 100 + i:07d}" + ("_downsampled" if i == 0 else "")
                lesion = "" if i == 1 else f"IL_{k}{i // 2:06d}"  # images 2,3 and 4,5 share one
                size = (40, 30) if i % 2 else (32, 32)
                zf.writestr(
                    f"ISIC_2019_Training_Input/{image}.jpg", _image_bytes(rng, size, "JPEG", "RGB")
                )
                gt.append([image] + ["1.0" if c == k else "0.0" for c in range(9)])
                meta.append([image, "55.0", "anterior torso", lesion, "female"])
    _write_csv(root / "ISIC_2019_Training_GroundTruth.csv", ISIC2019_HEADER, gt)
    _write_csv(root / "ISIC_2019_Training_Metadata.csv", ISIC2019_METADATA_HEADER, meta)
    test_dir = root / "ISIC_2019_Test_Input"
    test_dir.mkdir()
    test_gt, test_meta = [], []
    for n in range(10):
        image = f"ISIC_{9000000 + n:07d}"
        (test_dir / f"{image}.jpg").write_bytes(_image_bytes(rng, (36, 28), "JPEG", "RGB"))
        k = n if n < 8 else 8  # the last two are UNK only
        test_gt.append([image] + ["1.0" if c == k else "0.0" for c in range(9)] + ["1.0"])
        test_meta.append([image, "40.0", "head/neck", "", "male"])
    _write_csv(root / "ISIC_2019_Test_GroundTruth.csv", [*ISIC2019_HEADER, "score_weight"], test_gt)
    _write_csv(root / "ISIC_2019_Test_Metadata.csv", ISIC2019_METADATA_HEADER, test_meta)
    return root


def _csv_labels(path: pathlib.Path) -> dict[str, int]:
    """image -> class index by the CSV's '1.0' column (-1 for UNK)."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        next(reader)
        labels = {}
        for row in reader:
            k = [float(v) for v in row[1:10]].index(1.0)
            labels[row[0]] = -1 if k == 8 else k
    return labels


@pytest.fixture(scope="module")
def isic2019_built(tmp_path_factory):
    manual = make_isic2019(tmp_path_factory.mktemp("isic2019") / "downloads")
    out = tmp_path_factory.mktemp("isic2019_out")
    path = build.build_dataset("isic2019", os.fspath(out), manual_dir=os.fspath(manual))
    return manual, path


def test_isic2019_builds_the_official_layout_split_by_lesion(isic2019_built):
    manual, path = isic2019_built
    meta = build.load_build_metadata(path)
    assert meta["class_names"] == ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
    train_labels = _csv_labels(manual / "ISIC_2019_Training_GroundTruth.csv")
    with open(manual / "ISIC_2019_Training_Metadata.csv", newline="") as f:
        lesion_of = {r["image"]: r["lesion_id"] for r in csv.DictReader(f)}
    pool = {s: read_split(path, s) for s in ("train", "validation", "test")}
    got = {i: (label, lesion) for records in pool.values() for i, label, lesion in records}
    # Every training row once, with its label and lesion id; `_downsampled` ids match files.
    assert got == {i: (train_labels[i], lesion_of[i]) for i in train_labels}
    assert sum(i.endswith("_downsampled") for i in got) == 8  # one per class
    # No lesion on two sides; an image without a lesion id is its own group.
    side = {}
    for name, records in pool.items():
        for image, _, lesion in records:
            group = lesion or image
            assert side.setdefault(group, name) == name, group
    assert all(pool.values())
    for name, records in pool.items():
        counts = np.bincount([label for _, label, _ in records], minlength=8).tolist()
        assert meta["splits"][name]["class_counts"] == counts
    assert min(meta["splits"]["train"]["class_counts"]) >= 1
    # The official test release: eight classes, and the UNK-only rows apart with label -1.
    test_labels = _csv_labels(manual / "ISIC_2019_Test_GroundTruth.csv")
    official = read_split(path, "official_test")
    assert {i: label for i, label, _ in official} == {
        i: k for i, k in test_labels.items() if k >= 0
    }
    unk = read_split(path, "official_test_unk")
    assert sorted(i for i, _, _ in unk) == sorted(i for i, k in test_labels.items() if k < 0)
    assert {label for _, label, _ in unk} == {-1}
    assert not meta["splits"]["official_test_unk"]["has_labels"]
    assert any("UNK" in w for w in meta["report"]["warnings"])


def test_isic2019_missing_image_and_unk_training_row_are_named(tmp_path):
    manual = make_isic2019(tmp_path / "downloads", per_class=2)
    gt = manual / "ISIC_2019_Training_GroundTruth.csv"
    rows = list(csv.reader(open(gt, newline="")))
    rows[3][1:] = ["0.0"] * 8 + ["1.0"]  # line 4: UNK in training
    rows.append(["ISIC_0999999"] + ["1.0"] + ["0.0"] * 8)  # line 18: no image file
    _write_csv(gt, rows[0], rows[1:])
    with pytest.raises(DataError) as err:
        build.build_dataset("isic2019", os.fspath(tmp_path / "out"), manual_dir=os.fspath(manual))
    message = str(err.value)
    assert f"{gt}, line 4: {rows[3][0]}: only UNK is 1" in message
    assert f"{gt}, line {len(rows)}: no image file for ISIC_0999999" in message


def test_isic2019_needs_the_training_release(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="isic2019 needs --manual_dir, a folder with the official"):
        build.build_dataset(
            "isic2019", os.fspath(tmp_path / "out"), manual_dir=os.fspath(tmp_path / "empty")
        )
    (tmp_path / "empty" / "ISIC_2019_Training_GroundTruth.csv").write_text("image,MEL\n")
    with pytest.raises(DataError, match="ISIC_2019_Training_Input .folder or .zip. not found"):
        build.build_dataset(
            "isic2019", os.fspath(tmp_path / "out"), manual_dir=os.fspath(tmp_path / "empty")
        )


# ------------------------------------------------------------------------------------------
# PAD-UFES-20
# ------------------------------------------------------------------------------------------
def make_pad(root: pathlib.Path, layout: str = "parts") -> pathlib.Path:
    """metadata.csv with the 26 published columns and PNGs `PAT_<patient>_<lesion>_<n>.png`.

    60 patients; every third has a second lesion of another diagnosis; odd lesions have two
    images; every third image is RGBA. `layout='parts'`: imgs_part_1.zip, imgs_part_2/ and
    images/imgs_part_3/; `'images'`: one images/ folder.
    """
    root.mkdir(parents=True)
    rng = np.random.default_rng(1)
    rows, images = [], []
    lesion_id, number = 100, 500
    for p in range(60):
        patient = f"PAT_{1000 + p}"
        diagnoses = [p % 6] + ([(p + 1) % 6] if p % 3 == 0 else [])
        for k in diagnoses:
            lesion_id += 1
            for _ in range(1 + lesion_id % 2):
                number += 1
                name = f"{patient}_{lesion_id}_{number}.png"
                mode = "RGBA" if number % 3 == 0 else "RGB"
                images.append((name, _image_bytes(rng, (30 + number % 7, 28), "PNG", mode)))
                values = dict.fromkeys(PAD_HEADER, "")
                values.update(
                    patient_id=patient,
                    lesion_id=str(lesion_id),
                    smoke="False",
                    age=str(40 + p),
                    gender="FEMALE",
                    fitspatrick="2.0",
                    region="FACE",
                    diameter_1="6.0",
                    diameter_2="5.0",
                    diagnostic=PAD_DIAGNOSES[k],
                    itch="True",
                    img_id=name,
                    biopsed=str(k != 3),
                )
                rows.append([values[c] for c in PAD_HEADER])
    _write_csv(root / "metadata.csv", PAD_HEADER, rows)
    if layout == "images":
        (root / "images").mkdir()
        for name, data in images:
            (root / "images" / name).write_bytes(data)
        return root
    thirds = np.array_split(np.arange(len(images)), 3)
    with zipfile.ZipFile(root / "imgs_part_1.zip", "w") as zf:
        for i in thirds[0]:
            zf.writestr(f"imgs_part_1/{images[i][0]}", images[i][1])
    for folder, part in (
        (root / "imgs_part_2", thirds[1]),
        (root / "images/imgs_part_3", thirds[2]),
    ):
        folder.mkdir(parents=True)
        for i in part:
            (folder / images[i][0]).write_bytes(images[i][1])
    return root


def _pad_rows(root: pathlib.Path) -> dict[str, dict[str, str]]:
    with open(root / "metadata.csv", newline="") as f:
        return {r["img_id"].removesuffix(".png"): r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def pad_built(tmp_path_factory):
    manual = make_pad(tmp_path_factory.mktemp("pad") / "download")
    out = tmp_path_factory.mktemp("pad_out")
    path = build.build_dataset(
        "pad_ufes20", os.fspath(out), manual_dir=os.fspath(manual), config="original"
    )
    return manual, path


def test_pad_ufes20_builds_the_three_parts_split_by_patient(pad_built):
    manual, path = pad_built
    rows = _pad_rows(manual)
    meta = build.load_build_metadata(path)
    assert meta["class_names"] == list(PAD_DIAGNOSES)
    splits = {s: read_split(path, s) for s in ("train", "validation", "test")}
    got = {i: label for records in splits.values() for i, label, _ in records}
    assert got == {i: PAD_DIAGNOSES.index(r["diagnostic"]) for i, r in rows.items()}
    side = {}
    for name, records in splits.items():
        for image, _, lesion in records:
            assert lesion == rows[image]["lesion_id"]
            patient = rows[image]["patient_id"]
            assert side.setdefault(patient, name) == name, patient
    assert all(splits.values())
    several = collections.Counter(
        r["patient_id"] for r in {r["lesion_id"]: r for r in rows.values()}.values()
    )
    assert max(several.values()) == 2  # patients with two lesions are kept whole
    for name, records in splits.items():
        counts = np.bincount([label for _, label, _ in records], minlength=6).tolist()
        assert meta["splits"][name]["class_counts"] == counts
    # The clinical columns, every one of the 26, kept per image.
    clinical = meta["clinical"]
    assert clinical["columns"] == PAD_HEADER
    assert clinical["rows"] == {i: [r[c] for c in PAD_HEADER] for i, r in rows.items()}


def test_pad_ufes20_rgba_pngs_are_stored_as_their_rgb(pad_built):
    manual, path = pad_built
    sources = {p.stem: p for p in manual.rglob("*.png")}
    with zipfile.ZipFile(manual / "imgs_part_1.zip") as zf:
        zipped = {pathlib.Path(n).stem: zf.read(n) for n in zf.namelist()}
    ds = tfds.builder_from_directory(path).as_data_source("train")
    checked = 0
    for i in range(len(ds)):
        record = ds[i]
        image_id = record["image_id"].decode()
        data = zipped[image_id] if image_id in zipped else sources[image_id].read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            reference = np.asarray(im)[..., :3]
            checked += im.mode == "RGBA"
        np.testing.assert_array_equal(record["image"], reference)
    assert checked >= 2


def test_pad_ufes20_one_images_folder_gives_the_same_dataset(pad_built, tmp_path):
    _, parts_path = pad_built
    manual = make_pad(tmp_path / "download", layout="images")
    path = build.build_dataset(
        "pad_ufes20", os.fspath(tmp_path / "out"), manual_dir=os.fspath(manual), config="original"
    )
    for split in ("train", "validation", "test"):
        assert read_split(path, split) == read_split(parts_path, split)


def test_pad_ufes20_bad_diagnosis_and_unreadable_png_are_named(tmp_path):
    manual = make_pad(tmp_path / "download", layout="images")
    rows = list(csv.reader(open(manual / "metadata.csv", newline="")))
    rows[5][PAD_HEADER.index("diagnostic")] = "XYZ"
    _write_csv(manual / "metadata.csv", rows[0], rows[1:])
    broken = manual / "images" / rows[7][PAD_HEADER.index("img_id")]
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(DataError) as err:
        build.build_dataset("pad_ufes20", os.fspath(tmp_path / "out"), manual_dir=os.fspath(manual))
    message = str(err.value)
    assert f"{manual / 'metadata.csv'}, line 6: " in message and "'XYZ' is not one of" in message
    assert f"{manual / 'metadata.csv'}, line 8: image {broken}" in message


def test_pad_ufes20_metadata_missing_a_column_is_refused(tmp_path):
    manual = make_pad(tmp_path / "download", layout="images")
    rows = list(csv.reader(open(manual / "metadata.csv", newline="")))
    drop = PAD_HEADER.index("diagnostic")
    _write_csv(manual / "metadata.csv", rows[0][:drop] + rows[0][drop + 1 :], [])
    with pytest.raises(DataError, match=r"line 1: missing column\(s\) \['diagnostic'\]"):
        build.build_dataset("pad_ufes20", os.fspath(tmp_path / "out"), manual_dir=str(manual))


# ------------------------------------------------------------------------------------------
# The dataset owns its classes; configs; the data package stands alone
# ------------------------------------------------------------------------------------------
NEW_USER_CLASSES = ("NEV", "MEL", "MISC", "SK", "BCC")


def make_named_folder(root: pathlib.Path, per_class: int = 4) -> pathlib.Path:
    """A folder with an `image,label` CSV naming five classes (not ISIC's)."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(2)
    rows = []
    for k, name in enumerate(NEW_USER_CLASSES):
        for i in range(per_class):
            image = f"img_{k}_{i}"
            (root / "images" / f"{image}.jpg").write_bytes(
                _image_bytes(rng, (30, 24), "JPEG", "RGB")
            )
            rows.append([f"{image}.jpg", name])
    _write_csv(root / "labels.csv", ["image", "label"], rows)
    return root


def test_image_label_csv_names_its_classes_sorted(tmp_path):
    source = make_named_folder(tmp_path / "src")
    path = build.build_dataset(
        "folder_csv", os.fspath(tmp_path / "out"), source=os.fspath(source), split_fractions="1"
    )
    names = sorted(NEW_USER_CLASSES)
    assert build.load_build_metadata(path)["class_names"] == names
    assert list(tfds.builder_from_directory(path).info.features["label"].names) == names
    records = read_split(path, "train")
    assert {i: names[label] for i, label, _ in records} == {
        f"img_{k}_{i}": n for k, n in enumerate(NEW_USER_CLASSES) for i in range(4)
    }


def test_class_names_in_rows():
    one_hot = ["image,B,A,C,lesion_id", "x,1,0,0,L1"]
    assert csv_layout.class_names_in_rows(one_hot, "s") == ("B", "A", "C")  # header order
    labels = ["image_id,label", "a,nev", "b,MEL", "c,NEV", "d,mel"]
    assert csv_layout.class_names_in_rows(labels, "s") == ("MEL", "NEV")
    with pytest.raises(DataError, match="labels such as 0, 2 are class indices"):
        csv_layout.class_names_in_rows(["image,label", "a,2", "b,0", "c,MEL"], "labels.csv")


def test_config_class_fields_only_check_the_dataset(tmp_path):
    from input_pipeline import sources

    source = make_named_folder(tmp_path / "src")
    build.build_dataset(
        "folder_csv", os.fspath(tmp_path / "out"), source=os.fspath(source), split_fractions="1"
    )
    data = common.base_config().data
    data.name, data.data_dir = "folder_csv", os.fspath(tmp_path / "out")
    split = sources.get_split(data, "train")  # unset fields: the dataset's classes
    names = tuple(sorted(NEW_USER_CLASSES))
    assert split.class_names == names
    config = common.base_config()
    resolved = run_config.with_classes(config, split.class_names)
    assert resolved.data.num_classes == 5 and resolved.data.class_names == names
    data.num_classes, data.class_names = 5, names  # set fields that agree pass
    assert sources.get_split(data, "train").class_names == names
    for count, wanted in ((7, ()), (0, NEW_USER_CLASSES)):  # set fields that differ do not
        data.num_classes, data.class_names = count, wanted
        with pytest.raises(UserError, match="but config.data says"):
            sources.get_split(data, "train")


def test_dataset_configs_thresholds_and_sources(monkeypatch, tmp_path):
    monkeypatch.setenv("SPMIX_ISIC2019_DIR", str(tmp_path / "isic"))
    monkeypatch.setenv("SPMIX_PAD_UFES20_DIR", str(tmp_path / "pad"))
    isic = isic2019.get_config()
    pad = pad_ufes20.get_config("full,method=ce_balanced")
    assert (isic.data.name, isic.data.source_dir) == ("isic2019", str(tmp_path / "isic"))
    assert (isic.eval.many_threshold, isic.eval.few_threshold) == (100, 20)
    assert (pad.data.name, pad.data.source_dir) == ("pad_ufes20", str(tmp_path / "pad"))
    assert (pad.eval.many_threshold, pad.eval.few_threshold) == (224, 172)
    assert pad.model.variant == "S/16" and pad.loss.name == "ce" and pad.data.num_classes == 0
    assert isic2019.get_config("split=original").data.builder_config == "original"


def test_eval_takes_the_shot_thresholds_the_run_recorded():
    config = common.base_config()
    recorded = run_config.config_dict(pad_ufes20.get_config())
    new, changed = run_config.apply_recorded(config, recorded)
    assert (new.eval.many_threshold, new.eval.few_threshold) == (224, 172)
    assert {"eval.many_threshold", "eval.few_threshold"} <= set(changed)
    kept, _ = run_config.apply_recorded(config, recorded, {"eval.few_threshold": 20})
    assert kept.eval.few_threshold == 20 and kept.eval.many_threshold == 224


def test_input_pipeline_imports_neither_spmix_jax_nor_configs():
    code = (
        "import importlib, pkgutil, sys\n"
        "import input_pipeline\n"
        "names = [m.name for m in pkgutil.walk_packages(input_pipeline.__path__, "
        "'input_pipeline.')]\n"
        "for name in names: importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('spmix_jax', 'configs'))\n"
        "print(len(names), bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert int(out[0]) >= 20 and out[1:] == ["[]"], out


def test_cli_prints_a_data_error_as_one_message(capsys, monkeypatch):
    from spmix_jax import cli

    def main(argv):
        raise DataError("labels.csv, line 3: label 'XYZ' is not a class")

    monkeypatch.setattr(cli, "verbose", lambda: False)
    with pytest.raises(SystemExit) as exited:
        cli.exit_on_user_error(main)(["prog"])
    assert exited.value.code == 1
    assert capsys.readouterr().err == "error: labels.csv, line 3: label 'XYZ' is not a class\n"


def test_missing_source_folders_name_their_environment_variables(monkeypatch, tmp_path):
    from input_pipeline import sources

    for module, name in ((isic2019, "SPMIX_ISIC2019_DIR"), (pad_ufes20, "SPMIX_PAD_UFES20_DIR")):
        monkeypatch.delenv(name, raising=False)
        data = module.get_config().data
        data.data_dir = str(tmp_path)
        with pytest.raises(
            UserError, match=f"(?s)not built yet and data.source_dir is empty.*{name}"
        ):
            sources.get_split(data, "train")


# ------------------------------------------------------------------------------------------
# Short training runs on each built fixture (subprocesses of the real entry point)
# ------------------------------------------------------------------------------------------
TINY_OVERRIDES = (
    "--config.model.variant=mu/8",
    "--config.model.image_size=16",
    "--config.data.image_size=24",
    "--config.model.proj_hidden=16",
    "--config.model.proj_dim=8",
    "--config.loss.queue_size=32",
    "--config.input.batch_size=16",
    "--config.input.eval_batch_size=16",
    "--config.optim.total_steps=4",
    "--config.train.log_every=2",
    "--config.train.eval_every=4",
    "--config.train.checkpoint_every=4",
)


def _train(tmp_path: pathlib.Path, config: str, env_name: str, source: pathlib.Path) -> dict:
    env = dict(os.environ)
    env.update(
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=str(REPO),
        SPMIX_DATA_DIR=str(tmp_path / "tfds"),
        **{env_name: str(source)},
    )
    workdir = tmp_path / "work"
    cmd = [sys.executable, "-m", "spmix_jax.main", f"--config={config}", f"--workdir={workdir}"]
    done = subprocess.run(
        [*cmd, *TINY_OVERRIDES], env=env, cwd=REPO, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (test_json,) = workdir.glob("eval_*_test_4.json")
    return json.loads(test_json.read_text())


@pytest.mark.slow
def test_isic2019_config_trains_and_evaluates_on_the_fixture(tmp_path):
    manual = make_isic2019(tmp_path / "downloads")
    result = _train(tmp_path, "configs/isic2019.py", "SPMIX_ISIC2019_DIR", manual)
    assert result["class_names"] == list(isic2019_builder.ISIC2019_CLASSES)
    assert result["shot_thresholds"] == {"many": 100, "few": 20}
    assert result["dataset"].startswith("isic2019-short256-")  # + 8 hex digits of the build


@pytest.mark.slow
def test_pad_ufes20_config_trains_with_its_shot_groups(tmp_path):
    manual = make_pad(tmp_path / "download")
    result = _train(tmp_path, "configs/pad_ufes20.py", "SPMIX_PAD_UFES20_DIR", manual)
    assert result["class_names"] == list(pad_builder.PAD_UFES20_CLASSES)
    assert result["shot_thresholds"] == {"many": 224, "few": 172}
    # Every class of the fixture has under 172 training images: all are few-shot.
    assert result["many_accuracy"] is None and result["few_accuracy"] is not None


@pytest.mark.slow
def test_named_folder_trains_without_repeating_its_classes(tmp_path):
    source = make_named_folder(tmp_path / "src", per_class=8)
    result = _train(tmp_path, "configs/ham10000.py", "SPMIX_HAM10000_DIR", source)
    assert result["class_names"] == sorted(NEW_USER_CLASSES)
    recorded = json.loads((tmp_path / "work" / "config.json").read_text())
    assert recorded["data"]["class_names"] == sorted(NEW_USER_CLASSES)
    assert recorded["data"]["num_classes"] == 5
