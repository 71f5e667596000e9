"""The data-wait fraction the trainer logs, and its one-time advice, on a hand-driven clock."""

from __future__ import annotations

from configs import tiny
from spmix_jax.data_wait import DataWaitMeter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_fraction_is_fetch_time_over_wall_time_and_restarts():
    clock = Clock()
    meter = DataWaitMeter(clock)

    def fetch(seconds: float) -> str:
        clock.now += seconds
        return "batch"

    assert meter.fetch(lambda: fetch(0.5)) == "batch"
    clock.now += 1.5  # the step and everything else
    assert meter.fetch(lambda: fetch(1.0)) == "batch"
    clock.now += 2.0
    assert meter.take() == 1.5 / 5.0
    clock.now += 4.0  # a stretch without waiting
    assert meter.take() == 0.0


def test_hint_names_the_knobs_once_and_only_above_ten_percent():
    config = tiny.get_config()
    meter = DataWaitMeter(Clock())
    assert meter.hint(0.10, config) is None
    text = meter.hint(0.25, config)
    assert text is not None and "25%" in text
    for knob in ("input.worker_count (now 0", "data.image_size (now 24)"):
        assert knob in text
    assert "--storage=raw" not in text  # synthetic data are drawn, not decoded
    assert meter.hint(0.9, config) is None  # said once per run
    config.data.name = "folder_csv"
    assert "--storage=raw" in DataWaitMeter(Clock()).hint(0.25, config)
