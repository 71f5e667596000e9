"""sources.get_split: records, labels and train class counts of built datasets, read without
decoding images; clear errors for missing datasets and unknown splits."""

from __future__ import annotations

import os
import pickle
import shutil
import sys
import types

import numpy as np
import pytest
import tensorflow_datasets as tfds
from ham_subset import make_source

import input_pipeline
from configs.common import base_config
from input_pipeline import build, data_split, sources

CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")


@pytest.fixture(scope="module")
def built(ham10000_dir, tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    labels = make_source(ham10000_dir, src)
    out = tmp_path_factory.mktemp("out")
    path = build.build_dataset(
        "folder_csv",
        os.fspath(out),
        source=os.fspath(src),
        split_fractions="0.6,0.2,0.2",
        seed=0,
    )
    return src, out, path, labels


def data_cfg(**overrides):
    cfg = base_config().data
    cfg.name = "folder_csv"
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


@pytest.fixture
def no_image_decoding(monkeypatch):
    """Makes any image decode fail, to prove that labels and counts never decode images."""

    def refuse(self, example):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(tfds.features.Image, "decode_example_np", refuse)


def test_get_split_labels_counts_and_records(built):
    _, out, path, labels = built
    cfg = data_cfg(data_dir=os.fspath(out))
    train = sources.get_split(cfg, "train")
    val = sources.get_split(cfg, "validation")
    assert train.split == "train" and train.class_names == CLASSES
    assert train.labels.dtype == np.int64 and train.class_counts.dtype == np.int64
    ids = [train.source[i]["image_id"] for i in range(len(train.source))]
    np.testing.assert_array_equal(train.labels, [labels[i] for i in ids])
    np.testing.assert_array_equal(train.class_counts, np.bincount(train.labels, minlength=7))
    np.testing.assert_array_equal(val.class_counts, train.class_counts)  # always TRAIN counts
    val_ids = [val.source[i]["image_id"] for i in range(len(val.source))]
    np.testing.assert_array_equal(val.labels, [labels[i] for i in val_ids])
    assert len(val.labels) == len(val.source) and len(train.source) + len(val.source) < 42
    record = train.source[3]
    assert record["image"].dtype == np.uint8 and record["image"].shape == (150, 200, 3)
    assert isinstance(record["label"], int) and record["label"] == train.labels[3]
    assert isinstance(record["image_id"], str) and isinstance(record["lesion_id"], str)
    assert record["lesion_id"].startswith("HAM_")
    batch = train.source.__getitems__([3, 0])
    np.testing.assert_array_equal(batch[0]["image"], record["image"])
    assert batch[1]["image_id"] == train.source[0]["image_id"]
    clone = pickle.loads(pickle.dumps(train.source))  # grain workers receive a pickled source
    assert clone[3]["image_id"] == record["image_id"]
    with pytest.raises(IndexError):
        train.source[len(train.source)]


def test_labels_without_decoding(built, no_image_decoding):
    _, out, path, labels = built
    split = sources.get_split(data_cfg(data_dir=os.fspath(out)), "test")
    assert len(split.labels) == len(split.source) > 0
    with pytest.raises(AssertionError, match="decoded"):
        split.source[0]  # the patch is live: records do decode


def test_tfds_dataset_without_metadata(built, tmp_path, no_image_decoding):
    # Any TFDS ArrayRecord dir: labels come from one pass with image decoding skipped.
    _, _, path, labels = built
    copy = tmp_path / "plain" / "1.0.0"
    shutil.copytree(path, copy)
    os.remove(copy / "metadata.json")
    cfg = data_cfg(name="tfds", data_dir=os.fspath(tmp_path / "plain"))
    split = sources.get_split(cfg, "validation")
    raw = tfds.builder_from_directory(os.fspath(copy)).as_data_source(
        "validation", decoders={"image": tfds.decode.SkipDecoding()}
    )
    expected = [labels[raw[i]["image_id"].decode()] for i in range(len(raw))]
    np.testing.assert_array_equal(split.labels, expected)
    train_labels = sources.split_labels(os.fspath(copy), "train")
    np.testing.assert_array_equal(split.class_counts, np.bincount(train_labels, minlength=7))
    assert sources.split_labels(os.fspath(copy), "validation") is split.labels  # cached


def test_builds_missing_dataset_from_source_dir(built, tmp_path):
    src, _, _, labels = built
    cfg = data_cfg(data_dir=os.fspath(tmp_path), source_dir=os.fspath(src), builder_config="auto")
    split = sources.get_split(cfg, "train")
    assert (tmp_path / "folder_csv" / "auto" / "1.0.0" / "dataset_info.json").exists()
    assert split.class_counts.sum() == len(split.labels) and set(split.labels) == set(range(7))


def test_missing_dataset_and_unknown_split(built, tmp_path):
    _, out, _, _ = built
    with pytest.raises(FileNotFoundError) as err:
        sources.get_split(data_cfg(data_dir=os.fspath(out), builder_config="nope"), "train")
    message = str(err.value)
    assert "folder_csv/default/1.0.0 (splits: train, validation, test)" in message
    assert "python -m input_pipeline.build --builder=folder_csv" in message
    assert f"--data_dir={out} --config=nope" in message
    with pytest.raises(FileNotFoundError, match="--builder=isic2018 --manual_dir="):
        sources.get_split(data_cfg(name="isic2018", data_dir=os.fspath(tmp_path)), "train")
    with pytest.raises(ValueError, match=r"split 'holdout' is not in .* \['train', 'validation'"):
        sources.get_split(data_cfg(data_dir=os.fspath(out)), "holdout")
    with pytest.raises(ValueError, match="data_dir is empty"):
        sources.get_split(data_cfg(data_dir=""), "train")
    with pytest.raises(ValueError, match="unknown config.data.name"):
        sources.get_split(data_cfg(name="imagenet", data_dir=os.fspath(out)), "train")
    with pytest.raises(ValueError, match="num_classes=3"):
        sources.get_split(
            data_cfg(data_dir=os.fspath(out), num_classes=3, class_names=("A", "B", "C")), "train"
        )


def test_synthetic_is_delegated(monkeypatch):
    calls = []
    fake = types.ModuleType("input_pipeline.synthetic")
    fake.get_split = lambda cfg, split: calls.append(split) or "synthetic-split"
    monkeypatch.setitem(sys.modules, "input_pipeline.synthetic", fake)
    monkeypatch.setattr(input_pipeline, "synthetic", fake, raising=False)
    assert sources.get_split(data_cfg(name="synthetic"), "validation") == "synthetic-split"
    assert calls == ["validation"]


def test_as_rgb_uint8():
    gray = np.arange(6, dtype=np.uint8).reshape(2, 3)
    np.testing.assert_array_equal(data_split.as_rgb_uint8(gray), np.stack([gray] * 3, -1))
    rgba = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(data_split.as_rgb_uint8(rgba), rgba[..., :3])
    with pytest.raises(ValueError, match="uint8"):
        data_split.as_rgb_uint8(np.zeros((2, 2, 3), np.float32))
