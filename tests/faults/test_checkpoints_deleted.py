"""`checkpoints/` deleted while a run trains: one warning, the folder is written again, and the
steps saved after it are whole and resumable."""

import shutil
import subprocess
import time

import pytest

from spmix_jax import checkpointing
from spmix_jax.errors import UserError

from . import helpers


def test_saving_after_the_folder_vanished_says_so_once_and_forgets_the_lost_steps(tmp_path, capsys):
    manager = checkpointing.latest_manager(str(tmp_path), keep=3)
    state = {"w": [1.0, 2.0]}
    for step in (1, 2):
        checkpointing.save(manager, step, state)
    shutil.rmtree(tmp_path / "checkpoints")
    for step in (3, 4):
        checkpointing.save(manager, step, state)
    warnings = [line for line in capsys.readouterr().out.splitlines() if "deleted" in line]
    assert warnings == [
        f"warning: {tmp_path / 'checkpoints'} was deleted while the run trained; saving step 3 "
        "there now, and a rerun resumes from the newest step saved."
    ]
    assert manager.all_steps() == [3, 4] and manager.latest_step() == 4
    assert checkpointing.complete_steps(tmp_path / "checkpoints") == [3, 4]


@pytest.mark.slow
def test_training_command_recreates_the_deleted_folder_and_resumes_from_it(tmp_path):
    workdir = tmp_path / "work"
    command = [
        helpers.python(),
        "-m",
        "spmix_jax.main",
        "--config=configs/tiny.py:steps=12",
        f"--workdir={workdir}",
        "--config.train.checkpoint_every=2",
    ]
    env = helpers.subprocess_env(devices=1, cache=tmp_path / "jax_cache")
    proc = subprocess.Popen(
        command,
        cwd=helpers.REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if checkpointing.complete_steps(workdir / "checkpoints"):
            # `rm -rf` while the run may be writing the next step into it
            shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
            break
        time.sleep(0.02)
    out, err = proc.communicate(timeout=600)
    # (orbax logs the failure of a write that was in flight, with its traceback, as it happens)
    assert not err.rstrip().splitlines()[-1].startswith(("Traceback", " ")), err[-3000:]
    if proc.returncode == 0:  # deleted between two saves: the folder is written again
        notes = [line for line in out.splitlines() if "deleted while the run trained" in line]
        assert len(notes) == 1, out[-3000:]
        assert checkpointing.complete_steps(workdir / "checkpoints")[-1] == 12
    else:  # deleted while a step was being written: the run stops, that step not kept
        assert proc.returncode == 1, err[-3000:]
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert (
            len(errors) == 1 and "was deleted while a checkpoint was being written" in (errors[0])
        ), err[-3000:]
    for step in checkpointing.complete_steps(workdir / "checkpoints"):  # nothing saved half
        for item in ("state", "data", checkpointing.RUN_ITEM):
            assert (workdir / "checkpoints" / str(step) / item).is_dir()
    # The same command again finishes the run in the recreated folder.
    again = subprocess.run(
        command, cwd=helpers.REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert checkpointing.complete_steps(workdir / "checkpoints")[-1] == 12


def test_checkpoint_folder_lost_during_a_background_write_is_one_user_error(tmp_path):
    manager = checkpointing.latest_manager(str(tmp_path), keep=3)
    checkpointing.save(manager, 1, {"w": [1.0]})
    shutil.rmtree(tmp_path / "checkpoints")
    missing = tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp" / "commit_success.txt"
    with pytest.raises(UserError) as err:  # what orbax's writer thread raises in that case
        with checkpointing._folder_deleted_is_a_user_error(manager):
            raise FileNotFoundError(2, "No such file or directory", str(missing))
    assert str(err.value).startswith(
        f"{tmp_path / 'checkpoints'} was deleted while a checkpoint was being written into it"
    )
    assert "no checkpoint is left there" in str(err.value)
    intact = checkpointing.latest_manager(str(tmp_path / "other"), keep=3)
    checkpointing.save(intact, 1, {"w": [1.0]})
    with pytest.raises(FileNotFoundError):  # other missing files are not this fault
        with checkpointing._folder_deleted_is_a_user_error(intact):
            raise FileNotFoundError(2, "No such file or directory", str(tmp_path / "x"))
