"""A full disk during a checkpoint save keeps the previous checkpoint and stops with one message;
the next run resumes from it."""

import errno

import grain
import jax.numpy as jnp
import numpy as np
import pytest
from grain._src.python.checkpoint import handler as grain_handler

from configs import tiny
from spmix_jax import checkpointing, train
from spmix_jax.errors import UserError


class _Counter(grain.DatasetIterator):
    """The smallest checkpointable iterator."""

    def __init__(self):
        super().__init__()
        self.step = 0

    def __next__(self):
        self.step += 1
        return self.step

    def get_state(self):
        return {"step": self.step}

    def set_state(self, state):
        self.step = state["step"]


def _fill_disk_after(monkeypatch, good_saves: int) -> list[int]:
    """The iterator writer raises ENOSPC from its `good_saves`-th call on; returns the calls."""
    real = grain_handler.CheckpointHandler.save
    calls: list[int] = []

    def save(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > good_saves:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(grain_handler.CheckpointHandler, "save", save)
    return calls


def test_full_disk_keeps_previous_checkpoint(tmp_path, monkeypatch):
    manager = checkpointing.latest_manager(str(tmp_path), keep=3)
    _fill_disk_after(monkeypatch, good_saves=1)
    checkpointing.save(manager, 1, {"w": jnp.ones(4)}, _Counter())
    with pytest.raises(UserError) as err:
        checkpointing.save(manager, 2, {"w": jnp.full(4, 2.0)}, _Counter(), wait=False)
        checkpointing.wait(manager)  # the write fails in the background
    message = str(err.value)
    assert message.startswith("the disk is full")
    assert str(tmp_path / "checkpoints") in message and "step 1 stays the latest" in message
    monkeypatch.undo()  # space freed
    again = checkpointing.latest_manager(str(tmp_path), keep=3)
    assert again.latest_step() == 1
    abstract = {"w": jnp.zeros(4)}
    step, state = checkpointing.restore_newest_intact(again, abstract, _Counter())
    assert step == 1
    np.testing.assert_array_equal(np.asarray(state["w"]), np.ones(4))
    checkpointing.save(again, 2, {"w": jnp.full(4, 2.0)}, _Counter())  # the leftover is replaced
    assert again.all_steps() == [1, 2]


@pytest.mark.slow
def test_training_stops_on_full_disk_and_resumes(tmp_path, monkeypatch):
    config = tiny.get_config()  # 6 steps, a checkpoint every 2
    calls = _fill_disk_after(monkeypatch, good_saves=1)
    with pytest.raises(checkpointing.DiskFullError, match="the disk is full") as err:
        train.train_and_evaluate(config, str(tmp_path))
    assert isinstance(err.value, UserError)
    assert "step 2 stays the latest" in str(err.value)
    assert len(calls) == 2
    assert checkpointing.latest_manager(str(tmp_path)).latest_step() == 2
    monkeypatch.undo()
    assert train.train_and_evaluate(config, str(tmp_path))
    assert checkpointing.latest_manager(str(tmp_path)).latest_step() == 6
