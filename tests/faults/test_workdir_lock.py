"""Two runs on one workdir: the second stops at once and names the first; a dead holder's lock
is free again."""

import signal
import socket
import subprocess

import pytest

from configs import tiny
from spmix_jax import train, workdir_lock
from spmix_jax.errors import UserError

from . import helpers

_HOLD = (
    "import sys, time\n"
    "from spmix_jax import workdir_lock\n"
    "lock = workdir_lock.acquire(sys.argv[1])\n"
    "print('held', flush=True)\n"
    "time.sleep(600)\n"
)


@pytest.fixture
def holder(tmp_path):
    """A child process holding the workdir's lock (killed at the end)."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    proc = subprocess.Popen(
        [helpers.python(), "-c", _HOLD, str(workdir)],
        cwd=helpers.REPO,
        env=helpers.subprocess_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    yield workdir, proc
    proc.kill()
    proc.wait()


def test_second_training_run_is_refused_naming_the_first(holder):
    workdir, proc = holder
    config = tiny.get_config()
    with pytest.raises(UserError) as err:
        train.train_and_evaluate(config, str(workdir))
    message = str(err.value)
    assert message.startswith(f"workdir {workdir} is in use by process {proc.pid}")
    assert f"process {proc.pid} on host {socket.gethostname()} since " in message
    assert not (workdir / "checkpoints").exists()


def test_lock_of_a_killed_holder_is_free(holder):
    workdir, proc = holder
    with pytest.raises(workdir_lock.WorkdirInUseError):
        workdir_lock.acquire(str(workdir))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with workdir_lock.hold(str(workdir)) as lock:
        assert lock is not None
        with pytest.raises(workdir_lock.WorkdirInUseError, match=r"since \d{4}-"):
            workdir_lock.acquire(str(workdir))  # held again, now by this process
    workdir_lock.acquire(str(workdir)).release()  # released on leaving the block


@pytest.mark.slow
def test_second_command_exits_with_one_message(holder, tmp_path):
    workdir, proc = holder
    done = subprocess.run(
        [
            helpers.python(),
            "-m",
            "spmix_jax.main",
            "--config=configs/tiny.py",
            f"--workdir={workdir}",
        ],
        cwd=helpers.REPO,
        env=helpers.subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert f"is in use by process {proc.pid}" in done.stderr
    assert "Traceback" not in done.stderr
