"""A checkpoint save that runs out of disk the way tensorstore reports it (a ValueError, not an
OSError), or hits a file size limit (`ulimit -f`), stops with the one-line full-disk message
naming the folder and the step kept."""

import asyncio
import resource
import subprocess
import threading
import types

import jax.numpy as jnp
import pytest
from grain._src.python.checkpoint import handler as grain_handler

from spmix_jax import checkpointing

from . import helpers
from .test_disk_full import _Counter

# What tensorstore raises when a write finds no space (the text of its absl::Status).
TENSORSTORE_NO_SPACE = ValueError(
    'RESOURCE_EXHAUSTED: Error writing local file "{path}/d/7f3a": Failed to write: No space '
    "left on device [OS error 28: No space left on device] [source locations='tensorstore/"
    "internal/os/file_util_posix.cc:320']"
)


def test_tensorstore_no_space_error_is_a_full_disk(tmp_path, monkeypatch):
    """Today: a 486-line ValueError traceback."""
    manager = checkpointing.latest_manager(str(tmp_path), keep=3)
    checkpointing.save(manager, 1, {"w": jnp.ones(4)}, _Counter())
    real = grain_handler.CheckpointHandler.save

    def save(self, directory, *args, **kwargs):
        raise ValueError(str(TENSORSTORE_NO_SPACE).format(path=directory))

    monkeypatch.setattr(grain_handler.CheckpointHandler, "save", save)
    with pytest.raises(checkpointing.DiskFullError) as err:
        checkpointing.save(manager, 2, {"w": jnp.full(4, 2.0)}, _Counter(), wait=False)
        checkpointing.wait(manager)
    message = str(err.value)
    assert message.startswith("the disk is full") and "\n" not in message
    assert str(tmp_path / "checkpoints") in message and "step 1 stays the latest" in message
    monkeypatch.setattr(grain_handler.CheckpointHandler, "save", real)
    assert checkpointing.latest_manager(str(tmp_path)).latest_step() == 1


FILE_LIMIT = 16 * 1024  # above the run's own small files, below a checkpoint's metadata


def _train(workdir, data_dir, file_limit: int | None = None) -> subprocess.CompletedProcess:
    """Two more steps of the training command, under a file size limit when given."""

    def limit() -> None:
        if file_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    return subprocess.run(
        [helpers.python(), "-m", "spmix_jax.main", "--config=configs/tiny.py:steps=6",
         f"--workdir={workdir}", "--config.data.name=folder_csv",
         f"--config.data.data_dir={data_dir}", "--config.data.eval_split=train",
         "--config.data.test_split=", "--config.train.max_steps_per_run=2"],
        capture_output=True, text=True, env=helpers.subprocess_env(), timeout=600,
        cwd=helpers.REPO, preexec_fn=limit,
    )  # fmt: skip


@pytest.mark.slow
def test_file_size_limit_during_a_save_gives_one_message(tmp_path):
    """Today: 3,600 lines of tracebacks ending "Event loop is closed", and no message."""
    helpers.make_source(tmp_path / "src", per_class=3)
    helpers.build(tmp_path / "src", tmp_path / "tfds")
    workdir = tmp_path / "run"
    first = _train(workdir, tmp_path / "tfds")
    assert first.returncode == 0, first.stderr[-3000:]
    sizes = [p.stat().st_size for p in (workdir / "checkpoints" / "2").rglob("*") if p.is_file()]
    assert max(sizes) > 4 * FILE_LIMIT  # the next save cannot fit under the limit
    proc = _train(workdir, tmp_path / "tfds", file_limit=FILE_LIMIT)
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    # The abandoned save's writes finishing on tensorstore's threads after its event loop
    # closed are not reported: they raced with, and broke, the run's own one-line message.
    assert "Event loop is closed" not in proc.stderr
    assert errors[0].startswith("error: the disk is full")
    assert str(workdir / "checkpoints") in errors[0] and "step 2 stays the latest" in errors[0]
    assert proc.stderr.rstrip().splitlines()[-1] == errors[0]  # the last word, not buried
    again = _train(workdir, tmp_path / "tfds")  # limit lifted: resumes from step 2
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Training steps 2..4" in again.stdout


def _report_from_a_thread(fail) -> list:
    """The errors the quieted unraisable hook passes on when `fail` raises in a background
    thread (empty when it leaves the error out)."""
    passed: list = []
    quiet = checkpointing._quiet_abandoned_io(passed.append)

    def run() -> None:
        try:
            fail()
        except Exception as error:
            quiet(types.SimpleNamespace(exc_value=error, exc_traceback=error.__traceback__))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return passed


def test_callbacks_into_a_closed_event_loop_are_not_reported():
    """Only a background thread's call into a closed asyncio loop is left out."""
    loop = asyncio.new_event_loop()
    loop.close()
    assert _report_from_a_thread(lambda: loop.call_soon_threadsafe(print)) == []

    def other() -> None:
        raise RuntimeError("Event loop is closed")  # same text, not asyncio's callback

    assert len(_report_from_a_thread(other)) == 1
    passed: list = []
    try:  # the main thread's errors always show
        loop.call_soon_threadsafe(print)
    except RuntimeError as error:
        checkpointing._quiet_abandoned_io(passed.append)(
            types.SimpleNamespace(exc_value=error, exc_traceback=error.__traceback__)
        )
    assert len(passed) == 1
