"""Evaluation outputs never overwrite each other, and a model is never read against another
dataset's class order. Checkpoints are fresh states saved as training saves them."""

import jax
import pytest

from configs import tiny
from input_pipeline.builders.isic2018 import ISIC_CLASSES
from spmix_jax import checkpointing, evaluate, optimizer, run_config, sharding
from spmix_jax import state as state_lib
from spmix_jax.errors import UserError
from spmix_jax.models import make_model

from . import helpers

STEP = 3
COUNTS = [150, 900, 60, 40, 120, 10, 15]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    config = tiny.get_config()
    mesh = sharding.make_mesh()
    model = make_model(config)
    state = state_lib.create(
        config, model, optimizer.make_optimizer(config, 160), mesh, rng=jax.random.PRNGKey(0)
    )
    run = run_config.run_info(config, ISIC_CLASSES, COUNTS, ["spmix-train"])
    manager = checkpointing.latest_manager(str(workdir))
    checkpointing.save(manager, STEP, state, run=run)
    manager.wait_until_finished()
    return workdir


def _config(seed: int = 0):
    config = tiny.get_config()
    config.eval.checkpoint = "latest"
    config.data.synthetic.seed = seed
    return config


@pytest.mark.slow
def test_same_checkpoint_on_two_datasets_keeps_both(workdir):
    first = evaluate.run(_config(0), str(workdir), "eval")
    second = evaluate.run(_config(1), str(workdir), "eval")
    files = sorted(p.name for p in workdir.glob("eval_*.json"))
    assert files == [
        f"eval_synthetic-s0_validation_{STEP}.json",
        f"eval_synthetic-s1_validation_{STEP}.json",
    ]
    assert len(list(workdir.glob("confusion_*.png"))) == 2
    assert first["dataset"] != second["dataset"]
    # Shot groups come from the model's own training counts (many: MEL, NV, BKL).
    assert first["shot_groups"]["many"] == ["MEL", "NV", "BKL"]
    assert first["shot_groups"]["few"] == ["DF", "VASC"]


@pytest.mark.slow
def test_dataset_with_other_class_order_is_refused_showing_both(workdir, tmp_path):
    names = list(ISIC_CLASSES)  # the classes the run in `workdir` was trained on
    permuted = names[1:] + names[:1]
    source = helpers.make_source(tmp_path / "src", per_class=2, class_names=tuple(permuted))
    helpers.build(source, tmp_path / "tfds", class_names=tuple(permuted))
    config = _config()
    config.data.name = "folder_csv"
    config.data.data_dir = str(tmp_path / "tfds")
    config.data.class_names = tuple(permuted)  # the config matches the dataset, not the model
    with pytest.raises(UserError) as err:
        evaluate.run(config, str(workdir), "predict", split_name="train")
    message = str(err.value)
    assert str(names) in message and str(permuted) in message
    assert not list(workdir.glob("predict_folder_csv*.csv"))
