"""A checkpoint written by N processes resumes on M: the iterator continues the same epoch with
the pairs an uninterrupted run would read, none repeated or skipped."""

import jax.numpy as jnp
import numpy as np
import pytest
from grain._src.core import sharding as grain_sharding
from grain._src.python.checkpoint import handler as grain_handler

from input_pipeline import iterator_state, pipeline, synthetic
from input_pipeline.data_split import DataSplit
from spmix_jax import checkpointing

GLOBAL_BATCH = 8
SAVED_AT = 3  # global batches before the checkpoint; 40 examples = 5 batches an epoch
AFTER = 4  # batches read after the resume (into the second epoch)


def _split() -> DataSplit:
    source = synthetic.SyntheticSource(40, 8, 10.0, 0, "train")
    return DataSplit(
        source=source,
        class_counts=source.class_counts,
        class_names=synthetic.CLASS_NAMES,
        split="train",
        labels=source.labels,
    )


def _iterator(split, index: int, count: int) -> pipeline.PairBatchIterator:
    return pipeline.make_train_iterator(
        split,
        global_batch_size=GLOBAL_BATCH,
        image_size=8,
        seed=3,
        balanced_q=1.0,
        primary="balanced",
        process_index=index,
        process_count=count,
    )


def _pairs(batches) -> list[tuple[int, int]]:
    return [
        (int(p), int(s))
        for b in batches
        for p, s in zip(b["primary_index"], b["secondary_index"], strict=True)
    ]


def _global_pairs(iterators, steps: int) -> list[tuple[int, int]]:
    """Pairs of `steps` global batches: each step, the processes' slices in process order."""
    out = []
    for _ in range(steps):
        out += _pairs([next(it) for it in iterators])
    return out


def _save(tmp_path, iterators, monkeypatch):
    """A checkpoint of `iterators` as their processes write it: one state file per process."""
    manager = checkpointing.latest_manager(str(tmp_path), keep=2)
    count = len(iterators)
    monkeypatch.setattr(grain_sharding, "get_process_index_and_count", lambda: (0, count))
    checkpointing.save(manager, SAVED_AT, {"w": jnp.ones(2)}, iterators[0])
    data = tmp_path / "checkpoints" / str(SAVED_AT) / "data"
    for index, it in enumerate(iterators[1:], start=1):  # the other processes' own files
        monkeypatch.setattr(
            grain_sharding, "get_process_index_and_count", lambda i=index: (i, count)
        )
        grain_handler.CheckpointHandler().save(data, args=iterator_state.checkpoint_save_args(it))
    monkeypatch.undo()
    assert sorted(p.name for p in data.iterdir() if p.suffix == ".json") == [
        f"process_{i}-of-{count}.json" for i in range(count)
    ]
    return manager


def _uninterrupted(split) -> list[tuple[int, int]]:
    single = _iterator(split, 0, 1)
    pairs = _global_pairs([single], SAVED_AT + AFTER)
    single.close()
    return pairs[SAVED_AT * GLOBAL_BATCH :]


@pytest.mark.parametrize("saved_by,resumed_by", [(2, 1), (1, 2), (2, 4)])
def test_resume_on_another_process_count(tmp_path, monkeypatch, saved_by, resumed_by):
    split = _split()
    writers = [_iterator(split, i, saved_by) for i in range(saved_by)]
    before = _global_pairs(writers, SAVED_AT)
    manager = _save(tmp_path, writers, monkeypatch)
    for it in writers:
        it.close()
    readers = [_iterator(split, i, resumed_by) for i in range(resumed_by)]
    for it in readers:
        checkpointing.restore(manager, SAVED_AT, {"w": jnp.zeros(2)}, it)
        assert it.get_state()["position"] == SAVED_AT * GLOBAL_BATCH
    resumed = _global_pairs(readers, AFTER)
    for it in readers:
        it.close()
    assert resumed == _uninterrupted(split)
    # The epoch goes on where it stopped: the instance side (the secondary, primary='balanced')
    # of the pairs before and after the resume covers every example exactly once.
    epoch = [s for _, s in before + resumed[: 40 - len(before)]]
    np.testing.assert_array_equal(np.sort(epoch), np.arange(40))


def test_processes_that_disagree_are_refused(tmp_path, monkeypatch):
    split = _split()
    writers = [_iterator(split, i, 2) for i in range(2)]
    _global_pairs(writers, SAVED_AT)
    next(writers[1])  # process 1 one batch ahead: not a state of one global step
    manager = _save(tmp_path, writers, monkeypatch)
    reader = _iterator(split, 0, 1)
    with pytest.raises(ValueError, match="different steps"):
        checkpointing.restore(manager, SAVED_AT, {"w": jnp.zeros(2)}, reader)
    reader.close()
    for it in writers:
        it.close()
