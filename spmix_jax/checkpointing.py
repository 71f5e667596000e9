"""Orbax checkpoints: the train state and the grain iterator saved together.

Two managers under the workdir: `checkpoints/` keeps the last N steps (state + iterator, for
resuming) and `best/` keeps the single best state by validation balanced accuracy (for eval).
Restores go into an abstract state whose leaves carry the target sharding, so a checkpoint written
on 8 devices restores onto 1 (or any other count).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from input_pipeline import pipeline

BEST_METRIC = "balanced_accuracy"


def _root(workdir: str) -> epath.Path:
    """Orbax wants absolute paths: make local ones absolute, keep URLs (gs://...) as they are."""
    workdir = str(workdir)
    return epath.Path(workdir if "://" in workdir else os.path.abspath(workdir))


def _options(max_to_keep: int, best: bool) -> ocp.CheckpointManagerOptions:
    kwargs: dict[str, Any] = dict(max_to_keep=max_to_keep, create=True)
    if best:
        kwargs.update(best_fn=lambda m: m[BEST_METRIC], best_mode="max")
    return ocp.CheckpointManagerOptions(**kwargs)


def latest_manager(workdir: str, keep: int = 3) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        _root(workdir) / "checkpoints",
        item_names=("state", "data"),
        options=_options(keep, best=False),
    )


def best_manager(workdir: str) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        _root(workdir) / "best", item_names=("state",), options=_options(1, best=True)
    )


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: Any,
    data_iter: Any = None,
    metrics: dict[str, float] | None = None,
) -> None:
    """Saves state (and the data iterator when given); waits so a kill never leaves half a save."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
        items["data"] = pipeline.checkpoint_save_args(data_iter)
    manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
    manager.wait_until_finished()


def restore(
    manager: ocp.CheckpointManager, step: int, abstract_state: Any, data_iter: Any = None
) -> Any:
    """Restores into `abstract_state` (ShapeDtypeStructs with shardings) and the iterator."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
        items["data"] = pipeline.checkpoint_restore_args(data_iter)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"]


def resolve_step(workdir: str, which: str | int) -> tuple[ocp.CheckpointManager, int]:
    """'latest' | 'best' | a step number -> (manager holding it, step); clear error if absent."""
    which = str(which)
    if which == "best":
        manager = best_manager(workdir)
        step = manager.best_step()
        if step is None:  # no evaluation ran yet: fall back to the latest training checkpoint
            manager = latest_manager(workdir)
            step = manager.latest_step()
    elif which == "latest":
        manager = latest_manager(workdir)
        step = manager.latest_step()
    elif which.isdigit():
        step = int(which)
        manager = latest_manager(workdir)
        if step not in manager.all_steps():
            best = best_manager(workdir)
            if step in best.all_steps():
                manager = best
            else:
                raise FileNotFoundError(
                    f"No checkpoint for step {step} in {workdir}; available: "
                    f"{sorted(set(manager.all_steps()) | set(best.all_steps()))}"
                )
    else:
        raise ValueError(f"eval.checkpoint must be 'latest', 'best' or a step, got {which!r}")
    if step is None:
        raise FileNotFoundError(f"No checkpoint found under {workdir}; train first.")
    return manager, int(step)


def replicate_on_host(tree: Any) -> Any:
    """Fetches a (replicated) tree to host numpy."""
    return jax.device_get(tree)
