"""Broker round-trip latency: every call a node makes to its broker, timed and counted.

The calls are timed where the node makes them, on the broker object itself: each operation
below is replaced, on that one instance, by a function that awaits the original and records
how long it took (`fitsync_broker_round_trip_seconds{operation}`) and whether it raised
(`fitsync_broker_errors_total{operation}`). So whichever `Broker` implementation is configured
(in-process, Redis) is measured the same way, and neither the broker nor the node knows about
metrics. An operation the broker does not have is left alone.

With the in-process broker a round trip is a few microseconds of Python; with Redis it is the
network round trip plus Redis's work, which is what the dashboard and the alerts watch.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

from prometheus_client import Counter

from hub.broker.base import Broker
from hub.loop_histogram import HistogramSeries
from hub.metrics import Metrics

TIMED_OPERATIONS = (
    "publish", "publish_join", "publish_leave", "publish_control", "history", "subscribe",
    "unsubscribe", "add_presence", "refresh_presence", "remove_presence", "presence",
    "presence_stats", "ping",
)
"""The broker calls that go to the broker's store and back (not `start`/`close`)."""


def time_broker_calls(broker: Broker, metrics: Metrics) -> None:
    """Time every call of `TIMED_OPERATIONS` on `broker` from now on, into `metrics`. Call
    before the node starts. A broker timed before (handed to a second node in turn) is timed
    into the new metrics only, never twice."""
    for operation in TIMED_OPERATIONS:
        method = getattr(broker, operation, None)
        if method is not None:
            setattr(broker, operation, _timed(
                getattr(method, _UNTIMED, method),
                metrics.broker_round_trip.labels(operation),
                metrics.broker_errors.labels(operation),
            ))


_UNTIMED = "_fitsync_untimed"
"""Where a timed operation keeps the broker's own method."""


def _timed(
    method: Callable[..., Awaitable[Any]], latency: HistogramSeries, errors: Counter
) -> Callable[..., Awaitable[Any]]:
    @wraps(method)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        except Exception:
            errors.inc()
            raise
        finally:
            latency.observe(time.perf_counter() - started)

    setattr(timed, _UNTIMED, method)
    return timed
