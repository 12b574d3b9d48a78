"""The wearable simulator against a real hub: every event acknowledged, and stored once."""

from __future__ import annotations

from typing import Any

from simulator import Fleet, PhaseResult
from simulator.fleet import TokenSource
from tests.harness import RunningHub


def device_tokens(hub: RunningHub) -> TokenSource:
    return lambda athlete, device: hub.token(athlete, "device", device=device)


async def stored_session(hub: RunningHub, session_id: str) -> dict[str, Any]:
    async with hub.api() as api:
        response = await api.get(f"/api/sessions/{session_id}")
    assert response.status_code == 200, response.text
    session: dict[str, Any] = response.json()
    return session


def acked_sets(result: PhaseResult, session_id: str) -> list[tuple[str, str]]:
    """(event id, device) of every set the hub acknowledged into the session."""
    return [
        (event_id, report.device)
        for report in result.reports
        if report.session_id == session_id
        for event_id, kind in report.acked.items()
        if kind == "set"
    ]


async def assert_stored_once(hub: RunningHub, fleet: Fleet, result: PhaseResult) -> None:
    for session_id in fleet.sessions:
        session = await stored_session(hub, session_id)
        stored = [(s["event_id"], s["device"]) for s in session["sets"]]
        expected = acked_sets(result, session_id)
        assert sorted(stored) == sorted(expected)
        assert session["summary"]["sets"] == len(expected)


async def test_every_simulated_event_is_acknowledged_and_stored_once(hub: RunningHub) -> None:
    async with Fleet(
        hub.ws_url, device_tokens(hub), athletes=2, devices_per_athlete=2, hr_share=0.3
    ) as fleet:
        result = await fleet.run(count=8)

    summary = result.summary()
    assert summary["acked"] == 2 * 2 * 8
    assert summary["failed"] == {} and summary["stopped"] == []
    assert len(result.acked_ids()) == 2 * 2 * 8
    assert summary["latency_ms"]["p99"] > 0
    await assert_stored_once(hub, fleet, result)


async def test_rate_limited_events_are_retried_with_the_same_id_and_stored_once(
    make_hub: Any,
) -> None:
    hub: RunningHub = await make_hub(commands_per_second=20)
    async with Fleet(hub.ws_url, device_tokens(hub), athletes=1, devices_per_athlete=1) as fleet:
        result = await fleet.run(count=40)

    summary = result.summary()
    assert summary["retries"] > 0, "the hub's 111 (temporary) never came: nothing was retried"
    assert summary["acked"] == 40 and summary["failed"] == {}
    await assert_stored_once(hub, fleet, result)
