"""The ingest benchmark's callback devices against a real hub: acked once, stored once."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from simulator import PhaseResult
from tests.harness import RunningHub
from tests.test_simulator import acked_sets, device_tokens, stored_session

# bench/ is a directory of scripts, not a package; its modules import each other by name.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from ingest_devices import LeanFleet


def lean_fleet(hub: RunningHub, athletes: int = 1, devices_per_athlete: int = 1) -> LeanFleet:
    return LeanFleet(
        hub.ws_url, device_tokens(hub), athletes=athletes, devices_per_athlete=devices_per_athlete
    )


async def assert_stored_once(hub: RunningHub, fleet: LeanFleet, result: PhaseResult) -> None:
    for session_id in fleet.sessions:
        session = await stored_session(hub, session_id)
        stored = [(s["event_id"], s["device"]) for s in session["sets"]]
        assert sorted(stored) == sorted(acked_sets(result, session_id))


async def test_every_lean_device_event_is_acknowledged_and_stored_once(hub: RunningHub) -> None:
    async with lean_fleet(hub, athletes=2, devices_per_athlete=2) as fleet:
        result = await fleet.run(count=8, seconds=30)

    summary = result.summary()
    assert summary["acked"] == 2 * 2 * 8
    assert summary["failed"] == {} and summary["stopped"] == []
    assert summary["latency_ms"]["p99"] > 0
    await assert_stored_once(hub, fleet, result)


async def test_rate_limited_lean_events_are_retried_with_the_same_id_and_stored_once(
    make_hub: Any,
) -> None:
    hub: RunningHub = await make_hub(commands_per_second=20)
    async with lean_fleet(hub) as fleet:
        result = await fleet.run(count=40, seconds=60)

    summary = result.summary()
    assert summary["retries"] > 0, "the hub's 111 (temporary) never came: nothing was retried"
    assert summary["acked"] == 40 and summary["failed"] == {}
    device = fleet.devices[0].device_id
    assert list(result.reports[0].acked) == [f"{device}-{seq}" for seq in range(1, 41)]
    await assert_stored_once(hub, fleet, result)


async def test_a_closed_connection_stops_the_device_and_is_reported(hub: RunningHub) -> None:
    async with lean_fleet(hub) as fleet:
        fleet.devices[0].abort()
        result = await fleet.run(seconds=5)

    assert result.reports[0].stopped.startswith("connection closed")
    assert result.acked == 0
