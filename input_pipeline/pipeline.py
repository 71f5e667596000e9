"""grain iterators: infinite training batches of (primary, secondary) pairs, one-pass eval batches.

The host only samples, decodes and resizes (short side to S, centre square crop); every random
view is made on the accelerator. Layout of a global batch: step t covers the global pair positions
[t*B, (t+1)*B) and host h reads the contiguous slice [t*B + h*b, t*B + (h+1)*b), b = B / hosts.
Hosts together therefore read each instance sample once per epoch, and the global batch assembled
with `jax.make_array_from_process_local_data` equals the one a single host would read, whatever the
number of hosts. Batches are formed before the iterator is split among worker processes, so the
stream is also the same for any worker count.

Saving the iterator state with orbax (one JSON file per process; see `checkpoint_save_args`):
    manager.save(step, args=ocp.args.Composite(state=..., data=checkpoint_save_args(it)))
    manager.restore(step, args=ocp.args.Composite(state=..., data=checkpoint_restore_args(it)))
or without orbax: `state = it.get_state()` (a JSON-serialisable dict) and `it.set_state(state)`.
The state counts global batches, so it is the same on every process; `restore_saved_state` reads
it from a checkpoint written by any number of processes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import grain
import numpy as np

from input_pipeline import sampling, worker_guard
from input_pipeline.data_split import DataSplit
from input_pipeline.host_images import frame_image, frame_shape, prepare_image, reframe

# grain needs a finite length; this many pair positions is "forever" at any realistic speed.
_STREAM_LENGTH = sys.maxsize // 2
# Iterator settings added after states were first saved, with the value an older state meant.
_SETTING_DEFAULTS = {"image_aspect": 1.0}


def host_batch_size(global_batch_size: int, process_count: int) -> int:
    """Per-host batch; refuses a global batch that the hosts cannot share equally."""
    if process_count < 1:
        raise ValueError(f"process_count must be >= 1, got {process_count}")
    if global_batch_size < 1:
        raise ValueError(f"global batch size must be >= 1, got {global_batch_size}")
    if global_batch_size % process_count:
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by the "
            f"{process_count} processes"
        )
    return global_batch_size // process_count


def _process_index_and_count(
    process_index: int | None, process_count: int | None
) -> tuple[int, int]:
    if (process_index is None) != (process_count is None):
        raise ValueError("give both process_index and process_count, or neither")
    if process_index is None or process_count is None:
        import jax  # only when the caller leaves the host layout to the runtime

        process_index, process_count = jax.process_index(), jax.process_count()
    if not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index {process_index} out of range for {process_count} processes"
        )
    return int(process_index), int(process_count)


def _record(source: Any, labels: np.ndarray, index: int) -> tuple[Any, str]:
    """Record `index` and its image id, checking its label against the split's labels."""
    record = source[index]
    image_id = str(record.get("image_id", index))
    if int(record["label"]) != int(labels[index]):
        raise ValueError(
            f"record {image_id!r} (index {index}) has label {record['label']} but "
            f"the split's labels say {labels[index]}"
        )
    return record, image_id


def _read(source: Any, labels: np.ndarray, index: int, image_size: int) -> np.ndarray:
    """Evaluation image of example `index` (centre square)."""
    record, image_id = _record(source, labels, index)
    image = record["image"]
    if "box" in record:  # a raw-pixel dataset: the centre square of the stored valid region
        top, left, height, width = (int(v) for v in record["box"])
        image = image[top : top + height, left : left + width]
    return prepare_image(image, image_size, image_id)


