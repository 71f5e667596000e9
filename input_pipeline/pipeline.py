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
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import grain
import numpy as np
from PIL import Image

from input_pipeline import sampling

if TYPE_CHECKING:
    from input_pipeline.sources import DataSplit

# grain needs a finite length; this many pair positions is "forever" at any realistic speed.
_STREAM_LENGTH = sys.maxsize // 2


def host_batch_size(global_batch_size: int, process_count: int) -> int:
    """Per-host batch; refuses a global batch that the hosts cannot share equally."""
    if process_count < 1:
        raise ValueError(f"process_count must be >= 1, got {process_count}")
    if global_batch_size < 1:
        raise ValueError(f"global batch size must be >= 1, got {global_batch_size}")
    if global_batch_size % process_count:
        raise ValueError(f"global batch size {global_batch_size} is not divisible by the "
                         f"{process_count} processes")
    return global_batch_size // process_count


def _process_index_and_count(process_index: int | None,
                             process_count: int | None) -> tuple[int, int]:
    if (process_index is None) != (process_count is None):
        raise ValueError("give both process_index and process_count, or neither")
    if process_index is None:
        import jax  # only when the caller leaves the host layout to the runtime

        process_index, process_count = jax.process_index(), jax.process_count()
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} out of range for {process_count} "
                         "processes")
    return int(process_index), int(process_count)


def _to_rgb_array(image: Any, image_id: str) -> np.ndarray | Image.Image:
    """A decoded uint8 (H, W, 3) array, or a PIL image straight from encoded bytes."""
    if isinstance(image, np.ndarray) and image.dtype == object and image.ndim == 0:
        image = image.item()
    if isinstance(image, (bytes, bytearray, memoryview)):
        try:
            pil = Image.open(io.BytesIO(bytes(image)))
            return pil
        except Exception as err:  # PIL raises several types for broken data
            raise ValueError(f"cannot decode image {image_id!r}: {err}") from err
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image {image_id!r} must be uint8 or encoded bytes, got {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image {image_id!r} must be (H, W, 1|3|4), got shape {image.shape}")
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return image[..., :3]


def prepare_image(image: Any, image_size: int, image_id: str = "?") -> np.ndarray:
    """Decodes if needed, resizes the short side to `image_size` and crops the centre square.

    Accepts a uint8 (H, W, 3|1|4) or (H, W) array, or encoded JPEG/PNG bytes. Bilinear with
    antialiasing (PIL); the crop and resize happen in one resampling step. JPEGs are decoded at
    the smallest DCT scale that still covers the output (`draft`), which costs a fraction of a
    full decode for large sources.
    """
    decoded = _to_rgb_array(image, image_id)
    if isinstance(decoded, np.ndarray):
        if decoded.shape[:2] == (image_size, image_size):
            return np.ascontiguousarray(decoded)
        pil = Image.fromarray(np.ascontiguousarray(decoded))
    else:
        pil = decoded
        try:
            if pil.format == "JPEG":
                pil.draft("RGB", (image_size, image_size))
            pil = pil.convert("RGB")
        except Exception as err:
            raise ValueError(f"cannot decode image {image_id!r}: {err}") from err
    width, height = pil.size
    short = min(width, height)
    left, top = (width - short) / 2.0, (height - short) / 2.0
    if (width, height) != (image_size, image_size):
        pil = pil.resize((image_size, image_size), Image.Resampling.BILINEAR,
                         box=(left, top, left + short, top + short))
    return np.asarray(pil, dtype=np.uint8)


def _read(source: Any, labels: np.ndarray, index: int, image_size: int) -> np.ndarray:
    """Image of example `index`, checking the record's label against the split's labels."""
    record = source[index]
    image_id = str(record.get("image_id", index))
    if int(record["label"]) != int(labels[index]):
        raise ValueError(f"record {image_id!r} (index {index}) has label {record['label']} but "
                         f"the split's labels say {labels[index]}")
    return prepare_image(record["image"], image_size, image_id)


class _TrainPair:
    """Host-local stream position k -> one decoded training pair (a picklable grain map)."""

    def __init__(self, source: Any, labels: np.ndarray, sampler: sampling.PairSampler,
                 global_batch: int, host_batch: int, process_index: int, primary: str,
                 image_size: int):
        self.source, self.labels, self.sampler = source, labels, sampler
        self.global_batch, self.host_batch = global_batch, host_batch
        self.process_index, self.primary, self.image_size = process_index, primary, image_size

    def __call__(self, k: int) -> dict[str, np.ndarray]:
        step, slot = divmod(int(k), self.host_batch)
        position = step * self.global_batch + self.process_index * self.host_batch + slot
        p, s = sampling.primary_secondary(*self.sampler.pair(position), self.primary)
        return {
            "primary_image": _read(self.source, self.labels, p, self.image_size),
            "secondary_image": _read(self.source, self.labels, s, self.image_size),
            "primary_label": np.int32(self.labels[p]),
            "secondary_label": np.int32(self.labels[s]),
            "primary_index": np.int32(p),
            "secondary_index": np.int32(s),
        }


class _EvalExample:
    """Host-local position k -> one example of this host's shard, or a masked pad."""

    def __init__(self, source: Any, labels: np.ndarray, global_batch: int, host_batch: int,
                 process_index: int, image_size: int):
        self.source, self.labels = source, labels
        self.global_batch, self.host_batch = global_batch, host_batch
        self.process_index, self.image_size = process_index, image_size

    def __call__(self, k: int) -> dict[str, np.ndarray]:
        step, slot = divmod(int(k), self.host_batch)
        position = step * self.global_batch + self.process_index * self.host_batch + slot
        if position >= len(self.labels):
            size = self.image_size
            return {"image": np.zeros((size, size, 3), np.uint8), "label": np.int32(0),
                    "index": np.int32(-1), "mask": np.bool_(False)}
        return {
            "image": _read(self.source, self.labels, position, self.image_size),
            "label": np.int32(self.labels[position]),
            "index": np.int32(position),
            "mask": np.bool_(True),
        }


def _check_split(data_split: DataSplit) -> np.ndarray:
    labels = np.asarray(data_split.labels)
    if labels.ndim != 1 or len(labels) != len(data_split.source):
        raise ValueError(f"split {data_split.split!r}: {labels.shape} labels for "
                         f"{len(data_split.source)} records")
    if len(labels) == 0:
        raise ValueError(f"split {data_split.split!r} is empty")
    return labels.astype(np.int64)


def _read_options(read_threads: int) -> grain.ReadOptions:
    # Elements are whole batches: a small buffer keeps host memory bounded.
    return grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(2, read_threads))


