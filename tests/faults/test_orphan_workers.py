"""Data worker processes end on their own when the training process is killed (SIGKILL runs no
cleanup), and multiprocessing's resource tracker with them."""

import os
import signal
import subprocess
import time

import pytest

from . import helpers

WAIT_S = 30  # workers notice within half a second; the rest is slack for a loaded machine


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process table from /proc")
def test_workers_exit_when_the_trainer_is_killed(tmp_path):
    """Today both workers and the resource tracker are still alive 180 s later."""
    helpers.make_source(tmp_path / "src", per_class=3)
    helpers.build(tmp_path / "src", tmp_path / "tfds")
    proc = subprocess.Popen(
        [helpers.python(), "-m", "spmix_jax.main", "--config=configs/tiny.py:steps=100000",
         f"--workdir={tmp_path / 'run'}", "--config.data.name=folder_csv",
         f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.data.eval_split=train",
         "--config.input.worker_count=2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=helpers.subprocess_env(),
        cwd=helpers.REPO, text=True,
    )  # fmt: skip
    try:
        for line in proc.stdout:  # training steps come from batches the workers made
            if line.startswith("step "):
                break
        else:
            pytest.fail(f"the run ended before training (exit {proc.wait()})")
        children = helpers.child_pids(proc.pid)
        workers = [p for p in children if "spawn_main" in _cmdline(p)]
        assert len(workers) == 2, [_cmdline(p) for p in children]
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and any(_alive(p) for p in children):
        time.sleep(0.5)
    left = [f"{p}: {_cmdline(p)}" for p in children if _alive(p)]
    for pid in children:  # leave nothing behind whatever the outcome
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert not left, left