def _read_framed(
    source: Any, labels: np.ndarray, index: int, frame: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Training image of example `index` in the frame (whole image), and its valid region."""
    record, image_id = _record(source, labels, index)
    if "box" in record:  # a raw-pixel dataset: stored in its frame, read as it is
        return reframe(record["image"], record["box"], frame, image_id)
    return frame_image(record["image"], frame, image_id)


def _global_position(k: int, global_batch: int, host_batch: int, process_index: int) -> int:
    """Host-local stream position k -> global position: this host's slice of each global batch."""
    step, slot = divmod(int(k), host_batch)
    return step * global_batch + process_index * host_batch + slot


class _TrainPair:
    """Host-local stream position k -> one decoded training pair (a picklable grain map)."""

    def __init__(
        self,
        source: Any,
        labels: np.ndarray,
        sampler: sampling.PairSampler,
        global_batch: int,
        host_batch: int,
        process_index: int,
        primary: str,
        image_size: int,
        image_aspect: float = 1.0,
    ):
        self.source, self.labels, self.sampler = source, labels, sampler
        self.global_batch, self.host_batch = global_batch, host_batch
        self.process_index, self.primary, self.image_size = process_index, primary, image_size
        self.frame = frame_shape(image_size, image_aspect)

    def __call__(self, k: int) -> dict[str, Any]:
        position = _global_position(k, self.global_batch, self.host_batch, self.process_index)
        p, s = sampling.primary_secondary(*self.sampler.pair(position), self.primary)
        primary_image, primary_box = _read_framed(self.source, self.labels, p, self.frame)
        secondary_image, secondary_box = _read_framed(self.source, self.labels, s, self.frame)
        return {
            "primary_image": primary_image,
            "secondary_image": secondary_image,
            "primary_box": primary_box,
            "secondary_box": secondary_box,
            "primary_label": np.int32(self.labels[p]),
            "secondary_label": np.int32(self.labels[s]),
            "primary_index": np.int32(p),
            "secondary_index": np.int32(s),
        }


class _EvalExample:
    """Host-local position k -> one example of this host's shard, or a masked pad."""

    def __init__(
        self,
        source: Any,
        labels: np.ndarray,
        global_batch: int,
        host_batch: int,
        process_index: int,
        image_size: int,
    ):
        self.source, self.labels = source, labels
        self.global_batch, self.host_batch = global_batch, host_batch
        self.process_index, self.image_size = process_index, image_size

    def __call__(self, k: int) -> dict[str, Any]:
        position = _global_position(k, self.global_batch, self.host_batch, self.process_index)
        if position >= len(self.labels):
            size = self.image_size
            return {
                "image": np.zeros((size, size, 3), np.uint8),
                "label": np.int32(0),
                "index": np.int32(-1),
                "mask": np.bool_(False),
            }
        return {
            "image": _read(self.source, self.labels, position, self.image_size),
            "label": np.int32(self.labels[position]),
            "index": np.int32(position),
            "mask": np.bool_(True),
        }


def _check_split(data_split: DataSplit, *, for_training: bool) -> np.ndarray:
    labels = np.asarray(data_split.labels)
    if labels.ndim != 1 or len(labels) != len(data_split.source):
        raise ValueError(
            f"split {data_split.split!r}: {labels.shape} labels for "
            f"{len(data_split.source)} records"
        )
    if len(labels) == 0:
        raise ValueError(f"split {data_split.split!r} is empty")
    if for_training and labels.min() < 0:
        raise ValueError(
            f"split {data_split.split!r} has {int((labels < 0).sum())} examples "
            "without ground truth (label -1); it cannot be trained on"
        )
    return labels.astype(np.int64)


def _batches(
    element: Any,
    start: int,
    stop: int,
    host_batch: int,
    read_threads: int,
    worker_count: int,
    worker_options: dict[str, int],
) -> grain.IterDataset:
    """Positions [start, stop) mapped by `element` into full host batches, read ahead.

    Elements are whole batches, so a small read buffer keeps host memory bounded. With workers,
    `worker_options` are further `grain.MultiprocessingOptions` fields (grain's defaults else).
    """
    read = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(2, read_threads))
    ds = (
        grain.MapDataset.range(start, stop)
        .map(element)
        .batch(host_batch, drop_remainder=True)
        .to_iter_dataset(read)
    )
    if worker_count > 0:
        ds = ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=worker_count, **worker_options),
            worker_init_fn=worker_guard.worker_init_fn(),  # no orphans after a SIGKILL
        )
    return ds


