"""The stall watch: a blocked event loop and a collection show in their histograms."""

from __future__ import annotations

import asyncio
import gc
import time

from hub.loop_histogram import LoopHistogram
from hub.stalls import STALL_BUCKETS, StallWatch


def _histograms() -> tuple[LoopHistogram, LoopHistogram]:
    return (LoopHistogram("lag", "lag", buckets=STALL_BUCKETS),
            LoopHistogram("gc", "gc", ["generation"], buckets=STALL_BUCKETS))


def _count_at_least(histogram: LoopHistogram, seconds: float, *labels: str) -> int:
    series = histogram.labels(*labels)
    first = next(i for i, bound in enumerate(STALL_BUCKETS) if bound >= seconds)
    return sum(series.counts[first + 1:])


async def test_a_blocked_loop_is_observed_as_lag_of_its_length() -> None:
    lag, pauses = _histograms()
    watch = StallWatch(lag, pauses, interval=0.01)
    watch.start()
    try:
        await asyncio.sleep(0.05)
        assert _count_at_least(lag, 0.1) == 0
        time.sleep(0.3)  # the loop is held, as by a long callback
        await asyncio.sleep(0.05)
    finally:
        watch.stop()
    assert _count_at_least(lag, 0.1) == 1
    assert sum(lag.labels().counts) >= 5


async def test_collections_are_observed_by_generation_and_stop_ends_it() -> None:
    lag, pauses = _histograms()
    watch = StallWatch(lag, pauses)
    watch.start()
    try:
        gc.collect()
    finally:
        watch.stop()
    assert sum(pauses.labels("2").counts) == 1
    gc.collect()
    assert sum(pauses.labels("2").counts) == 1
    assert watch._on_gc not in gc.callbacks
