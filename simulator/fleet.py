"""A fleet of simulated wearables: athletes times devices each, one live session per athlete.

The first device of each athlete starts the athlete's session (RPC `session.start`); the
athlete's other devices publish into that same session, as a watch and a chest strap share
one workout. Ids carry a random run id, so every run creates fresh athletes and event ids
and can be checked against the database on its own.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

from simulator.device import Device, DeviceReport, EventSource

T = TypeVar("T")

TokenSource = Callable[[str, str], str]
"""(athlete id, device id) → a connection token for that device (role `device`)."""
EventsFor = Callable[[str], EventSource]
"""device id → where that device's events come from (a `simulator.workout.Workout`)."""

CONNECT_CONCURRENCY = 50
"""Handshakes in flight while a fleet connects, so hundreds of devices do not stampede a hub."""


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (the bench's fan-out uses the same rule)."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass
class PhaseResult:
    """Every device's report for one run of the fleet."""

    reports: list[DeviceReport]

    @property
    def acked(self) -> int:
        return sum(len(r.acked) for r in self.reports)

    @property
    def seconds(self) -> float:
        """From the first send of any device to the last acknowledgement of any device."""
        sends = [r.first_send for r in self.reports if r.first_send]
        acks = [r.last_ack for r in self.reports if r.last_ack]
        return max(acks) - min(sends) if acks else 0.0

    def acked_ids(self) -> dict[str, str]:
        """Every acknowledged event id with its type, over all devices."""
        return {event_id: kind for r in self.reports for event_id, kind in r.acked.items()}

    def summary(self) -> dict[str, Any]:
        """Counts, acks/s and ack latency percentiles (ms), ready for JSON."""
        seconds = self.seconds
        ordered = sorted(x for r in self.reports for x in r.latencies_ms)
        failed: Counter[int] = sum((r.failed for r in self.reports), Counter())
        latency = {}
        if ordered:
            latency = {
                "p50": round(percentile(ordered, 0.50), 2),
                "p99": round(percentile(ordered, 0.99), 2),
                "max": round(ordered[-1], 2),
            }
        return {
            "devices": len(self.reports),
            "acked": self.acked,
            "failed": {str(code): n for code, n in sorted(failed.items())},
            "retries": sum(r.retries for r in self.reports),
            "reconnects": sum(r.reconnects for r in self.reports),
            "stopped": [f"{r.device}: {r.stopped}" for r in self.reports if r.stopped],
            "seconds": round(seconds, 3),
            "acks_per_s": round(self.acked / seconds, 1) if seconds else 0.0,
            "latency_ms": latency,
        }


class OpenedFleet:
    """`async with` a fleet: `open()` on entry, `close()` on exit, and `close()` too when
    `open()` fails half-way (some sockets are connected by then)."""

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        try:
            await self.open()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.close()


class Fleet(OpenedFleet):
    """Connects the devices and starts the sessions on entry, closes every socket on exit."""

    def __init__(
        self,
        url: str,
        tokens: TokenSource,
        *,
        athletes: int,
        devices_per_athlete: int,
        hr_share: float = 0.0,
        title: str = "simulated workout",
        athlete_ids: list[str] | None = None,
        events_for: EventsFor | None = None,
    ) -> None:
        """`athlete_ids` names the athletes (the demo's); else `athletes` fresh ids are made."""
        self.run_id = secrets.token_hex(3)
        self.title = title
        self.athletes = athlete_ids or [f"sim-{self.run_id}-a{i}" for i in range(athletes)]
        self.devices = [
            Device(url, tokens(athlete, device_id), device_id, hr_share=hr_share,
                   events=events_for(device_id) if events_for else None)
            for athlete in self.athletes
            for device_id in device_ids(athlete, devices_per_athlete)
        ]
        self.devices_per_athlete = devices_per_athlete
        self.sessions: list[str] = []
        """One session id per athlete, in `athletes` order."""

    async def open(self) -> None:
        """Connect every device, then have each athlete's first device start the session."""
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        await bounded(gate, (device.connect() for device in self.devices))
        self.sessions = await bounded(
            gate, (lead.start_session(self.title) for lead in self._leads())
        )

    async def run(
        self,
        *,
        count: int | None = None,
        rate: float = 0.0,
        seconds: float | None = None,
        stop: asyncio.Event | None = None,
    ) -> PhaseResult:
        """All devices publish at once; see `Device.run` for `count`, `rate`, `seconds`, `stop`."""
        reports = await asyncio.gather(
            *(
                device.run(self.session_of(i), count=count, rate=rate, seconds=seconds,
                           stop=stop)
                for i, device in enumerate(self.devices)
            )
        )
        return PhaseResult(list(reports))

    async def end_sessions(self) -> list[dict[str, Any]]:
        """End every session through its athlete's first device; returns their summaries."""
        return await asyncio.gather(
            *(lead.end_session(session)
              for lead, session in zip(self._leads(), self.sessions, strict=True))
        )

    async def close(self) -> None:
        await asyncio.gather(*(device.close() for device in self.devices), return_exceptions=True)

    def session_of(self, device_index: int) -> str:
        return self.sessions[device_index // self.devices_per_athlete]

    def _leads(self) -> list[Device]:
        return self.devices[:: self.devices_per_athlete]

    def live_reports(self) -> list[DeviceReport]:
        """The reports of the run under way, as far as it got (for a progress display)."""
        return [d.report for d in self.devices if d.report is not None]


def device_ids(athlete: str, devices_per_athlete: int) -> list[str]:
    """The ids a fleet gives an athlete's devices."""
    return [f"{athlete}-d{j}" for j in range(devices_per_athlete)]


async def bounded(gate: asyncio.Semaphore, calls: Iterable[Awaitable[T]]) -> list[T]:
    """Await the calls with at most the gate's number in flight; results in call order."""

    async def one(call: Awaitable[T]) -> T:
        async with gate:
            return await call

    return list(await asyncio.gather(*(one(call) for call in calls)))
