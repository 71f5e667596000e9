"""Files in a source folder that are not plain image files: a named pipe, a link to a device, a
file far larger than any image, broken and looping symbolic links."""

import os
import resource
import subprocess

import pytest

from input_pipeline import build
from input_pipeline.builders import fingerprint

from . import helpers


def _add_rows(source, *rows: str) -> None:
    with open(source / "labels.csv", "a") as f:
        f.write("".join(f"{row}\n" for row in rows))


def _hostile_files(source) -> None:
    """A FIFO named .jpg, a link to /dev/zero and a 3 MiB file, each listed in labels.csv."""
    images = source / "images"
    os.mkfifo(images / "img_fifo.jpg")
    os.symlink("/dev/zero", images / "img_zero.png")
    with open(images / "img_huge.jpg", "wb") as f:
        f.truncate(3 << 20)
    _add_rows(source, "img_fifo,NV", "img_zero,MEL", "img_huge,BKL")


def _memory_limit() -> None:  # a read of /dev/zero fails here instead of filling the machine
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))


def test_fifo_device_and_huge_file_are_refused_by_the_build_command(tmp_path):
    source = helpers.make_source(tmp_path / "src")
    _hostile_files(source)
    done = subprocess.run(
        [
            helpers.python(),
            "-m",
            "input_pipeline.build",
            "--builder=folder_csv",
            f"--source={source}",
            f"--data_dir={tmp_path / 'out'}",
            "--metadata=none",
            "--split_fractions=1",
            "--max_image_mb=2",
        ],
        env=helpers.subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,  # a FIFO opened for reading would block forever
        preexec_fn=_memory_limit,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    message = done.stderr[done.stderr.index("error: ") :]
    images = source / "images"
    assert f"{images / 'img_fifo.jpg'} is a named pipe (FIFO), not a regular file" in message
    assert f"{images / 'img_zero.png'} is a character device, not a regular file" in message
    assert f"{images / 'img_huge.jpg'} has {3 << 20} bytes, more than the limit" in message
    assert "--max_image_mb" in message and "--skip_bad" in message
    assert not (tmp_path / "out" / "folder_csv" / "default" / "1.0.0").exists()


def test_skipped_special_files_are_counted(tmp_path):
    source = helpers.make_source(tmp_path / "src")
    _hostile_files(source)
    path = helpers.build(source, tmp_path / "out", skip_bad=True, max_image_mb=2)
    meta = build.load_build_metadata(path)
    assert meta["splits"]["train"]["num_examples"] == 7 * 3
    assert meta["report"]["skipped_counts"] == {"unreadable_image": 2, "image_too_large": 1}
    # Within the limit the same file is read (and refused only because it is no image).
    with pytest.raises(ValueError, match="img_huge.jpg for img_huge cannot be decoded"):
        helpers.build(source, tmp_path / "out2", max_image_mb=4)


def test_unlisted_broken_and_looping_links_are_left_out_like_other_unlisted_files(tmp_path):
    source = helpers.make_source(tmp_path / "src")
    images = source / "images"
    os.symlink(images / "gone.png", images / "ghost.png")  # dangling
    os.symlink("loop.jpg", images / "loop.jpg")  # points at itself
    os.symlink("missing.csv", source / "old_labels.csv")  # a dangling CSV beside the labels
    path = helpers.build(source, tmp_path / "out")
    meta = build.load_build_metadata(path)
    assert meta["splits"]["train"]["num_examples"] == 7 * 3
    assert meta["report"]["unlisted_images"] == ["ghost", "loop"]
    assert any("ghost, loop" in w for w in meta["report"]["warnings"])
    # The stale-source check reads the same listing: unchanged source, no finding.
    assert fingerprint.changes(meta["source_fingerprint"], os.fspath(source)) is None
    # Repairing a link is a change of the source.
    os.remove(images / "ghost.png")
    (images / "ghost.png").write_bytes((images / "img_0_0.png").read_bytes())
    assert fingerprint.changes(meta["source_fingerprint"], os.fspath(source)) is not None


def test_listed_broken_link_is_a_bad_item_naming_the_file(tmp_path):
    source = helpers.make_source(tmp_path / "src")
    os.symlink(source / "images" / "gone.png", source / "images" / "ghost.png")
    _add_rows(source, "ghost,NV")
    with pytest.raises(ValueError) as err:
        helpers.build(source, tmp_path / "out")
    assert f"image {source / 'images' / 'ghost.png'} for ghost cannot be read" in str(err.value)
