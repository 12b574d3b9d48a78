"""Prometheus metrics. Counters are bumped once per publication, never once per delivery."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class Metrics:
    """One registry per node, so tests can run several nodes in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
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
        self.dropped = Counter(
            "fitsync_dropped_messages",
            "Messages that did not reach a client because it was cut as slow",
            registry=r,
        )

    def command(self, method: str, result: str) -> Counter:
        """The per-(method, result) child, looked up once: `labels()` takes a lock and builds
        a key on every call, and this runs for every command."""
        child = self._command_children.get((method, result))
        if child is None:
            child = self._command_children[(method, result)] = self.commands.labels(method, result)
        return child
