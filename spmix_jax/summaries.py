"""TensorBoard summaries, with or without TensorFlow installed.

clu's `SummaryWriter` writes through `tf.summary`, and `clu.metric_writers` imports TensorFlow
when it is imported. Accelerator images often ship jax, flax and tensorboard but no TensorFlow
(a 600 MB install whose pins can fight jax's). There the same event files are written with the
`tensorboard` package's own event-file writer, so a run trains and logs the same scalars, images
and hyperparameters either way; `tensorboard --logdir` reads both.
"""

from __future__ import annotations

import io
import time
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np


class Writer(Protocol):
    """What the trainer writes through (a subset of clu's `MetricWriter`)."""

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None: ...
    def write_images(self, step: int, images: Mapping[str, Any]) -> None: ...
    def write_hparams(self, hparams: Mapping[str, Any]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def tensorflow_available() -> bool:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def open_writer(logdir: str, enabled: bool = True, asynchronous: bool = True) -> Writer:
    """The run's TensorBoard writer: clu's when TensorFlow imports, else `EventFileWriter`'s.

    `enabled=False` (every host but the chief) gives a writer that drops everything.
    `asynchronous` writes from a background thread (clu's `AsyncWriter`) where clu is used.
    """
    if not enabled:
        return _NullWriter()
    if tensorflow_available():
        from clu import metric_writers

        writer = metric_writers.SummaryWriter(logdir)
        return metric_writers.AsyncWriter(writer) if asynchronous else writer
    return EventFileSummaryWriter(logdir)


class _NullWriter:
    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        del step, scalars

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        del step, images

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        del hparams

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class EventFileSummaryWriter:
    """Scalars, images and hparams as TensorBoard events, through the `tensorboard` package.

    The summaries have the form `tf.summary.scalar` / `tf.summary.image` give them (a tensor
    with the scalars or images plugin's metadata), so both writers' events read the same.
    """

    def __init__(self, logdir: str):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._events = EventFileWriter(logdir)

    def _add(self, step: int, values: list) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        event = event_pb2.Event(wall_time=time.time(), step=int(step))
        event.summary.CopyFrom(summary_pb2.Summary(value=values))
        self._events.add_event(event)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        from tensorboard.plugins.scalar import summary_v2

        values = []
        for tag, value in scalars.items():
            values.extend(summary_v2.scalar_pb(tag, float(np.asarray(value))).value)
        self._add(step, values)

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        """Each value is [N, H, W, C] (or [H, W, C]) uint8, or float in [0, 1]."""
        from PIL import Image
        from tensorboard.compat.proto import summary_pb2
        from tensorboard.plugins.image import metadata
        from tensorboard.util import tensor_util

        values = []
        for tag, batch in images.items():
            batch = np.asarray(batch)
            batch = batch[None] if batch.ndim == 3 else batch
            if batch.dtype != np.uint8:
                batch = np.clip(np.rint(batch * 255.0), 0, 255).astype(np.uint8)
            encoded = []
            for image in batch:
                png = io.BytesIO()
                Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(png, "PNG")
                encoded.append(png.getvalue())
            # The images plugin's layout: width, height, then one PNG per image.
            size = [str(batch.shape[2]).encode(), str(batch.shape[1]).encode()]
            tensor = tensor_util.make_tensor_proto(np.array(size + encoded, dtype=object))
            values.append(
                summary_pb2.Summary.Value(
                    tag=tag,
                    tensor=tensor,
                    metadata=metadata.create_summary_metadata(
                        display_name=None, description=None, converted_to_tensor=True
                    ),
                )
            )
        self._add(step, values)

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        from tensorboard.plugins.hparams import summary_v2

        self._add(0, list(summary_v2.hparams_pb(dict(hparams)).value))

    def flush(self) -> None:
        self._events.flush()

    def close(self) -> None:
        self._events.close()
