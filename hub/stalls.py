"""Event-loop stalls, measured: how late a periodic timer fires, and garbage-collector pauses.

Every connection of a node shares one event loop, so anything that holds it (a long
callback, a collection walking many objects, a burst of writes) delays every acknowledgement
and delivery at once; a tail latency made of stalls looks like a slow database from outside.
Two histograms tell them apart:

* `fitsync_event_loop_lag_seconds`: a timer due every `interval` seconds observes how late it
  ran. A loop that is merely busy shows sub-millisecond lag; a stall shows its length.
* `fitsync_gc_pause_seconds`: each collection's duration, by generation, from `gc.callbacks`
  (the collector runs on the loop's thread, so every pause is a stall).

Costs one timer callback per interval and two clock reads per collection.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from hub.loop_histogram import HistogramSeries, LoopHistogram

LAG_INTERVAL_S = 0.05
"""Often enough to catch a stall of a few tens of milliseconds, rare enough to cost nothing."""
STALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class StallWatch:
    """Observes loop lag and GC pauses into `lag` and `gc_pause` while started."""

    def __init__(self, lag: LoopHistogram, gc_pause: LoopHistogram,
                 interval: float = LAG_INTERVAL_S) -> None:
        self._lag = lag.labels()
        self._gc_pause: list[HistogramSeries] = [gc_pause.labels(str(g)) for g in range(3)]
        self._interval = interval
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._gc_started = 0.0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._due = self._loop.time() + self._interval
        self._timer = self._loop.call_at(self._due, self._tick)
        gc.callbacks.append(self._on_gc)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self._lag.observe(max(0.0, now - self._due))
        self._due = now + self._interval
        self._timer = self._loop.call_at(self._due, self._tick)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        """Collections run on whichever thread allocated; only the loop's are observed
        (the histograms are lock-free, `hub.loop_histogram`)."""
        if self._loop is None or not self._loop.is_running() or _loop_thread() is not self._loop:
            return
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started:
            self._gc_pause[info["generation"]].observe(time.perf_counter() - self._gc_started)
            self._gc_started = 0.0


def _loop_thread() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, if any, without raising."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
