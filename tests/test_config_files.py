"""Configs by path or by shipped name, from any working directory."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from spmix_jax import config_files
from spmix_jax.errors import NotFoundError, UserError


def test_bare_names_resolve_to_the_shipped_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing named configs/ here
    shipped = config_files.shipped_dir()
    assert config_files.resolve("demo") == str(shipped / "demo.py")
    assert config_files.resolve("demo.py") == str(shipped / "demo.py")
    assert config_files.resolve("ham10000:method=ce") == f"{shipped / 'ham10000.py'}:method=ce"
    assert config_files.resolve("configs/tiny.py:steps=3") == f"{shipped / 'tiny.py'}:steps=3"
    assert config_files.shipped_names() == [
        "demo",
        "ham10000",
        "isic2018",
        "isic2019",
        "pad_ufes20",
        "tiny",
    ]
    config = config_files.load("tiny:steps=3,method=ce")
    assert config.optim.total_steps == 3 and config.loss.name == "ce"


def test_an_existing_path_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo.py").write_text(
        "from configs import tiny\n\ndef get_config(arg=None):\n"
        "    c = tiny.get_config()\n    c.seed = 7\n    return c\n"
    )
    assert config_files.resolve("demo.py") == "demo.py"
    assert config_files.load("demo.py").seed == 7


def test_missing_config_lists_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        NotFoundError, match="shipped config: demo, ham10000, isic2018, isic2019, pad_ufes20, tiny"
    ):
        config_files.resolve("demoo")
    with pytest.raises(NotFoundError, match="not found"):
        config_files.resolve("elsewhere/tiny.py")
    with pytest.raises(UserError, match="Unknown config argument 'stpes'"):
        config_files.load("tiny:stpes=3")


@pytest.mark.slow
def test_train_by_config_name_from_another_folder(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "spmix-train")
    command = [script] if os.path.exists(script) else [sys.executable, "-m", "spmix_jax.main"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [*command, "--config=demo:steps=2", "--workdir=run", "--config.train.eval_every=2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "2").is_dir()
    assert "test balanced accuracy" in done.stdout
