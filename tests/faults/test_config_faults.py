"""Config values that cannot be meant are refused before any data is read or anything compiled."""

import subprocess

import pytest

from configs import demo, tiny
from spmix_jax.config_checks import check_config, unknown_override
from spmix_jax.errors import UserError

from . import helpers


@pytest.mark.parametrize(
    "field, value",
    [
        ("optim.base_lr", 0.0),
        ("optim.base_lr", -1e-3),
        ("optim.base_lr", float("nan")),
        ("optim.total_steps", -5),
        ("train.keep_checkpoints", 0),
        ("train.log_every", 0),
        ("train.checkpoint_every", 0),
        ("train.eval_every", 0),
        ("input.batch_size", 0),
        ("input.worker_count", -1),
        ("model.ema_momentum", 1.5),
        ("loss.temperature", 0.0),
        ("mix.noise", -0.1),
        ("augment.grayscale_p", 1.2),
        ("augment.blur_p", -0.5),
        ("mix.alpha", 1.5),
    ],
)
def test_impossible_value_is_refused_naming_the_field(field, value):
    config = tiny.get_config()
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(UserError, match=field.replace(".", r"\.")):
        check_config(config)


def test_no_steps_and_no_epochs_is_refused():
    config = tiny.get_config()
    config.optim.total_steps = 0
    config.optim.epochs = 0.0
    with pytest.raises(UserError, match="optim.epochs"):
        check_config(config)


@pytest.mark.parametrize("module", [demo, tiny])
def test_steps_zero_argument_is_refused(module):
    with pytest.raises(ValueError, match="steps=0"):
        module.get_config("steps=0")


def test_unknown_override_names_field_and_valid_names():
    message = unknown_override(["prog", "--config=configs/tiny.py", "--config.optim.lrr=1"])
    assert message is not None
    assert "config.optim.lrr" in message and "base_lr" in message and "weight_decay" in message
    assert (
        unknown_override(["prog", "--config=configs/tiny.py", "--config.optim.base_lr=1"]) is None
    )


@pytest.mark.parametrize(
    "override, expected",
    [
        ("--config.optim.lrr=1", "has no field 'lrr'; valid names: "),
        ("--config.optim.base_lr=abc", "could not convert string to float: 'abc'"),
        ("--config.train.log_every=0", "config.train.log_every=0 must be >= 1"),
    ],
)
def test_command_line_prints_one_message(tmp_path, override, expected):
    done = subprocess.run(
        [
            helpers.python(),
            "-m",
            "spmix_jax.main",
            "--config=configs/tiny.py",
            f"--workdir={tmp_path}",
            override,
        ],
        cwd=helpers.REPO,
        env=helpers.subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert expected in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    "spec, override, expected",
    [
        ("configs/tiny.py", "--config.seed=-1", "config.seed=-1 must be >= 0"),
        (
            "configs/demo.py:stpes=3",
            "",
            "config 'configs/demo.py:stpes=3': Unknown config argument "
            "'stpes'; known: ['method', 'steps', 'variant']",
        ),  # fmt: skip
        ("configs/demo.py:steps=0", "", "steps=0: give a positive number of training steps"),
        ("configs/nope.py", "", "config file 'configs/nope.py' not found"),
        ("tiny:steps=x", "", "config 'tiny:steps=x': invalid literal for int()"),
    ],
)
def test_config_mistakes_print_one_error_line(tmp_path, spec, override, expected):
    done = subprocess.run(
        [helpers.python(), "-m", "spmix_jax.main", f"--config={spec}", f"--workdir={tmp_path}"]
        + ([override] if override else []),
        cwd=helpers.REPO,
        env=helpers.subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert expected in lines[0]
    if "not found" in expected:
        assert "demo, ham10000, isic2018, isic2019, pad_ufes20, tiny" in lines[0]
    assert not (tmp_path / "checkpoints").exists()
