"""Raw-pixel storage (`--storage=raw`): the same training batches as JPEG storage, read without
decoding; its size stated and checked against the disk before anything is written.

Both datasets are built from the same real HAM10000 images; the JPEG-stored one is the
reference, read through the unchanged decoding path.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from collections import namedtuple

import numpy as np
import pytest
import tensorflow_datasets as tfds
from ham_subset import make_source

from configs import tiny
from input_pipeline import build, pipeline, sources
from input_pipeline.builders import base
from input_pipeline.builders.csv_layout import DataError

HAM = pathlib.Path(os.environ.get("SPMIX_HAM10000_DIR", "/work/shared/data/ham10000_subset"))
SIZE, ASPECT = 24, 4.0 / 3.0  # frame 24 x 32
pytestmark = pytest.mark.skipif(not HAM.is_dir(), reason="HAM10000 subset not available")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("raw")
    make_source(HAM, root / "src", per_class=3)
    paths = {}
    for storage in ("jpeg", "raw"):
        paths[storage] = build.build_dataset(
            "folder_csv",
            os.fspath(root / "tfds"),
            config=storage,
            source=os.fspath(root / "src"),
            split_fractions="0.7,0.3",
            storage=storage,
            frame_size=SIZE,
            frame_aspect=ASPECT,
            num_threads=1,
        )
    return paths


def _data_cfg(storage: str, path: str):
    cfg = tiny.get_config().data
    cfg.name = "folder_csv"
    cfg.data_dir = str(pathlib.Path(path).parents[2])
    cfg.builder_config = storage
    cfg.image_size, cfg.image_aspect = SIZE, ASPECT
    return cfg


def _batches(storage: str, path: str, image_size: int = SIZE, n: int = 3) -> list[dict]:
    split = sources.get_split(_data_cfg(storage, path), "train")
    it = pipeline.make_train_iterator(
        split,
        global_batch_size=8,
        image_size=image_size,
        image_aspect=ASPECT,
        seed=3,
        balanced_q=1.0,
        primary="balanced",
        process_index=0,
        process_count=1,
    )
    try:
        return [next(it) for _ in range(n)]
    finally:
        it.close()


def test_raw_and_jpeg_storage_give_identical_batches(built):
    jpeg, raw = _batches("jpeg", built["jpeg"]), _batches("raw", built["raw"])
    for a, b in zip(jpeg, raw, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert jpeg[0]["primary_image"].shape == (8, 24, 32, 3)
    # HAM10000 is 4:3 landscape, so the whole image fills the frame.
    np.testing.assert_array_equal(jpeg[0]["primary_box"], np.tile([0, 0, 24, 32], (8, 1)))


def test_raw_dataset_records_its_frame_and_stores_pixels(built):
    meta = json.loads((pathlib.Path(built["raw"]) / "metadata.json").read_text())["spmix"]
    assert meta["params"]["storage"] == "raw" and meta["params"]["frame"] == [24, 32]
    jpeg_meta = json.loads((pathlib.Path(built["jpeg"]) / "metadata.json").read_text())["spmix"]
    assert "storage" not in jpeg_meta["params"]  # JPEG datasets keep their recorded params
    record = tfds.builder_from_directory(built["raw"]).as_data_source("train")[0]
    assert record["image"].dtype == np.uint8 and record["image"].shape == (24, 32, 3)
    np.testing.assert_array_equal(record["box"], [0, 0, 24, 32])


def test_raw_eval_is_the_centre_square_of_the_stored_frame(built):
    split = sources.get_split(_data_cfg("raw", built["raw"]), "validation")
    batch = next(
        pipeline.make_eval_iterator(
            split, global_batch_size=4, image_size=SIZE, process_index=0, process_count=1
        )
    )
    stored = [split.source[i]["image"] for i in range(4)]
    np.testing.assert_array_equal(batch["image"], np.stack([f[:, 4:28] for f in stored]))


def test_raw_dataset_reframes_for_another_image_size(built):
    # Read at 12 px from the stored 24 x 32 frames: each frame resampled to 12 x 16 (PIL,
    # antialiased bilinear, whole valid region); checked against an independent resize.
    from PIL import Image

    batch = _batches("raw", built["raw"], image_size=12, n=1)[0]
    split = sources.get_split(_data_cfg("raw", built["raw"]), "train")
    first = split.source[int(batch["primary_index"][0])]["image"]
    want = np.asarray(Image.fromarray(first).resize((16, 12), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(batch["primary_image"][0], want)


def test_raw_build_states_its_size_and_refuses_a_full_disk(tmp_path, monkeypatch, capsys):
    make_source(HAM, tmp_path / "src", per_class=2)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(DataError, match="GB free; free space"):
        build.build_dataset(
            "folder_csv",
            os.fspath(tmp_path / "tfds"),
            source=os.fspath(tmp_path / "src"),
            split_fractions="1",
            storage="raw",
            frame_size=SIZE,
            frame_aspect=ASPECT,
            num_threads=1,
        )
    out = capsys.readouterr().out
    want = 14 * (24 * 32 * 3 + 512)  # pixels plus the per-record allowance
    assert base.raw_bytes(14, (24, 32)) == want
    assert f"Raw-pixel storage: 0.00 GB ({want} bytes) for 14 images in a 24x32 frame" in out
    assert not list((tmp_path / "tfds").rglob("*array_record*"))  # nothing was written
    assert not (tmp_path / "tfds" / "folder_csv" / "default" / "1.0.0").exists()
