"""Orbax checkpoints: the train state and the grain iterator saved together.

Two managers under the workdir: `checkpoints/` keeps the last N steps (state + iterator, for
resuming) and `best/` keeps the single best state by validation balanced accuracy (for eval).
Restores go into an abstract state whose leaves carry the target sharding, so a checkpoint written
on 8 devices restores onto 1 (or any other count).

Saves are asynchronous: `save` returns once the arrays are copied off the accelerator, and the
files are written in the background while training goes on. Orbax writes each step into a
temporary folder and renames it when complete, and lists only completed steps, so a run killed
in the middle of a save resumes from the previous complete one. Each step also stores the JSON
item `run` (the config, command line, class names and training class counts; see
`run_config.py`).
"""

from __future__ import annotations

import asyncio.base_events
import contextlib
import errno
import inspect
import logging as std_logging
import os
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from input_pipeline import iterator_state
from spmix_jax.errors import NotFoundError, UserError

BEST_METRIC = "balanced_accuracy"
LATEST_DIR = "checkpoints"
BEST_DIR = "best"
RUN_ITEM = "run"


def _root(workdir: str) -> epath.Path:
    """Orbax wants absolute paths: make local ones absolute, keep URLs (gs://...) as they are."""
    workdir = str(workdir)
    return epath.Path(workdir if "://" in workdir else os.path.abspath(workdir))


def _options(max_to_keep: int, best: bool, create: bool = True) -> ocp.CheckpointManagerOptions:
    kwargs: dict[str, Any] = dict(max_to_keep=max_to_keep, create=create)
    if best:
        kwargs.update(best_fn=lambda m: m[BEST_METRIC], best_mode="max")
    return ocp.CheckpointManagerOptions(**kwargs)


def latest_manager(workdir: str, keep: int = 3, create: bool = True) -> ocp.CheckpointManager:
    """`checkpoints/`: the last `keep` steps; `create=False` only reads (makes no folder)."""
    return ocp.CheckpointManager(
        _root(workdir) / LATEST_DIR,
        item_names=("state", "data", RUN_ITEM),
        options=_options(keep, best=False, create=create),
    )


def best_manager(workdir: str, create: bool = True) -> ocp.CheckpointManager:
    """`best/`: the best step by validation balanced accuracy."""
    return ocp.CheckpointManager(
        _root(workdir) / BEST_DIR,
        item_names=("state", RUN_ITEM),
        options=_options(1, best=True, create=create),
    )


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: Any,
    data_iter: Any = None,
    metrics: dict[str, float] | None = None,
    run: dict[str, Any] | None = None,
    wait: bool = True,
) -> None:
    """Saves state (and the data iterator, and the `run` record, when given).

    `wait=False` returns once the arrays are on the host and writes the files in the background
    (the training loop does; `manager.wait_until_finished()` waits for them). Either way a kill
    before the save is complete leaves the previous step as the latest.
    """
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
        items["data"] = iterator_state.checkpoint_save_args(data_iter)
    if run is not None:
        items[RUN_ITEM] = ocp.args.JsonSave(run)
    with _folder_deleted_is_a_user_error(manager), _disk_full_is_a_user_error(manager):
        _notice_deleted_steps(manager, step)
        manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
        if wait:
            manager.wait_until_finished()


def wait(manager: ocp.CheckpointManager) -> None:
    """Waits for the background writes of `manager`; a full disk becomes `DiskFullError`."""
    with _folder_deleted_is_a_user_error(manager), _disk_full_is_a_user_error(manager):
        manager.wait_until_finished()


class DiskFullError(UserError):
    """A checkpoint could not be written for lack of space; the previous one stays the latest."""


# A full disk, a full quota, or a file over the size limit (`ulimit -f`: Python ignores
# SIGXFSZ, so the write fails with EFBIG). tensorstore reports them as a ValueError whose text
# carries the OS message (e.g. "RESOURCE_EXHAUSTED: ... No space left on device").
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NO_SPACE_TEXT = tuple(os.strerror(code) for code in _NO_SPACE)


