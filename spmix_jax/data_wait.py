"""How much of the training loop's wall time went to waiting for the next batch.

Steps are dispatched asynchronously, so while the device computes one step the host already asks
for the next batch; that request returns at once when the input pipeline keeps up (the batch was
read ahead) and blocks when it does not. The time spent blocked there, over the wall time of the
same stretch of steps, is the share of the run the input pipeline costs. Above `HINT_ABOVE` the
run says once which knobs give the host more room.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

# A data wait above this share of wall time is worth acting on.
HINT_ABOVE = 0.10

T = TypeVar("T")


class DataWaitMeter:
    """Accumulates the time spent fetching batches between two log lines."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self._clock = clock
        self._start = clock()
        self._waited = 0.0
        self.hinted = False

    def fetch(self, next_batch: Callable[[], T]) -> T:
        """Calls `next_batch()` and counts the time it took as data wait."""
        start = self._clock()
        try:
            return next_batch()
        finally:
            self._waited += self._clock() - start

    def take(self) -> float:
        """The data-wait fraction of wall time since the last `take` (or creation); restarts."""
        now = self._clock()
        elapsed = now - self._start
        fraction = self._waited / elapsed if elapsed > 0 else 0.0
        self._start, self._waited = now, 0.0
        return min(max(fraction, 0.0), 1.0)

    def hint(self, fraction: float, config: Any) -> str | None:
        """The one-time advice when `fraction` is above `HINT_ABOVE`, else None."""
        if self.hinted or fraction <= HINT_ABOVE:
            return None
        self.hinted = True
        return data_wait_hint(fraction, config)


def data_wait_hint(fraction: float, config: Any) -> str:
    """Which knobs give the input pipeline room, with this run's values (raw storage only for
    built datasets: the synthetic data are drawn, not decoded)."""
    storage = (
        ""
        if config.data.name == "synthetic"
        else "build the dataset with `python -m input_pipeline.build ... --storage=raw` (no "
        "decode or resize per sample), "
    )
    return (
        f"note: the step waited for data {fraction:.0%} of the time; the host's input pipeline "
        f"limits this run. Raise --config.input.worker_count (now "
        f"{config.input.worker_count}; up to the host's free cores), {storage}or lower "
        f"--config.data.image_size (now {config.data.image_size})."
    )
