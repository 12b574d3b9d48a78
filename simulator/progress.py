"""The simulator's live progress display (rich): events sent, acknowledged, failed, latency.

Rates and latencies are over the last `WINDOW_S` seconds, so the display shows the present,
not the average since the start; totals are since the start.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable

from rich.console import Console
from rich.live import Live
from rich.table import Table

from simulator.device import DeviceReport
from simulator.fleet import percentile
from simulator.watcher import WatchReport

WINDOW_S = 5.0
REFRESH_S = 0.25


class _Window:
    """New values of append-only arrays, kept for the last `WINDOW_S` seconds."""

    def __init__(self) -> None:
        self.seen: dict[int, int] = {}
        self.values: deque[tuple[float, float]] = deque()

    def take(self, now: float, arrays: Iterable[tuple[int, Iterable[float]]]) -> None:
        for key, values in arrays:
            items = list(values)
            start = self.seen.get(key, 0)
            self.values.extend((now, v) for v in items[start:])
            self.seen[key] = len(items)
        while self.values and self.values[0][0] < now - WINDOW_S:
            self.values.popleft()

    def percentiles(self) -> str:
        ordered = sorted(v for _, v in self.values)
        if not ordered:
            return "–"
        return (f"p50 {percentile(ordered, 0.5):.1f} · p99 {percentile(ordered, 0.99):.1f}"
                f" · max {ordered[-1]:.1f} ms")

    def rate(self) -> float:
        return len(self.values) / WINDOW_S


class Progress:
    """Reads the devices' and watchers' live reports; `table()` is one frame of the display."""

    def __init__(self, reports: Callable[[], list[DeviceReport]], watchers: list[WatchReport],
                 title: str) -> None:
        self.reports = reports
        self.watchers = watchers
        self.title = title
        self.started = time.monotonic()
        self._acks = _Window()
        self._deliveries = _Window()

    def table(self) -> Table:
        now = time.monotonic()
        reports = self.reports()
        self._acks.take(now, ((id(r), r.latencies_ms) for r in reports))
        self._deliveries.take(now, ((id(w), w.latencies_ms) for w in self.watchers))
        failed = sum(sum(r.failed.values()) for r in reports)
        table = Table(title=f"{self.title} · {now - self.started:.0f} s", show_header=False,
                      min_width=60)
        table.add_column(style="bold")
        table.add_column()
        table.add_row("devices", f"{len(reports)} running")
        table.add_row("events sent", str(sum(r.sent for r in reports)))
        table.add_row("acknowledged",
                      f"{sum(len(r.acked) for r in reports)} ({self._acks.rate():.1f}/s)")
        table.add_row("failed", f"[red]{failed}[/red]" if failed else "0")
        table.add_row("retries / reconnects", f"{sum(r.retries for r in reports)} / "
                      f"{sum(r.reconnects for r in reports)}")
        table.add_row("ack latency", self._acks.percentiles())
        if self.watchers:
            table.add_row("delivered to trainers",
                          f"{sum(w.received for w in self.watchers)} "
                          f"({self._deliveries.rate():.1f}/s)")
            table.add_row("delivery latency", self._deliveries.percentiles())
        return table

    async def show(self, done: asyncio.Event, console: Console) -> None:
        """Redraw until `done` is set; the last frame stays on screen."""
        with Live(self.table(), console=console, refresh_per_second=1 / REFRESH_S,
                  transient=False) as live:
            while not done.is_set():
                try:
                    await asyncio.wait_for(done.wait(), REFRESH_S)
                except TimeoutError:
                    pass
                live.update(self.table())
        console.line()
