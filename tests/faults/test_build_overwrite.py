"""`--overwrite` never loses the old dataset: the new one is built aside, checked, then
swapped in."""

import json
import os
import pathlib
import signal
import subprocess
import time

import pytest

from input_pipeline import build as build_lib
from input_pipeline.builders import image_files
from input_pipeline.builders.csv_layout import DataError

from . import helpers


def _meta(path: str) -> dict:
    return json.loads((pathlib.Path(path) / "metadata.json").read_text())


def _leftovers(data_dir: pathlib.Path) -> list[str]:
    return sorted(
        p.name for p in data_dir.rglob(".*") if "rebuild" in p.name or "replaced" in p.name
    )


@pytest.fixture
def built(tmp_path):
    source = helpers.make_source(tmp_path / "src", per_class=2)
    data_dir = tmp_path / "tfds"
    path = helpers.build(source, data_dir)
    return source, data_dir, path, _meta(path)


def test_failed_rebuild_keeps_old_dataset(built, tmp_path):
    _, data_dir, path, before = built
    bad = helpers.make_source(tmp_path / "bad", per_class=3, seed=1)
    victim = bad / "images" / "img_0_0.png"
    victim.write_bytes(victim.read_bytes()[:40])  # truncated: the check phase refuses it
    with pytest.raises(DataError, match="img_0_0"):
        helpers.build(bad, data_dir, overwrite=True)
    assert _meta(path) == before
    build_lib.validate_dataset(path)
    assert _leftovers(data_dir) == []


def test_rebuild_failing_while_writing_keeps_old_dataset(built, tmp_path, monkeypatch):
    _, data_dir, path, before = built
    other = helpers.make_source(tmp_path / "other", per_class=3, seed=2)
    calls = []
    real = image_files.prepare_image

    def failing(data, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise OSError("disk went away")
        return real(data, *args, **kwargs)

    monkeypatch.setattr(image_files, "prepare_image", failing)
    with pytest.raises(DataError, match="could not be prepared"):
        helpers.build(other, data_dir, overwrite=True)
    assert _meta(path) == before
    build_lib.validate_dataset(path)


def test_valid_rebuild_replaces_old_dataset(built, tmp_path):
    _, data_dir, path, _ = built
    other = helpers.make_source(tmp_path / "other", per_class=4, seed=3)
    assert helpers.build(other, data_dir, overwrite=True) == path
    assert _meta(path)["spmix"]["splits"]["train"]["num_examples"] == 7 * 4
    assert _leftovers(data_dir) == []


def test_swap_interrupted_between_renames_is_recovered(built):
    source, data_dir, path, before = built
    target = pathlib.Path(path)
    target.rename(target.parent / f".{target.name}.replaced_by_12345")  # the kill's leftover
    assert helpers.build(source, data_dir) == path
    assert _meta(path) == before
    assert _leftovers(data_dir) == []


def test_inconsistent_build_is_refused(built, monkeypatch):
    _, _, path, _ = built
    meta = _meta(path)
    meta["spmix"]["splits"]["train"]["labels"].pop()
    (pathlib.Path(path) / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="inconsistent"):
        build_lib.validate_dataset(path)


_SLOW_BUILD = """
import sys, time
from input_pipeline import build
from input_pipeline.builders import image_files
real = image_files.prepare_image
def slow(data, *a, **k):
    time.sleep(0.3)
    return real(data, *a, **k)
image_files.prepare_image = slow
build.build_dataset("folder_csv", sys.argv[1], source=sys.argv[2], metadata="none",
                    split_fractions="1", overwrite=True, num_threads=1)
"""


@pytest.mark.slow
def test_killed_rebuild_keeps_old_dataset(built, tmp_path):
    source, data_dir, path, before = built
    other = helpers.make_source(tmp_path / "other", per_class=6, seed=4)
    proc = subprocess.Popen(
        [helpers.python(), "-c", _SLOW_BUILD, str(data_dir), str(other)],
        cwd=helpers.REPO,
        env=helpers.subprocess_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    # Kill once the new records are being written (TFDS's temporary folder exists).
    while time.time() < deadline and proc.poll() is None:
        if any("incomplete" in p.name for p in data_dir.rglob("*")):
            break
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-3000:]
    assert _meta(path) == before
    build_lib.validate_dataset(path)
    # The next build reuses the old dataset and clears the dead rebuild's folder.
    assert helpers.build(source, data_dir) == path
    assert not list(data_dir.glob(".spmix_rebuild_*"))
    assert os.path.isdir(path)
