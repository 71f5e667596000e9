"""Stored images smaller than the model's input are refused unless upsampling is asked for."""

import subprocess

import pytest

from configs import ham10000
from spmix_jax.config_checks import check_config
from spmix_jax.errors import UserError

from . import helpers


def test_data_smaller_than_the_model_is_refused_naming_both_fields():
    config = ham10000.get_config()  # 72-px stored data
    config.model.image_size = 224
    with pytest.raises(UserError) as err:
        check_config(config, num_devices=1)
    message = str(err.value)
    assert "data.image_size=72" in message and "model.image_size=224" in message
    assert "data.allow_upsample=True" in message


def test_upsampling_asked_for_is_accepted():
    config = ham10000.get_config()
    config.model.image_size = 224
    config.data.allow_upsample = True
    check_config(config, num_devices=1)


def test_training_command_prints_one_line(tmp_path):
    """Today this trains on upsampled 72-px images without a word."""
    proc = subprocess.run(
        [helpers.python(), "-m", "spmix_jax.main", "--config=configs/ham10000.py",
         "--config.model.image_size=224", f"--workdir={tmp_path / 'run'}",
         f"--config.data.data_dir={tmp_path / 'tfds'}"],
        capture_output=True, text=True, env=helpers.subprocess_env(), timeout=300,
        cwd=helpers.REPO,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert "data.image_size=72" in errors[0] and "model.image_size=224" in errors[0]