def make_train_iterator(
    data_split: DataSplit, *, global_batch_size: int, image_size: int, seed: int,
    balanced_q: float, primary: str, worker_count: int = 0, worker_buffer_size: int = 2,
    process_index: int | None = None, process_count: int | None = None, read_threads: int = 1,
) -> grain.DatasetIterator:
    """Infinite iterator of this host's training batches of pairs (checkpointable).

    Batch keys: primary_image, secondary_image uint8 (b, S, S, 3); primary_label,
    secondary_label, primary_index, secondary_index int32 (b,), b = global batch / processes.
    Deterministic in `seed` and independent of `worker_count` and `read_threads`.
    """
    if primary not in sampling.PRIMARY_CHOICES:
        raise ValueError(f"primary must be one of {sampling.PRIMARY_CHOICES}, got {primary!r}")
    if worker_count < 0 or read_threads < 0:
        raise ValueError(f"worker_count and read_threads must be >= 0, got {worker_count}, "
                         f"{read_threads}")
    process_index, process_count = _process_index_and_count(process_index, process_count)
    batch = host_batch_size(global_batch_size, process_count)
    labels = _check_split(data_split)
    num_classes = max(len(data_split.class_counts), int(labels.max()) + 1)
    sampler = sampling.PairSampler(labels, seed=seed, balanced_q=balanced_q,
                                   num_classes=num_classes)
    element = _TrainPair(data_split.source, labels, sampler, global_batch_size, batch,
                         process_index, primary, image_size)
    ds = (grain.MapDataset.range(_STREAM_LENGTH)
          .map(element)
          .batch(batch, drop_remainder=True)
          .to_iter_dataset(_read_options(read_threads)))
    if worker_count > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=worker_count, per_worker_buffer_size=worker_buffer_size))
    return iter(ds)


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
    """Batches per host in one eval pass (the same on every host)."""
    return -(-num_examples // global_batch_size)


def make_eval_iterator(
    data_split: DataSplit, *, global_batch_size: int, image_size: int,
    process_index: int | None = None, process_count: int | None = None, worker_count: int = 0,
    read_threads: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over the split, this host's shard, padded to full batches with `mask` False.

    Batch keys: image uint8 (b, S, S, 3), label int32, index int32 (-1 on padding), mask bool.
    Every host yields the same number of batches; over all hosts each example appears once.
    """
    process_index, process_count = _process_index_and_count(process_index, process_count)
    batch = host_batch_size(global_batch_size, process_count)
    labels = _check_split(data_split)
    steps = num_eval_batches(len(labels), global_batch_size)
    element = _EvalExample(data_split.source, labels, global_batch_size, batch, process_index,
                           image_size)
    ds = (grain.MapDataset.range(steps * batch)
          .map(element)
          .batch(batch, drop_remainder=True)
          .to_iter_dataset(_read_options(read_threads)))
    if worker_count > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return iter(ds)


def checkpoint_save_args(iterator: grain.DatasetIterator) -> Any:
    """orbax args that save the iterator state (grain's handler; one JSON file per process)."""
    return grain.checkpoint.CheckpointSave(iterator)


def checkpoint_restore_args(iterator: grain.DatasetIterator) -> Any:
    """orbax args that restore a saved state into `iterator` (built with the same arguments)."""
    return grain.checkpoint.CheckpointRestore(iterator)
