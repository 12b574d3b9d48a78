"""A simulated trainer: one connection watching their clients' live sessions.

It subscribes to the sessions it is given and counts what the hub delivers, with the delay
from the hub's `server_ts` (stamped when the event was accepted) to its arrival: the fan-out
latency a watching trainer sees. Same host, same clock, so the delay needs no clock sync.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

from simulator.device import Connection


@dataclass
class WatchReport:
    trainer: str
    received: int = 0
    latencies_ms: array[float] = field(default_factory=lambda: array("d"))


class Watcher(Connection):
    """`connect()`, `watch(session ids)`, `run(stop)`, `close()`."""

    def __init__(self, url: str, token: str, trainer: str) -> None:
        super().__init__(url, token, trainer)
        self.report = WatchReport(trainer)

    async def watch(self, session_ids: list[str]) -> None:
        for session_id in session_ids:
            await self._command("subscribe", {"channel": f"session:{session_id}"})

    async def run(self, stop: asyncio.Event) -> None:
        """Read what arrives until `stop` is set (a dropped connection ends the watch)."""
        while not stop.is_set():
            await self._idle(0.25)

    def on_push(self, push: dict[str, Any]) -> None:
        data = push.get("pub", {}).get("data")
        if not isinstance(data, dict):
            return
        self.report.received += 1
        server_ts = data.get("server_ts")
        if isinstance(server_ts, int):
            self.report.latencies_ms.append(time.time() * 1000 - server_ts)
