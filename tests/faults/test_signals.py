"""SIGTERM (preemption) and SIGINT stop training with a final checkpoint and leave no grain
worker processes behind."""

import re
import signal
import subprocess
import time

import pytest

from . import helpers

pytestmark = pytest.mark.slow  # real training subprocesses


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("jax_cache")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_and_leaves_no_workers(tmp_path, cache, sig):
    workdir = tmp_path / "work"
    proc = subprocess.Popen(
        [
            helpers.python(),
            "-m",
            "spmix_jax.main",
            "--config=configs/tiny.py",
            f"--workdir={workdir}",
            "--config.optim.total_steps=100000",
            "--config.train.log_every=1",
            "--config.train.checkpoint_every=100000",
            "--config.input.worker_count=2",
        ],
        cwd=helpers.REPO,
        env=helpers.subprocess_env(devices=1, cache=cache),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    deadline = time.time() + 300
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if re.match(r"step\s+3/", line):
            break
    workers = helpers.child_pids(proc.pid)
    assert workers, "".join(lines)  # the grain workers
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    saved = re.search(r"saved step (\d+)", out)
    assert saved, out[-3000:]
    assert (workdir / "checkpoints" / saved.group(1)).is_dir()
    time.sleep(1.0)
    assert [p for p in workers if _alive(p)] == []
    assert "Traceback" not in err
