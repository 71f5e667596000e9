"""A dataset whose source folder changed after the build is noticed when training reads it; a
`--skip_bad` build records what it left out."""

import logging
import os

import numpy as np
from PIL import Image

from configs.common import base_config
from input_pipeline import build, sources

from . import helpers


def _data_cfg(data_dir, source_dir):
    cfg = base_config().data
    cfg.name = "folder_csv"
    cfg.data_dir = os.fspath(data_dir)
    cfg.source_dir = os.fspath(source_dir)
    return cfg


def _warning(capsys, caplog) -> str:
    out = capsys.readouterr().out
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    stale = [m for m in logged if "is older than its source" in m]
    caplog.clear()
    if "warning: the dataset at" in out:
        assert stale, logged  # also in the log
        return out
    assert not stale
    return ""


def test_changed_source_warns_with_the_rebuild_command(tmp_path, capsys, caplog):
    caplog.set_level(logging.WARNING)
    source = helpers.make_source(tmp_path / "src")
    out = tmp_path / "out"
    path = helpers.build(source, out)
    stored = build.load_build_metadata(path)["source_fingerprint"]
    assert stored["files"] == 7 * 3 + 1 and stored["roots"] == [".", "labels.csv"]
    assert stored["builder_version"] == "1.0.0" and "labels.csv" in stored["csv_sha256"]
    cfg = _data_cfg(out, source)

    sources.get_split(cfg, "train")
    assert _warning(capsys, caplog) == ""  # unchanged: quiet

    text = (source / "labels.csv").read_text()
    (source / "labels.csv").write_text(text.replace("img_0_0,MEL", "img_0_0,NV"))
    sources.get_split(cfg, "train")
    message = _warning(capsys, caplog)
    assert f"the dataset at {path} is older than its source {source}" in message
    assert "changed CSV(s): labels.csv" in message
    assert (
        f"python -m input_pipeline.build --builder=folder_csv --source={source} "
        f"--data_dir={out} --config=default --overwrite" in message
    )
    sources.get_split(cfg, "train")
    assert _warning(capsys, caplog) == ""  # once per process and dataset

    helpers.build(source, out, overwrite=True)
    sources.get_split(cfg, "train")
    assert _warning(capsys, caplog) == ""  # rebuilt: current again

    pixels = np.zeros((20, 24, 3), np.uint8)
    Image.fromarray(pixels).save(source / "images" / "img_9_9.png")  # one more image
    sources.get_split(cfg, "train")
    added = _warning(capsys, caplog)
    assert "22 files (" in added and "bytes) when built, 23 files (" in added


def test_moved_but_unchanged_source_is_current(tmp_path, capsys, caplog):
    source = helpers.make_source(tmp_path / "src")
    path = helpers.build(source, tmp_path / "out")
    moved = tmp_path / "moved src"
    os.rename(source, moved)
    sources.get_split(_data_cfg(tmp_path / "out", moved), "train")
    assert _warning(capsys, caplog) == ""
    assert build.load_build_metadata(path)["source_fingerprint"]["source_dir"] == str(source)


def test_skip_bad_build_records_the_skipped_files(tmp_path):
    source = helpers.make_source(tmp_path / "src")
    (source / "images" / "img_1_0.png").write_bytes(b"not a png")
    os.remove(source / "images" / "img_2_1.png")
    path = helpers.build(source, tmp_path / "out", skip_bad=True)
    meta = build.load_build_metadata(path)
    report = meta["report"]
    assert report["skipped_counts"] == {"corrupt_image": 1, "missing_image": 1}
    by_id = {p["image_id"]: p for p in report["skipped"]}
    assert by_id["img_1_0"]["file"] == str(source / "labels.csv")
    assert "img_1_0.png" in by_id["img_1_0"]["message"] and by_id["img_1_0"]["line"] > 1
    assert by_id["img_2_1"]["kind"] == "missing_image"
    assert meta["splits"]["train"]["num_examples"] == 7 * 3 - 2
    assert meta["params"]["skip_bad"] is True
