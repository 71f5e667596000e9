"""The TensorFlow-free TensorBoard writer gives the events clu's `tf.summary` writer gives."""

import io

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from spmix_jax import summaries


def _write(writer, rng_seed: int = 0) -> np.ndarray:
    image = np.random.default_rng(rng_seed).integers(0, 256, (1, 5, 7, 3), dtype=np.uint8)
    writer.write_hparams({"optim.base_lr": 0.001, "model.variant": "S/16", "mix.enabled": True})
    writer.write_scalars(3, {"train/loss": np.float32(1.25), "val/balanced_accuracy": 0.5})
    writer.write_scalars(7, {"train/loss": 0.75})
    writer.write_images(7, {"val/confusion_matrix": image})
    writer.close()
    return image


def _read(logdir) -> event_accumulator.EventAccumulator:
    events = event_accumulator.EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    events.Reload()
    return events


def test_event_file_writer_matches_clu_summary_writer(tmp_path):
    pytest.importorskip("tensorflow")
    from clu import metric_writers

    image = _write(metric_writers.SummaryWriter(str(tmp_path / "clu")))
    assert np.array_equal(_write(summaries.EventFileSummaryWriter(str(tmp_path / "tb"))), image)
    reference, ours = _read(tmp_path / "clu"), _read(tmp_path / "tb")

    assert set(ours.Tags()["tensors"]) == set(reference.Tags()["tensors"])
    for tag in ("train/loss", "val/balanced_accuracy"):
        want = [
            (e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
            for e in reference.Tensors(tag)
        ]
        got = [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in ours.Tensors(tag)]
        assert got == want
        assert (
            ours.SummaryMetadata(tag).plugin_data.plugin_name
            == reference.SummaryMetadata(tag).plugin_data.plugin_name
            == "scalars"
        )
    tag = "val/confusion_matrix"
    for events in (reference, ours):
        (event,) = events.Tensors(tag)
        width, height, png = tensor_util.make_ndarray(event.tensor_proto)
        assert (int(width), int(height), event.step) == (7, 5, 7)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), image[0])
        assert events.SummaryMetadata(tag).plugin_data.plugin_name == "images"
    # The hparams plugin's session start, with the same values (its start time differs).
    assert (
        _hparams(ours)
        == _hparams(reference)
        == {
            "optim.base_lr": 0.001,
            "model.variant": "S/16",
            "mix.enabled": True,
        }
    )


def _hparams(events) -> dict:
    from google.protobuf import json_format
    from tensorboard.plugins.hparams import plugin_data_pb2

    (content,) = events.PluginTagToContent("hparams").values()
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return json_format.MessageToDict(start)["hparams"]


def test_without_tensorflow_the_run_writes_through_tensorboard(tmp_path, monkeypatch):
    monkeypatch.setattr(summaries, "tensorflow_available", lambda: False)
    writer = summaries.open_writer(str(tmp_path))
    assert isinstance(writer, summaries.EventFileSummaryWriter)
    writer.write_scalars(1, {"train/loss": 2.0})
    writer.write_images(1, {"train/pairs": np.full((4, 4, 3), 0.5, np.float32)})
    writer.close()
    events = _read(tmp_path)
    assert {"train/loss", "train/pairs"} <= set(events.Tags()["tensors"])
    _, _, png = tensor_util.make_ndarray(events.Tensors("train/pairs")[0].tensor_proto)
    assert np.all(np.asarray(Image.open(io.BytesIO(png))) == 128)  # 0.5 -> 127.5 -> 128


def test_a_disabled_writer_writes_nothing(tmp_path):
    writer = summaries.open_writer(str(tmp_path), enabled=False)
    writer.write_scalars(1, {"train/loss": 2.0})
    writer.close()
    assert not list(tmp_path.iterdir())
