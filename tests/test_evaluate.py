"""Evaluation of a recorded run: the config it was trained with is reused, a config that does
not fit is named field by field, and a dataset without a training split can be evaluated.

Checkpoints here are freshly initialised states of the tiny config, saved the way training
saves them (with the `run` record), so no training is needed.
"""

from __future__ import annotations

import json
import os

import jax
import pytest
from ham_subset import make_source

from configs import demo, tiny
from input_pipeline import build
from spmix_jax import checkpointing, evaluate, optimizer, run_config, sharding, train
from spmix_jax import state as state_lib
from spmix_jax.errors import UserError
from spmix_jax.models import make_model

STEP = 5
TRAIN_COUNTS = [150, 900, 60, 40, 120, 10, 15]  # many: MEL, NV, BKL; few: DF, VASC


def _save_checkpoint(workdir, config, *, record: bool = True) -> None:
    """A tiny config's fresh state in `best/`, with (or without) the run record."""
    mesh = sharding.make_mesh()
    model = make_model(config)
    tx = optimizer.make_optimizer(config, 160)
    state = state_lib.create(config, model, tx, mesh, rng=jax.random.PRNGKey(0))
    run = run_config.run_info(config, config.data.class_names, TRAIN_COUNTS, ["spmix-train"])
    manager = checkpointing.best_manager(str(workdir))
    checkpointing.save(
        manager, STEP, state, metrics={"balanced_accuracy": 0.5}, run=run if record else None
    )
    if record:
        run_config.write_run_files(config, str(workdir), ["spmix-train", "--config=tiny"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    _save_checkpoint(workdir, tiny.get_config())
    return workdir


def test_run_files_and_hparams_record_every_field(trained):
    config = tiny.get_config()
    recorded = json.loads((trained / "config.json").read_text())
    assert recorded["model"]["variant"] == "mu/8" and recorded["data"]["image_size"] == 24
    assert (trained / "command.txt").read_text() == "spmix-train --config=tiny\n"
    hparams = run_config.hparams(config)
    assert hparams["model.variant"] == "mu/8"
    assert hparams["optim.base_lr"] == config.optim.base_lr
    assert hparams["augment.scale"] == "0.08,1.0"
    assert hparams["seed"] == 0
    assert len(hparams) == len(run_config.flatten(run_config.config_dict(config)))
    manager, step = checkpointing.resolve_step(str(trained), "best")
    run = checkpointing.read_run(manager, step)
    assert run["config"] == recorded and run["train_class_counts"] == TRAIN_COUNTS


def test_eval_reuses_the_recorded_config_and_overrides_win(trained, capsys):
    # A user evaluates with another config file: the model / data settings come from the run.
    config = evaluate.with_recorded_config(demo.get_config(), str(trained), overrides={})
    assert config.model.variant == "mu/8" and config.model.proj_dim == 8
    assert config.data.image_size == 24 and config.data.synthetic.num_eval == 40
    assert config.optim.total_steps == demo.get_config().optim.total_steps  # not recorded
    assert "model.proj_dim" in capsys.readouterr().out
    config.input.eval_batch_size = 16
    result = evaluate.run(config, str(trained), "eval", "test", "held-out test split")
    assert result["step"] == STEP and result["split"] == "test" and result["num_examples"] == 40
    assert result["role"] == "held-out test split"
    assert (trained / f"eval_synthetic-s0_test_{STEP}.json").exists()
    # An override on the command line wins, and a shape it changes is named, not diffed.
    changed = evaluate.with_recorded_config(
        tiny.get_config(), str(trained), overrides={"model.proj_dim": 16}
    )
    changed.model.proj_dim = 16
    with pytest.raises(UserError) as err:
        evaluate.restore_variables(changed, str(trained), sharding.make_mesh())
    assert "this checkpoint was trained with model.proj_dim=8; you asked for 16" in str(err.value)
    assert "--config.model.proj_dim=8" in str(err.value)


def test_bare_checkpoint_mismatch_names_the_arrays(tmp_path):
    _save_checkpoint(tmp_path, tiny.get_config(), record=False)
    config = tiny.get_config()
    config.model.variant = "nano/8"
    with pytest.raises(UserError, match=r"does not fit the config \(model.variant=nano/8.*stored"):
        evaluate.restore_variables(config, str(tmp_path), sharding.make_mesh())
    assert not (tmp_path / "checkpoints").exists()  # reading created no folder


def test_resuming_with_another_model_names_the_field(tmp_path):
    config = tiny.get_config()
    mesh = sharding.make_mesh()
    tx = optimizer.make_optimizer(config, 160)
    state = state_lib.create(config, make_model(config), tx, mesh, rng=jax.random.PRNGKey(0))
    run = run_config.run_info(config, config.data.class_names, TRAIN_COUNTS, ["spmix-train"])
    checkpointing.save(checkpointing.latest_manager(str(tmp_path)), 2, state, run=run)
    other = tiny.get_config()
    other.model.image_size = 24
    with pytest.raises(UserError) as err:
        train.train_and_evaluate(other, str(tmp_path))
    message = str(err.value)
    assert "this checkpoint was trained with model.image_size=16; you asked for 24" in message
    assert "another --workdir" in message
    assert checkpointing.latest_manager(str(tmp_path)).all_steps() == [2]  # nothing moved aside
    assert not (tmp_path / "config.json").exists()  # a refused run records nothing


@pytest.fixture(scope="module")
def eval_only_dataset(ham10000_dir, tmp_path_factory):
    """A labelled folder built whole as the `test` split (no training split)."""
    src = tmp_path_factory.mktemp("new_folder")
    make_source(ham10000_dir, src, per_class=2)  # its metadata.csv is not read (metadata=none)
    out = tmp_path_factory.mktemp("tfds")
    build.build_dataset(
        "folder_csv",
        os.fspath(out),
        source=os.fspath(src),
        split_fractions="0,0,1",
        metadata="none",
    )
    return out


def _on_dataset(config, data_dir):
    config.data.name = "folder_csv"
    config.data.data_dir = os.fspath(data_dir)
    config.data.source_dir = ""
    config.eval.split = "test"
    config.input.eval_batch_size = 16
    return config


def test_eval_on_a_dataset_without_training_split(trained, eval_only_dataset, tmp_path):
    overrides = {"data.name": 1, "data.data_dir": 1, "data.source_dir": 1}
    config = evaluate.with_recorded_config(tiny.get_config(), str(trained), overrides)
    result = evaluate.run(_on_dataset(config, eval_only_dataset), str(trained), "eval")
    assert result["num_examples"] == 14 and result["split"] == "test"
    # many / medium / few come from the class counts the checkpoint recorded
    assert result["shot_groups"]["many"] == ["MEL", "NV", "BKL"]
    assert result["shot_groups"]["few"] == ["DF", "VASC"]
    assert result["many_accuracy"] is not None
    # without a record of them they are n/a, and evaluation still works
    bare = tmp_path / "bare"
    _save_checkpoint(bare, tiny.get_config(), record=False)
    result = evaluate.run(_on_dataset(tiny.get_config(), eval_only_dataset), str(bare), "eval")
    assert result["shot_groups"] is None and result["many_accuracy"] is None
    assert "n/a" in result["shot_groups_note"]
