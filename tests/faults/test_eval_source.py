"""Evaluating a run on another folder: a mistyped `data_dir` is refused (never built from the
training run's folder), and a dataset is compared with its own source for staleness."""

import os
import subprocess

import jax
import pytest

from configs import tiny
from input_pipeline import sources
from spmix_jax import checkpointing, evaluate, optimizer, run_config, sharding
from spmix_jax import state as state_lib
from spmix_jax.errors import NotFoundError
from spmix_jax.models import make_model

from . import helpers


def _folder_config(data_dir, source_dir):
    config = tiny.get_config()
    config.data.name = "folder_csv"
    config.data.data_dir = os.fspath(data_dir)
    config.data.source_dir = os.fspath(source_dir)
    return config


def _recorded_run(workdir, config):
    """A checkpoint of `config`'s model saved the way training saves it (with its record)."""
    mesh = sharding.make_mesh()
    model = make_model(config)
    state = state_lib.create(
        config, model, optimizer.make_optimizer(config, 1), mesh, rng=jax.random.PRNGKey(0)
    )
    run = run_config.run_info(config, config.data.class_names, [3] * 7, ["spmix-train"])
    checkpointing.save(checkpointing.latest_manager(os.fspath(workdir)), 1, state, run=run)


def test_mistyped_data_dir_is_refused_not_built_from_the_training_folder(tmp_path):
    train_src = helpers.make_source(tmp_path / "train_src")
    _recorded_run(tmp_path / "run", _folder_config(tmp_path / "tfds", train_src))
    typo = tmp_path / "tfsd"
    config = tiny.get_config()
    config.data.data_dir = os.fspath(typo)
    config.eval.checkpoint = "latest"
    config = evaluate.with_recorded_config(
        config, os.fspath(tmp_path / "run"), {"data.data_dir": os.fspath(typo)}
    )
    assert config.data.name == "folder_csv" and config.data.source_dir == ""
    with pytest.raises(NotFoundError, match=f"at {typo}/folder_csv/default: not built yet"):
        evaluate.run(config, os.fspath(tmp_path / "run"), "eval", "test")
    assert not typo.exists() or not any(typo.rglob("*.array_record*"))
    # a source folder given on the command line is still built
    given = {"data.data_dir": 1, "data.source_dir": 1}
    config = evaluate.with_recorded_config(
        _folder_config(typo, train_src), os.fspath(tmp_path / "run"), given
    )
    assert config.data.source_dir == os.fspath(train_src)


def test_eval_only_folder_is_not_compared_with_the_training_folder(tmp_path, capsys):
    train_src = helpers.make_source(tmp_path / "train_src", seed=1)
    new_src = helpers.make_source(tmp_path / "new_src", per_class=2, seed=2)
    path = helpers.build(new_src, tmp_path / "tfds", split_fractions="0,0,1")
    # eval with the training run's source_dir still set (as a recorded config had it)
    config = _folder_config(tmp_path / "tfds", train_src)
    split = sources.get_split(config.data, "test", require_train=False)
    assert len(split.labels) == 14
    assert "older than its source" not in capsys.readouterr().out
    # its own source changing is still reported, naming that source
    text = (new_src / "labels.csv").read_text()
    (new_src / "labels.csv").write_text(text.replace("img_0_0,MEL", "img_0_0,NV"))
    sources.get_split(config.data, "test", require_train=False)
    out = capsys.readouterr().out
    assert f"the dataset at {path} is older than its source {new_src}" in out


@pytest.mark.slow
def test_eval_command_with_a_mistyped_data_dir_builds_nothing(tmp_path):
    train_src = helpers.make_source(tmp_path / "train_src")
    _recorded_run(tmp_path / "run", _folder_config(tmp_path / "tfds", train_src))
    typo = tmp_path / "tfsd"
    done = subprocess.run(
        [
            helpers.python(),
            "-m",
            "spmix_jax.main",
            "--config=tiny",
            f"--workdir={tmp_path / 'run'}",
            "--mode=eval",
            "--config.eval.checkpoint=latest",
            f"--config.data.data_dir={typo}",
        ],
        cwd=tmp_path,
        env=helpers.subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"at {typo}/folder_csv/default: not built yet" in errors[0]
    assert not any(tmp_path.glob("run/eval_*.json"))
    assert not typo.exists() or not any(typo.rglob("*.array_record*"))