class PairBatchIterator(grain.DatasetIterator):
    """This host's infinite stream of training batches; its state is portable.

    The state is the number of global batches consumed plus the settings that fix the stream,
    so a run saved with 2 workers resumes with 0 (grain's own multi-worker state would not) and
    a state from another seed, batch size, split or primary choice is refused. `set_state`
    rebuilds the grain pipeline at that batch; nothing is decoded to skip ahead.
    """

    def __init__(
        self,
        element: _TrainPair,
        *,
        host_batch: int,
        worker_count: int,
        worker_buffer_size: int,
        read_threads: int,
        settings: dict[str, Any],
    ):
        super().__init__()
        self._element, self._host_batch = element, host_batch
        self._worker_count, self._worker_buffer_size = worker_count, worker_buffer_size
        self._read_threads = read_threads
        self._settings = dict(settings)
        self._step = 0
        self._inner = self._build(0)

    def _build(self, step: int) -> grain.DatasetIterator:
        return iter(
            _batches(
                self._element,
                step * self._host_batch,
                _STREAM_LENGTH,
                self._host_batch,
                self._read_threads,
                self._worker_count,
                {"per_worker_buffer_size": self._worker_buffer_size},
            )
        )

    def __next__(self) -> dict[str, np.ndarray]:
        self._assert_not_closed()
        batch = next(self._inner)
        self._step += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        """{'step': global batches consumed, 'position': pairs consumed by all processes
        together, plus the settings}; JSON-serialisable and the same on every process, so it
        restores with any number of processes."""
        position = self._step * int(self._settings["global_batch_size"])
        return {"step": self._step, "position": position, **self._settings}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continues right after the batch at which `state` was taken."""
        if not isinstance(state, dict) or "step" not in state:
            raise ValueError(f"not a training iterator state: {state!r}")
        mismatched = {
            key: (state.get(key, _SETTING_DEFAULTS.get(key)), value)
            for key, value in self._settings.items()
            if state.get(key, _SETTING_DEFAULTS.get(key)) != value
        }
        if mismatched:
            raise ValueError(
                f"iterator state was saved with other settings (saved, current): {mismatched}"
            )
        step = int(state["step"])
        if step < 0:
            raise ValueError(f"iterator state has a negative step {step}")
        position = state.get("position")
        if position is not None and int(position) != step * int(
            self._settings["global_batch_size"]
        ):
            raise ValueError(f"iterator state has position {position} but step {step}")
        self._inner.close()
        self._inner = self._build(step)
        self._step = step

    def start_prefetch(self) -> None:
        self._inner.start_prefetch()

    @property
    def process_index_and_count(self) -> tuple[int, int]:
        """(this process, number of processes) the iterator reads for."""
        element = self._element
        return element.process_index, element.global_batch // element.host_batch

    def close(self) -> None:
        if not self._closed:
            self._inner.close()
        super().close()


def make_train_iterator(
    data_split: DataSplit,
    *,
    global_batch_size: int,
    image_size: int,
    seed: int,
    balanced_q: float,
    primary: str,
    image_aspect: float = 1.0,
    worker_count: int = 0,
    worker_buffer_size: int = 2,
    process_index: int | None = None,
    process_count: int | None = None,
    read_threads: int = 1,
) -> PairBatchIterator:
    """Infinite iterator of this host's training batches of pairs (checkpointable).

    Batch keys: primary_image, secondary_image uint8 (b, H, W, 3), each image whole in a frame of
    short side H = image_size and long side W = round(H * image_aspect) (docs/method.md section
    3); primary_box, secondary_box int32 (b, 4), the valid region (top, left, height, width) of
    each frame, from which the device draws its crops; primary_label, secondary_label,
    primary_index, secondary_index int32 (b,), b = global batch / processes.
    Deterministic in `seed` and independent of `worker_count` and `read_threads` (threads
    decoding ahead in each process; elements are whole batches).
    """
    if primary not in sampling.PRIMARY_CHOICES:
        raise ValueError(f"primary must be one of {sampling.PRIMARY_CHOICES}, got {primary!r}")
    if worker_count < 0 or read_threads < 0:
        raise ValueError(
            f"worker_count and read_threads must be >= 0, got {worker_count}, {read_threads}"
        )
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    frame_shape(image_size, image_aspect)  # refuses an aspect below 1
    process_index, process_count = _process_index_and_count(process_index, process_count)
    batch = host_batch_size(global_batch_size, process_count)
    labels = _check_split(data_split, for_training=True)
    num_classes = max(len(data_split.class_counts), int(labels.max()) + 1)
    sampler = sampling.PairSampler(
        labels, seed=seed, balanced_q=balanced_q, num_classes=num_classes
    )
    element = _TrainPair(
        data_split.source,
        labels,
        sampler,
        global_batch_size,
        batch,
        process_index,
        primary,
        image_size,
        image_aspect,
    )
    settings = {
        "split": str(data_split.split),
        "num_examples": int(len(labels)),
        "global_batch_size": int(global_batch_size),
        "image_size": int(image_size),
        "seed": int(seed),
        "balanced_q": float(balanced_q),
        "primary": primary,
        "image_aspect": float(image_aspect),
    }
    return PairBatchIterator(
        element,
        host_batch=batch,
        worker_count=worker_count,
        worker_buffer_size=worker_buffer_size,
        read_threads=read_threads,
        settings=settings,
    )


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
    """Batches per host in one eval pass (the same on every host)."""
    return -(-num_examples // global_batch_size)


def make_eval_iterator(
    data_split: DataSplit,
    *,
    global_batch_size: int,
    image_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
    worker_count: int = 0,
    read_threads: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over the split, this host's shard, padded to full batches with `mask` False.

    Batch keys: image uint8 (b, S, S, 3), label int32, index int32 (-1 on padding), mask bool.
    A split without ground truth passes its labels (-1) through unchanged.
    Every host yields the same number of batches; over all hosts each example appears once.
    """
    process_index, process_count = _process_index_and_count(process_index, process_count)
    batch = host_batch_size(global_batch_size, process_count)
    labels = _check_split(data_split, for_training=False)
    steps = num_eval_batches(len(labels), global_batch_size)
    element = _EvalExample(
        data_split.source, labels, global_batch_size, batch, process_index, image_size
    )
    return iter(_batches(element, 0, steps * batch, batch, read_threads, worker_count, {}))