def _no_space(error: BaseException | None) -> bool:
    """True when `error` or an error it was raised from is ENOSPC / EDQUOT / EFBIG (orbax wraps
    some; tensorstore raises ValueError with the OS message)."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, OSError) and error.errno in _NO_SPACE:
            return True
        if any(text in str(error) for text in _NO_SPACE_TEXT):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


class _NoSpaceLogFilter(std_logging.Filter):
    """Drops the traceback orbax's background writer logs for a full disk: the same error
    reaches `wait` and stops the run with one message (`_disk_full_is_a_user_error`); printed
    too, it buried that message under hundreds of lines."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return error is None or not _no_space(error)


for _logger in ("absl", "asyncio"):  # orbax's writer; tensorstore futures never awaited
    std_logging.getLogger(_logger).addFilter(_NoSpaceLogFilter())


def _closed_loop_callback(error: BaseException | None, tb: Any, thread: threading.Thread) -> bool:
    """True for the error tensorstore reports from its own threads when a write of an abandoned
    save completes after orbax closed that save's event loop: nothing waits for the result, so
    the traceback only says that the save was abandoned (after a full disk, one per file
    written: hundreds of lines that raced with, and buried, the run's one message)."""
    if thread is threading.main_thread() or not isinstance(error, RuntimeError):
        return False
    return str(error) == "Event loop is closed" and any(
        frame.name == "call_soon_threadsafe" and frame.filename == asyncio.base_events.__file__
        for frame in traceback.extract_tb(tb)
    )


_ORBAX_DIR = os.path.dirname(ocp.__file__)


def _abandoned_read(error: BaseException | None, obj: Any) -> bool:
    """True for a shard read that orbax left pending when a restore failed (a checkpoint that
    does not fit the config, say): the read's coroutine is closed when it is garbage-collected,
    and orbax turns that `GeneratorExit` into "Encountered error while reading array index" with
    the whole TensorStore spec, some 60 lines for each array of the state, after the one message
    that already said why the restore failed."""
    return (
        inspect.iscoroutine(obj)
        and obj.cr_code.co_filename.startswith(_ORBAX_DIR)
        and isinstance(error, Exception)
        and isinstance(error.__cause__, GeneratorExit)
    )


def _quiet_abandoned_io(previous: Callable[[Any], Any]) -> Callable[[Any], None]:
    """`sys.unraisablehook` (which tensorstore's threads and garbage-collected coroutines report
    through) without the errors of saves and restores already given up on
    (`_closed_loop_callback`, `_abandoned_read`); every other error still prints."""

    def hook(unraisable: Any) -> None:
        error, tb = unraisable.exc_value, unraisable.exc_traceback
        if _closed_loop_callback(error, tb, threading.current_thread()):
            return
        if _abandoned_read(error, getattr(unraisable, "object", None)):
            return
        previous(unraisable)

    return hook


sys.unraisablehook = _quiet_abandoned_io(sys.unraisablehook)


def complete_steps(directory: str | os.PathLike) -> list[int]:
    """Steps with a finished checkpoint folder in `directory` (unfinished ones are temporary)."""
    path = epath.Path(directory)
    return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit()) if path.is_dir() else []


@contextlib.contextmanager
def _disk_full_is_a_user_error(manager: ocp.CheckpointManager) -> Iterator[None]:
    """A full disk while saving stops the run with where and what is kept, not a traceback.

    Orbax writes into a temporary folder and renames it only when complete, so the failed step
    is never listed: the previous complete step stays the latest, and the next run resumes there
    (and replaces the leftover temporary folder).
    """
    with disk_full_stops_the_run(epath.Path(manager.directory), "a checkpoint in "):
        yield


