"""A checkpoint that cannot be restored (truncated, incomplete) falls back to the newest
intact one."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spmix_jax import checkpointing
from spmix_jax.errors import UserError


def _state(step: int):
    return {"w": jnp.full((64, 64), float(step)), "b": jnp.arange(5.0) + step}


def _abstract():
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(0))


@pytest.fixture
def saved(tmp_path):
    manager = checkpointing.latest_manager(str(tmp_path), keep=5)
    for step in (2, 4, 6):
        checkpointing.save(manager, step, _state(step))
    manager.wait_until_finished()
    return tmp_path, manager


def _truncate_all(step_dir: pathlib.Path) -> None:
    """Truncates every data file of a step (what a full disk or a torn copy leaves)."""
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.stat().st_size > 0]
    assert files
    for path in files:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def test_truncated_latest_falls_back_to_previous(saved, capsys):
    workdir, manager = saved
    _truncate_all(workdir / "checkpoints" / "6" / "state")
    step, state = checkpointing.restore_newest_intact(manager, _abstract())
    assert step == 4
    np.testing.assert_array_equal(np.asarray(state["w"]), np.full((64, 64), 4.0))
    assert "checkpoint 6" in capsys.readouterr().out
    # Set aside, so the run can save step 6 again; the newest step is now 4.
    assert (workdir / "checkpoints_unreadable" / "6").is_dir()
    assert manager.latest_step() == 4
    checkpointing.save(manager, 6, _state(6))
    assert manager.latest_step() == 6


def test_missing_item_falls_back(saved):
    workdir, manager = saved
    for path in sorted((workdir / "checkpoints" / "6" / "state").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (workdir / "checkpoints" / "6" / "state").rmdir()
    step, _ = checkpointing.restore_newest_intact(manager, _abstract())
    assert step == 4


def test_none_intact_is_a_user_error_listing_them(saved):
    workdir, manager = saved
    for step in (2, 4, 6):
        _truncate_all(workdir / "checkpoints" / str(step) / "state")
    with pytest.raises(UserError) as err:
        checkpointing.restore_newest_intact(manager, _abstract())
    message = str(err.value)
    assert "step 6:" in message and "step 4:" in message and "step 2:" in message
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
        2,
        4,
        6,
    ]
