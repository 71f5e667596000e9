"""Checkpoint managers: relative workdirs, best-vs-latest resolution, resharding on restore."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spmix_jax import checkpointing, sharding


def _tree(value: float):
    mesh = sharding.make_mesh()
    rep = sharding.replicated(mesh)
    return {
        "w": jax.device_put(jnp.full((4, 3), value, jnp.float32), rep),
        "step": jax.device_put(jnp.asarray(int(value), jnp.int32), rep),
    }


def _abstract(tree, devices):
    target = sharding.replicated(sharding.make_mesh(devices))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=target), tree)


def test_relative_workdir_save_restore_and_best(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    latest = checkpointing.latest_manager("run", keep=2)
    best = checkpointing.best_manager("run")
    for step, acc in ((1, 0.2), (2, 0.6), (3, 0.4)):
        tree = _tree(float(step))
        checkpointing.save(latest, step, tree)
        checkpointing.save(best, step, tree, metrics={"balanced_accuracy": acc})
    assert (tmp_path / "run" / "checkpoints" / "3").is_dir()
    assert checkpointing.latest_manager("run").all_steps() == [2, 3]  # keeps the last 2
    manager, step = checkpointing.resolve_step("run", "best")
    assert step == 2  # the best balanced accuracy, not the latest
    restored = checkpointing.restore(manager, step, _abstract(_tree(0.0), jax.devices()[:1]))
    np.testing.assert_array_equal(np.asarray(restored["w"]), np.full((4, 3), 2.0))
    assert len(restored["w"].sharding.device_set) == 1  # resharded onto one device
    assert checkpointing.resolve_step("run", "latest")[1] == 3
    assert checkpointing.resolve_step("run", "2")[1] == 2
    with pytest.raises(FileNotFoundError, match="available"):
        checkpointing.resolve_step("run", "7")
    with pytest.raises(ValueError, match="eval.checkpoint"):
        checkpointing.resolve_step("run", "newest")


def test_missing_checkpoint_says_train_first(tmp_path):
    with pytest.raises(FileNotFoundError, match="train first"):
        checkpointing.resolve_step(str(tmp_path / "empty"), "latest")
