"""The commands as a user meets them: `--help` lists the flags, and mistakes read as one message.

The subprocess tests run the real commands (a few seconds each, for the imports); the others
call the same code in this process.
"""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from configs import common
from input_pipeline import sources
from spmix_jax import checkpointing, cli
from spmix_jax.errors import NotFoundError, UserError

REPO = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=str(REPO),
    )
    env.update(extra)
    return env


def _run(args: list[str], cwd: pathlib.Path = REPO, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=300
    )


def _assert_one_message(done: subprocess.CompletedProcess, starts: str) -> str:
    """Exit status 1, no traceback, and stderr's message starting with `error: <starts>`."""
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    message = done.stderr[done.stderr.index("error: ") :]
    assert message.startswith(f"error: {starts}"), message
    return message


@pytest.mark.parametrize(
    "command, expected",
    [
        ("spmix-train", ("--config", "--workdir", "--mode", "--[no]distributed")),
        ("spmix-build-data", ("--builder", "--data_dir", "--source", "--split_fractions")),
        ("spmix-predict", ("spmix-predict --workdir=W", "PATH...", "--explain", "--out")),
        ("spmix-export", ("--workdir", "--out")),
    ],
)
def test_installed_commands_list_their_flags_in_help(command, expected, tmp_path):
    script = BIN / command
    if not script.exists():
        pytest.skip(f"{script} is not installed (pip install -e .)")
    done = _run([str(script), "--help"], cwd=tmp_path)  # outside the checkout, as a user would
    for flag in expected:  # (absl exits with status 1 after --help, as `python -m` does)
        assert flag in done.stdout, done.stdout


def test_eval_without_checkpoint_is_one_message_and_creates_nothing(tmp_path):
    workdir = tmp_path / "never_trained"
    workdir.mkdir()
    done = _run(
        [
            sys.executable,
            "-m",
            "spmix_jax.main",
            "--config=configs/tiny.py",
            f"--workdir={workdir}",
            "--mode=eval",
        ]
    )
    message = _assert_one_message(done, "No checkpoint found in")
    assert "train first" in message
    assert list(workdir.iterdir()) == []  # no empty checkpoints/ or best/ left behind


def test_invalid_config_value_is_one_message(tmp_path):
    done = _run(
        [
            sys.executable,
            "-m",
            "spmix_jax.main",
            "--config=configs/tiny.py",
            f"--workdir={tmp_path / 'run'}",
            "--config.mix.method=spmixx",
        ]
    )
    message = _assert_one_message(done, "Invalid config: config.mix.method='spmixx'")
    assert "'spmix'" in message


def test_ham10000_without_source_names_both_ways_to_give_it(tmp_path):
    env = {"SPMIX_HAM10000_DIR": "", "SPMIX_DATA_DIR": str(tmp_path / "tfds")}
    done = _run(
        [
            sys.executable,
            "-m",
            "spmix_jax.main",
            "--config=configs/ham10000.py",
            f"--workdir={tmp_path / 'run'}",
        ],
        **env,
    )
    message = _assert_one_message(done, "No dataset for data.name='folder_csv'")
    assert "SPMIX_HAM10000_DIR" in message and "--config.data.source_dir=" in message


def test_build_data_missing_source_folder_is_one_message(tmp_path):
    done = _run(
        [
            sys.executable,
            "-m",
            "input_pipeline.build",
            "--builder=folder_csv",
            f"--source={tmp_path / 'nowhere'}",
            f"--data_dir={tmp_path / 'tfds'}",
        ]
    )
    message = _assert_one_message(done, "")
    assert "source folder does not exist" in message


# ------------------------------------------------------------------------------------------
# In this process
# ------------------------------------------------------------------------------------------
def test_user_errors_exit_with_the_message_only(capsys, monkeypatch):
    def main(argv):
        raise NotFoundError("No checkpoint found in w; train first.")

    monkeypatch.setattr(cli, "verbose", lambda: False)
    with pytest.raises(SystemExit) as exited:
        cli.exit_on_user_error(main)(["prog"])
    assert exited.value.code == 1
    assert capsys.readouterr().err == "error: No checkpoint found in w; train first.\n"
    # With --verbosity=1 the traceback is kept; other exceptions always keep theirs.
    monkeypatch.setattr(cli, "verbose", lambda: True)
    with pytest.raises(NotFoundError):
        cli.exit_on_user_error(main)(["prog"])
    with pytest.raises(KeyError):
        cli.exit_on_user_error(lambda argv: {}["bug"])(["prog"])


def test_missing_source_folder_and_checkpoint_are_user_errors(tmp_path):
    data = common.base_config().data
    data.name = "folder_csv"
    data.data_dir = str(tmp_path / "tfds")
    data.source_dir = str(tmp_path / "not_there")
    with pytest.raises(NotFoundError, match="not_there .*is not a folder"):
        sources.get_split(data, "train")
    with pytest.raises(UserError, match="'latest', 'best' or a step number"):
        checkpointing.resolve_step(str(tmp_path), "newest")
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "best").exists()


def test_suggested_class_names_fix_parses_when_pasted():
    data = common.base_config().data
    data.num_classes = 7  # set fields check the dataset's classes
    names = ("nevus", "melanoma")
    with pytest.raises(UserError) as err:
        sources._check_classes(data, names, "/data/x")
    fix = re.search(
        r"--config\.data\.num_classes=\S+ --config\.data\.class_names=\S+", str(err.value)
    )
    assert fix, str(err.value)
    argv = shlex.split(fix.group(0))  # what the shell makes of the pasted text
    argv = ["prog", f"--config={REPO / 'configs' / 'tiny.py'}", *argv]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=values, lock_config=True, sys_argv=argv)
    values(argv)
    assert values.config.data.class_names == names
    assert values.config.data.num_classes == 2
