"""Unusual paths and files: CSV encodings, Unicode normalisation of file names, spaces in paths,
a read-only workdir, source reads that fail for a moment or for good."""

import errno
import os
import subprocess
import unicodedata

import numpy as np
import pytest
from PIL import Image

from configs import tiny
from input_pipeline import build, pipeline, sources
from input_pipeline.builders import csv_layout, image_files
from spmix_jax import train
from spmix_jax.errors import UserError

from . import helpers


def test_latin1_csv_is_refused_naming_file_and_line(tmp_path):
    source = helpers.make_source(tmp_path / "src")
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(source / "images" / "café.png")
    lines = (source / "labels.csv").read_text().splitlines()
    lines.insert(3, "café,NV")
    (source / "labels.csv").write_bytes("\n".join(lines).encode("latin-1"))
    with pytest.raises(csv_layout.DataError) as err:
        helpers.build(source, tmp_path / "out")
    message = str(err.value)
    assert message.startswith(f"{source / 'labels.csv'}, line 4: not UTF-8 text")
    assert "iconv" in message


@pytest.mark.parametrize("on_disk,in_csv", [("NFD", "NFC"), ("NFC", "NFD")])
def test_accented_name_in_either_normalisation_form_is_found(tmp_path, on_disk, in_csv):
    source = helpers.make_source(tmp_path / "src")
    name = "lésion_é"
    disk_name = unicodedata.normalize(on_disk, name)
    Image.fromarray(np.full((20, 24, 3), 7, np.uint8)).save(source / "images" / f"{disk_name}.png")
    assert unicodedata.normalize(on_disk, name) != unicodedata.normalize(in_csv, name)
    with open(source / "labels.csv", "a", encoding="utf-8") as f:
        f.write(f"{unicodedata.normalize(in_csv, name)},BCC\n")
    path = helpers.build(source, tmp_path / "out")
    meta = build.load_build_metadata(path)
    assert meta["splits"]["train"]["num_examples"] == 7 * 3 + 1
    assert meta["report"]["skipped"] == [] and meta["report"]["unlisted_images"] == []


def test_spaces_in_every_path(tmp_path):
    source = helpers.make_source(tmp_path / "raw images" / "my source")
    cfg = tiny.get_config().data
    cfg.name = "folder_csv"
    cfg.data_dir = os.fspath(tmp_path / "built data")
    cfg.source_dir = os.fspath(source)
    split = sources.get_split(cfg, "train")  # built from the source on first use
    assert " " in split.source._path
    it = pipeline.make_train_iterator(
        split,
        global_batch_size=4,
        image_size=16,
        seed=0,
        balanced_q=1.0,
        primary="balanced",
        process_index=0,
        process_count=1,
    )
    assert next(it)["primary_image"].shape == (4, 16, 16, 3)
    it.close()


@pytest.mark.slow
def test_training_command_with_spaces_in_every_path(tmp_path):
    source = helpers.make_source(tmp_path / "raw images" / "my source", per_class=4)
    workdir = tmp_path / "my runs" / "run 1"
    done = subprocess.run(
        [
            helpers.python(),
            "-m",
            "spmix_jax.main",
            "--config=configs/tiny.py:steps=2",
            f"--workdir={workdir}",
            "--config.data.name=folder_csv",
            f"--config.data.data_dir={tmp_path / 'built data'}",
            f"--config.data.source_dir={source}",
            "--config.train.eval_every=2",
        ],
        cwd=helpers.REPO,
        env=helpers.subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (workdir / "checkpoints" / "2").is_dir()


def _no_data_read(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("data was read before the workdir was checked")

    monkeypatch.setattr(sources, "get_split", refuse)


def test_read_only_workdir_is_refused_before_training(tmp_path, monkeypatch):
    workdir = tmp_path / "work"
    workdir.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os,
        "access",
        lambda path, mode, **kw: (
            False if os.fspath(path) == str(workdir) else real_access(path, mode, **kw)
        ),
    )
    _no_data_read(monkeypatch)
    with pytest.raises(UserError, match=f"the workdir {workdir} is not writable"):
        train.train_and_evaluate(tiny.get_config(), str(workdir))
    assert list(workdir.iterdir()) == []


def test_workdir_that_is_a_file_is_refused(tmp_path, monkeypatch):
    workdir = tmp_path / "work"
    workdir.write_text("not a folder")
    _no_data_read(monkeypatch)
    with pytest.raises(UserError, match=f"cannot create the workdir {workdir}"):
        train.train_and_evaluate(tiny.get_config(), str(workdir))


def _failing_reads(monkeypatch, failures: int | None) -> list[str]:
    """Image reads raise EIO `failures` times (None: always); returns the names read."""
    real = image_files._read_regular_file
    calls: list[str] = []

    def read_file(ref, limit):
        name = os.path.basename(ref.path)
        if name == "img_3_1.png":
            calls.append(name)
            if failures is None or len(calls) <= failures:
                raise OSError(errno.EIO, "Input/output error", ref.path)
        return real(ref, limit)

    monkeypatch.setattr(image_files, "_read_regular_file", read_file)
    monkeypatch.setattr(image_files, "RETRY_DELAYS_S", (0.0, 0.0, 0.0))
    return calls


def test_transient_read_error_is_retried(tmp_path, monkeypatch, caplog):
    source = helpers.make_source(tmp_path / "src")
    calls = _failing_reads(monkeypatch, failures=1)
    path = helpers.build(source, tmp_path / "out")
    assert build.load_build_metadata(path)["splits"]["train"]["num_examples"] == 21
    assert len(calls) >= 2  # failed once, then read
    assert any(
        "img_3_1.png failed" in r.getMessage() and "retry 1 of 3" in r.getMessage()
        for r in caplog.records
    )


def test_read_error_that_persists_names_the_file(tmp_path, monkeypatch):
    source = helpers.make_source(tmp_path / "src")
    calls = _failing_reads(monkeypatch, failures=None)
    with pytest.raises(csv_layout.DataError) as err:
        helpers.build(source, tmp_path / "out")
    message = str(err.value)
    assert "img_3_1.png for img_3_1 cannot be read" in message and "Input/output error" in message
    assert len(calls) == 4  # the first read and three retries, then it gives up