@contextlib.contextmanager
def disk_full_stops_the_run(directory: epath.Path, what: str = "in ") -> Iterator[None]:
    """Any write under `directory` (checkpoints, figures, event files of a run) that finds the
    disk full or the file size limit reached becomes `DiskFullError`: one message naming the
    folder and the checkpoint step kept (of `directory`, else of its `checkpoints/`)."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as error:
        if not _no_space(error):
            raise
        steps = complete_steps(directory) or complete_steps(directory / LATEST_DIR)
        kept = f"step {steps[-1]} stays the latest" if steps else "no earlier checkpoint exists"
        # The abandoned writes' coroutines and files are collected at exit; their warnings
        # ("never awaited", unclosed files) would otherwise follow, and bury, the one message.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", ResourceWarning)
        raise DiskFullError(
            f"the disk is full: writing {what}{directory} failed (no space left on "
            f"device, or a file size limit such as `ulimit -f`); {kept}. Free space there (or "
            "move the workdir, or raise the limit) and rerun the same command to resume from it.",
        ) from error


def _missing_steps(manager: ocp.CheckpointManager) -> list[int]:
    """Steps the manager saved whose folders are gone."""
    directory = epath.Path(manager.directory)
    return [s for s in manager.all_steps() if not (directory / str(s)).exists()]


def _lost_folder(error: BaseException, manager: ocp.CheckpointManager) -> bool:
    """True when `error` of a save comes from its folder deleted under it: steps it saved are
    gone, or the error (or one it was raised from) is a file missing under the folder."""
    directory = epath.Path(manager.directory)
    if not directory.exists() or _missing_steps(manager):
        return True
    root = os.path.abspath(os.fspath(directory)) + os.sep
    cause: BaseException | None = error
    for _ in range(10):
        if cause is None:
            break
        if isinstance(cause, FileNotFoundError) and os.path.abspath(
            str(cause.filename or "")
        ).startswith(root):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


@contextlib.contextmanager
def _folder_deleted_is_a_user_error(manager: ocp.CheckpointManager) -> Iterator[None]:
    """The folder deleted while the last checkpoint was written into it (in the background)
    stops the run with one message instead of orbax's traceback. That checkpoint is not kept:
    orbax only lists a step once its temporary folder was renamed complete."""
    try:
        yield
    except Exception as error:
        if "://" in str(manager.directory) or not _lost_folder(error, manager):
            raise
        directory = epath.Path(manager.directory)
        steps = complete_steps(directory)
        left = f"steps {steps} are there" if steps else "no checkpoint is left there"
        raise UserError(
            f"{directory} was deleted while a checkpoint was being written into it; the run "
            f"stops without that checkpoint and {left}. Rerun the same command to resume from "
            "the newest one (from the start when none is left)."
        ) from error


def _notice_deleted_steps(manager: ocp.CheckpointManager, step: int) -> None:
    """Says so when the manager's folder, or steps it saved, vanished during the run, and
    goes on saving there.

    Orbax creates the folder again at the next save and writes that step whole, but it still
    counts the deleted steps as kept, and a save that was in flight when the folder vanished
    fails; reloading makes its list (and which step is the latest to resume from) the one on
    disk again.
    """
    directory = epath.Path(manager.directory)
    if "://" in str(directory):
        return  # object stores: listing them on every save costs requests
    failed = False
    try:
        manager.wait_until_finished()  # the save would wait for the previous one anyway
    except Exception as error:
        if not _lost_folder(error, manager):
            raise
        failed = True
    gone = _missing_steps(manager)
    if not gone and not failed:
        return
    what = f"{directory} was" if not directory.exists() else f"step(s) {gone} in {directory} were"
    unsaved = "; the checkpoint being written then is lost" if failed else ""
    message = (
        f"{what} deleted while the run trained{unsaved}; saving step {step} there now, and a "
        "rerun resumes from the newest step saved."
    )
    logging.warning("%s", message)
    if jax.process_index() == 0:
        print(f"warning: {message}", flush=True)
    manager.reload()


def restore(
    manager: ocp.CheckpointManager, step: int, abstract_state: Any, data_iter: Any = None
) -> Any:
    """Restores into `abstract_state` (ShapeDtypeStructs with shardings) and the iterator.

    The iterator state is read from the step's `data` folder directly, so a checkpoint written
    by N processes resumes on M (`iterator_state.restore_saved_state`).
    """
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    if data_iter is not None:
        iterator_state.restore_saved_state(
            data_iter, epath.Path(manager.directory) / str(step) / "data"
        )
    return restored["state"]


CORRUPT_SUFFIX = "_unreadable"


def restore_newest_intact(
    manager: ocp.CheckpointManager,
    abstract_state: Any,
    data_iter: Any = None,
    check_fits: Callable[[int], None] | None = None,
) -> tuple[int, Any]:
    """(step, state) of the newest checkpoint that restores completely, newest first.

    A checkpoint that cannot be restored (a truncated file, a missing item) is logged with the
    reason and, once an older one restored, moved to `<checkpoints>_unreadable/<step>` (kept for
    inspection, out of the way of the steps the run saves next). Raises UserError listing every
    checkpoint and its problem when none restores. `check_fits(step)` raises the message for a
    config that does not fit an intact checkpoint (see `restore_first_intact`).
    """
    steps = sorted(manager.all_steps(), reverse=True)
    step, state, failures = restore_first_intact(
        manager,
        steps,
        lambda s: restore(manager, s, abstract_state, data_iter),
        check_fits,
    )
    if failures:
        _move_aside(manager, [bad for bad, _ in failures])
    return step, state


def restore_first_intact(
    manager: ocp.CheckpointManager,
    steps: Sequence[int],
    restore_one: Callable[[int], Any],
    check_fits: Callable[[int], None] | None = None,
) -> tuple[int, Any, list[tuple[int, str]]]:
    """(step, restore_one(step), [(step, reason) of each newer one that failed]) for the first
    of `steps` that restores; UserError listing every step and why when none does.

    Reading comes first, the shape check second: a restore that fails on an intact checkpoint
    (every array readable, `is_intact`) is the config's fault, and `check_fits(step)` raises its
    message ("does not fit the config ..."); one that fails on a damaged checkpoint (a truncated
    array or `_METADATA` file) is damage, and the next older step is tried. Checking shapes first
    would read a damaged checkpoint's metadata as a config mismatch.
    """
    failures: list[tuple[int, str]] = []
    for step in steps:
        try:
            return int(step), restore_one(step), failures
        except Exception as error:  # orbax and tensorstore raise many types for broken files
            if check_fits is not None and is_intact(manager, step):
                check_fits(step)  # raises when the config does not fit; else the damage is
                # elsewhere (e.g. the iterator state), and the step counts as unreadable
            reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            logging.warning(
                "Checkpoint %d in %s cannot be restored (%s)", step, manager.directory, reason
            )
            print(
                f"warning: checkpoint {step} in {manager.directory} cannot be restored "
                f"({reason}); trying an older one",
                flush=True,
            )
            failures.append((int(step), reason))
    listing = "\n".join(f"  step {step}: {reason}" for step, reason in failures)
    raise UserError(
        f"No checkpoint in {manager.directory} can be restored:\n{listing}\nMove the folder "
        "aside to start over, or restore a copy."
    )


def is_intact(manager: ocp.CheckpointManager, step: int) -> bool:
    """True when every array of the state at `step` reads back in full (as numpy on the host,
    in the stored shapes), whatever config asks for it. Reads the whole state: used only after a
    restore failed, to tell damage from a config that does not fit."""
    path = epath.Path(manager.directory) / str(step) / "state"
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        stored: Any = checkpointer.metadata(path)
        stored = getattr(stored, "item_metadata", stored)
        tree = getattr(stored, "tree", stored)  # the plain tree inside orbax's TreeMetadata
        args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))
        shapes_ok = jax.tree.map(
            lambda meta, value: tuple(getattr(meta, "shape", ()) or ()) == np.shape(value),
            tree,
            restored,
        )
        return all(jax.tree.leaves(shapes_ok))
    except Exception as error:  # any failure to read it back is damage
        logging.info("Checkpoint %d in %s is damaged: %s", step, path, error)
        return False


def _move_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
    directory = epath.Path(manager.directory)
    aside = directory.parent / f"{directory.name}{CORRUPT_SUFFIX}"
    aside.mkdir(parents=True, exist_ok=True)
    for step in steps if jax.process_index() == 0 else ():  # one process moves shared files
        target = aside / str(step)
        if target.exists():
            target.rmtree()
        (directory / str(step)).rename(target)
        print(f"Moved the unreadable checkpoint {step} to {target}", flush=True)
    manager.reload()


def restore_partial(manager: ocp.CheckpointManager, step: int, abstract_tree: Any) -> Any:
    """Restores only the leaves of the state that `abstract_tree` names (e.g. params and
    batch statistics for evaluation), so the optimizer state is never read.

    A leaf the checkpoint lacks, or holds with another shape, raises ValueError.
    """
    args = ocp.args.PyTreeRestore(
        item=abstract_tree,
        restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_tree),
        partial_restore=True,
    )
    restored = manager.restore(step, args=ocp.args.Composite(state=args))["state"]
    missing = [  # orbax hands back the abstract leaf for what it did not find
        jax.tree_util.keystr(path)
        for path, leaf in jax.tree_util.tree_flatten_with_path(restored)[0]
        if isinstance(leaf, jax.ShapeDtypeStruct)
    ]
    if missing:
        raise ValueError(f"not in the checkpoint at step {step}: {', '.join(missing[:3])}")
    return restored


def shape_mismatches(manager: ocp.CheckpointManager, step: int, abstract_tree: Any) -> list[str]:
    """Leaves of `abstract_tree` that the stored state lacks or holds with another shape.

    Read from the checkpoint's metadata only, so a restore that would fail is never started.
    Unreadable metadata (a damaged checkpoint) gives no verdict: [] (the restore reports it).
    """
    path = epath.Path(manager.directory) / str(step) / "state"
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)  # orbax warns about a metadata file it does not need
    try:
        stored: Any = ocp.PyTreeCheckpointer().metadata(path)
    except Exception as error:  # orbax and tensorstore raise many types for broken files
        logging.set_verbosity(verbosity)
        logging.warning("No metadata for checkpoint %d in %s: %s", step, path, error)
        return []
    finally:
        logging.set_verbosity(verbosity)
    stored = getattr(stored, "item_metadata", stored)
    problems = []
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(abstract_tree)[0]:
        node = stored
        keys = [getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in key_path]
        name = "/".join(str(k) for k in keys)
        try:
            for k in keys:
                node = node[k]
        except (KeyError, TypeError, IndexError):
            problems.append(f"{name}: not in the checkpoint")
            continue
        shape = tuple(getattr(node, "shape", ()) or ())
        if shape != tuple(leaf.shape):
            problems.append(f"{name}: stored {shape}, this config needs {tuple(leaf.shape)}")
    return problems


def read_run(manager: ocp.CheckpointManager, step: int) -> dict[str, Any] | None:
    """The `run` record saved with `step`, or None for checkpoints written without one."""
    if not (epath.Path(manager.directory) / str(step) / RUN_ITEM).exists():
        return None
    restored = manager.restore(step, args=ocp.args.Composite(**{RUN_ITEM: ocp.args.JsonRestore()}))
    return dict(restored[RUN_ITEM])


def _steps(manager: ocp.CheckpointManager | None) -> list[int]:
    return [] if manager is None else list(manager.all_steps())


def resolve_step(workdir: str, which: str | int) -> tuple[ocp.CheckpointManager, int]:
    """'latest' | 'best' | a step number -> (manager holding it, step); clear error if absent.

    Reads only: no checkpoint folder is created in a workdir that has none.
    """
    which = str(which)
    root = _root(workdir)
    latest = latest_manager(workdir, create=False) if (root / LATEST_DIR).is_dir() else None
    best = best_manager(workdir, create=False) if (root / BEST_DIR).is_dir() else None
    manager: ocp.CheckpointManager | None
    step: int | None = None
    if which == "best":
        manager, step = best, None if best is None else best.best_step()
        if step is None:  # no evaluation ran yet: fall back to the latest training checkpoint
            manager, step = latest, None if latest is None else latest.latest_step()
    elif which == "latest":
        manager, step = latest, None if latest is None else latest.latest_step()
    elif which.isdigit():
        step = int(which)
        if step in _steps(latest):
            manager = latest
        elif step in _steps(best):
            manager = best
        else:
            available = sorted(set(_steps(latest)) | set(_steps(best)))
            if not available:
                raise NotFoundError(f"No checkpoint found in {workdir}; train first.")
            raise NotFoundError(
                f"No checkpoint for step {step} in {workdir}; available steps: {available} "
                "(or best, latest). Pass --config.eval.checkpoint=<one of them>."
            )
    else:
        raise UserError(
            f"config.eval.checkpoint must be 'latest', 'best' or a step number, got {which!r}."
        )
    if step is None or manager is None:
        raise NotFoundError(
            f"No checkpoint found in {workdir}; train first (python -m spmix_jax.main "
            f"--config=CONFIG --workdir={workdir}), or pass the --workdir of a finished run."
        )
    return manager, int(step)
