"""Prometheus metrics. Counters are bumped once per publication, never once per delivery.

Histograms observe once per command, per broker call and per database transaction (a batch of
events), never per delivery, and without locks (`hub.loop_histogram`).
"""

from __future__ import annotations

import platform
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from hub import __version__
from hub.loop_histogram import HistogramSeries, LoopHistogram
from hub.protocol.codes import Disconnect, DisconnectCode
from hub.stalls import STALL_BUCKETS

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
"""Seconds, from half a millisecond (a broker call on the same machine) to ten seconds (an
outage's timeout): alerts read the tail from them."""
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500)
"""Events per transaction, up to the event writer's `max_batch` (500)."""

SLOW_CLIENT_REASONS: dict[str, Disconnect] = {
    "write_buffer": DisconnectCode.SLOW,
    "no_pong": DisconnectCode.NO_PONG,
    "command_queue": DisconnectCode.TOO_MANY_REQUESTS,
}
"""Why a client that could not keep up was cut: more outbound bytes waiting than
HUB_WRITE_BUFFER_BYTES (3008), no pong within HUB_PONG_TIMEOUT (3012), more commands queued
than it is allowed (3013)."""


class Metrics:
    """One registry per node, so tests can run several nodes in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.build_info = Gauge(
            "fitsync_build_info", "Always 1; the labels say which build this node runs",
            ["version", "python"], registry=r,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.draining = Gauge(
            "fitsync_draining",
            "1 while this node drains for shutdown (readiness fails, clients are moved away)",
            registry=r,
        )
        self.command_duration = LoopHistogram(
            "fitsync_command_duration_seconds",
            "Client commands from dispatch to reply, by method (a publish's reply is its ack)",
            ["method"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self._duration_children: dict[str, HistogramSeries] = {}
        self.broker_round_trip = LoopHistogram(
            "fitsync_broker_round_trip_seconds",
            "Broker calls from request to reply, by operation", ["operation"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.broker_errors = Counter(
            "fitsync_broker_errors", "Broker calls that raised, by operation", ["operation"],
            registry=r,
        )
        self.db_commit = LoopHistogram(
            "fitsync_db_commit_seconds",
            "Event-writer transactions that committed, from sending the batch to its result",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.db_commit_failures = Counter(
            "fitsync_db_commit_failures",
            "Event-writer transactions that failed (their events get the temporary error)",
            registry=r,
        )
        self.event_batch_size = LoopHistogram(
            "fitsync_event_batch_size", "Events per committed event-writer transaction",
            buckets=BATCH_SIZE_BUCKETS, registry=r,
        )
        self.event_loop_lag = LoopHistogram(
            "fitsync_event_loop_lag_seconds",
            "How late a timer due every 50 ms ran: the event loop's stalls (hub.stalls)",
            buckets=STALL_BUCKETS, registry=r,
        )
        self.gc_pause = LoopHistogram(
            "fitsync_gc_pause_seconds", "Garbage-collector pauses of the event loop, by generation",
            ["generation"], buckets=STALL_BUCKETS, registry=r,
        )
        self.handshakes_refused_busy = Counter(
            "fitsync_handshakes_refused_busy",
            "WebSocket handshakes answered 503 because HUB_MAX_CONNECTING connections were "
            "still waiting for their connect reply", registry=r,
        )
        self.connections = Gauge("fitsync_connections", "Open client connections", registry=r)
        self.subscriptions = Gauge(
            "fitsync_subscriptions", "Channel subscriptions on this node", registry=r
        )
        self.publications = Counter(
            "fitsync_publications", "Publications delivered to this node", registry=r
        )
        self.deliveries = Counter(
            "fitsync_deliveries", "Publications queued to local subscribers", registry=r
        )
        self.commands = Counter(
            "fitsync_commands", "Client commands by method and result", ["method", "result"],
            registry=r,
        )
        self.disconnects = Counter(
            "fitsync_disconnects", "Connections closed by the server, by code", ["code"],
            registry=r,
        )
        self._command_children: dict[tuple[str, str], Counter] = {}
        r.register(_SlowClientDisconnects(self.disconnects))
        self.dropped = Counter(
            "fitsync_dropped_messages",
            "Messages that did not reach a client because it was cut as slow",
            registry=r,
        )
        self.duplicates_dropped = Counter(
            "fitsync_broker_duplicates_dropped",
            "Publications the broker delivered again after the node already had them",
            registry=r,
        )
        self.gap_filled = Counter(
            "fitsync_gap_filled_publications",
            "Publications the broker did not deliver live that the node read from history and "
            "delivered itself",
            registry=r,
        )
        self.insufficient_state = Counter(
            "fitsync_insufficient_state",
            "Channels whose missed publications history could not cover (subscribers "
            "reconnected with 3010)",
            registry=r,
        )
        self.session_events_broadcast_late = Counter(
            "fitsync_session_events_broadcast_late",
            "Session events committed whose broadcast failed (the broker), broadcast when the "
            "device retried them",
            registry=r,
        )
        self.coach_answers = Counter(
            "fitsync_coach_answers", "Coach answers this node ended and announced, by status",
            ["status"], registry=r,
        )
        self.coach_failures = Counter(
            "fitsync_coach_failures",
            "Coach answers that failed, by what failed (channels.coach_model.FAILURE_KINDS)",
            ["kind"], registry=r,
        )
        self.coach_first_delta = LoopHistogram(
            "fitsync_coach_first_delta_seconds",
            "From a coach answer's start to its first delta's publication: the prompt, the "
            "model's time to its first token, and the hub's",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.coach_streaming = Gauge(
            "fitsync_coach_streaming", "Coach answers streaming on this node", registry=r
        )
        self.presence_refresh_failures = Counter(
            "fitsync_presence_refresh_failures",
            "Batched presence refreshes the broker refused (entries expire if it persists)",
            registry=r,
        )

    def command(self, method: str, result: str) -> Counter:
        """The per-(method, result) child, looked up once: `labels()` takes a lock and builds
        a key on every call, and this runs for every command."""
        child = self._command_children.get((method, result))
        if child is None:
            child = self._command_children[(method, result)] = self.commands.labels(method, result)
        return child

    def command_timer(self, method: str) -> HistogramSeries:
        """The per-method duration child, looked up once (as `command`)."""
        child = self._duration_children.get(method)
        if child is None:
            child = self._duration_children[method] = self.command_duration.labels(method)
        return child

    def batch_finished(self, size: int, seconds: float, committed: bool) -> None:
        """The event writer's observer (`models.event_writer.BatchObserver`): one call per
        transaction, committed or failed."""
        if committed:
            self.db_commit.observe(seconds)
            self.event_batch_size.observe(size)
        else:
            self.db_commit_failures.inc()


class _SlowClientDisconnects(Collector):
    """`fitsync_slow_client_disconnects_total{reason}`, read from the disconnect counts of
    `SLOW_CLIENT_REASONS`' codes at each scrape, so no caller counts a cut twice."""

    def __init__(self, disconnects: Counter) -> None:
        self._disconnects = disconnects

    def collect(self) -> Iterator[Metric]:
        by_code = {
            sample.labels["code"]: sample.value
            for metric in self._disconnects.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
        }
        family = CounterMetricFamily(
            "fitsync_slow_client_disconnects",
            "Clients cut because they could not keep up, by reason", labels=["reason"],
        )
        for reason, disconnect in SLOW_CLIENT_REASONS.items():
            family.add_metric([reason], by_code.get(str(disconnect.code), 0.0))
        yield family
