"""The training iterator's state in a checkpoint: saved per process, restored on any topology.

Each process saves its iterator state as one JSON file (`process_<i>-of-<n>.json`) through
orbax. The state counts global batches and pair positions, which are the same on every process,
so `restore_saved_state` resumes from a checkpoint written by any number of processes: each
process continues with its slice of the next global batch (docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import grain
from etils import epath

from input_pipeline.pipeline import PairBatchIterator, _process_index_and_count


def checkpoint_save_args(iterator: grain.DatasetIterator) -> Any:
    """orbax args that save the iterator state (grain's handler; one JSON file per process)."""
    return grain.checkpoint.CheckpointSave(iterator)


def checkpoint_restore_args(iterator: grain.DatasetIterator) -> Any:
    """orbax args that restore a saved state into `iterator` (built with the same arguments).

    Needs the process count of the save; `restore_saved_state` does not.
    """
    return grain.checkpoint.CheckpointRestore(iterator)


_STATE_FILE = re.compile(r"^process_(\d+)-of-(\d+)\.json$")


def restore_saved_state(iterator: grain.DatasetIterator, directory: str | os.PathLike) -> None:
    """Sets `iterator` to the state saved in `directory` (a checkpoint's `data` item), whatever
    the number of processes that saved it, then starts prefetching.

    grain writes one `process_<i>-of-<n>.json` per process. With the same process count each
    process reads its own file. Otherwise, for the training iterator, every file holds the same
    global state (batches consumed by the whole job, see `PairBatchIterator.get_state`), so each
    process reads it (after checking the files agree) and continues with its slice of the next
    global batch: no pair is repeated or skipped, whatever the new process or device count.
    """
    path = epath.Path(directory)
    if isinstance(iterator, PairBatchIterator):
        index, count = iterator.process_index_and_count
    else:
        index, count = _process_index_and_count(None, None)
    own = path / f"process_{index}-of-{count}.json"
    if own.exists():
        state = json.loads(own.read_text())
    else:
        saved = (
            sorted(p for p in path.iterdir() if _STATE_FILE.match(p.name)) if path.is_dir() else []
        )
        if not saved:
            raise ValueError(f"{path}: no saved iterator state (process_<i>-of-<n>.json)")
        if not isinstance(iterator, PairBatchIterator):
            raise ValueError(
                f"{path} holds the iterator states of another process count "
                f"({saved[0].name}); this iterator restores only with its own ({own.name})"
            )
        states = [json.loads(p.read_text()) for p in saved]
        steps = {int(s.get("step", -1)) for s in states}
        if len(steps) != 1:
            raise ValueError(f"{path}: the processes saved different steps {sorted(steps)}")
        state = states[0]
    iterator.set_state(state)
    iterator.start_prefetch()
