"""`fitsync-hub simulate` end to end against a hub this test starts: the demo with nothing but
the hub's URL, watching trainers, the live display, and workouts the hub accepts."""

from __future__ import annotations

import asyncio
import io
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from channels import events
from simulator.device import DeviceReport
from simulator.progress import Progress
from simulator.watcher import WatchReport
from simulator.workout import Workout
from tests.harness import API_KEY, SECRET, RunningHub

ROOT = Path(__file__).resolve().parent.parent


async def simulate(hub: RunningHub, *args: str) -> tuple[int, str]:
    """Run the command in its own process, as a user would, while this loop serves the hub."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub", "simulate", "--url", hub.ws_url, "--no-progress", *args,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={"PATH": "/usr/bin:/bin"})
    try:
        output, _ = await asyncio.wait_for(process.communicate(), 90)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, output.decode()


async def sessions_of(hub: RunningHub, user: str) -> list[dict[str, Any]]:
    async with hub.api() as api:
        response = await api.get(f"/api/users/{user}/sessions")
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["sessions"]
    return found


async def test_the_demo_needs_only_the_url_and_fills_the_demo_trainers_clients(
    make_hub: Any,
) -> None:
    hub: RunningHub = await make_hub(dev_login=True)
    code, output = await simulate(hub, "--demo", "--athletes", "2", "--duration", "5",
                                  "--rate", "4", "--trainers", "1")
    assert code == 0, output
    assert "ended 2 sessions" in output and "1 trainers received" in output

    async with httpx.AsyncClient(base_url=hub.http_url) as http:
        identities = (await http.get("/dev/login")).json()
    trainer = identities["trainer"]["user"]
    async with hub.api() as api:
        clients = {c: await sessions_of(hub, c) for c in ("demo-client-1", "demo-client-2")}
        linked = await api.get(f"/api/users/{trainer}/sessions")
    assert linked.status_code == 200, "the demo trainer exists"
    for client, sessions in clients.items():
        (session,) = sessions
        assert session["status"] == "ended" and session["title"] == "demo workout"
        assert session["summary"]["sets"] >= 1, client
        assert session["summary"]["max_bpm"] is not None, client


async def test_the_demo_streams_until_ctrl_c_then_ends_its_sessions(make_hub: Any) -> None:
    hub: RunningHub = await make_hub(dev_login=True)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub", "simulate", "--url", hub.ws_url, "--demo", "--athletes", "1",
        "--rate", "5", "--no-progress", cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={"PATH": "/usr/bin:/bin"})
    try:
        assert process.stdout is not None
        started = await asyncio.wait_for(process.stdout.readline(), 60)
        assert b"1 devices connected" in started, started
        async def streamed() -> bool:
            return bool((await sessions_of(hub, "demo-client-1"))[0]["summary"]["sets"])
        while not await streamed():
            await asyncio.sleep(0.2)
        process.send_signal(signal.SIGINT)
        output, _ = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, output
    assert b"ended 1 sessions" in output
    (session,) = await sessions_of(hub, "demo-client-1")
    assert session["status"] == "ended"


async def test_the_demo_against_a_hub_without_dev_login_says_how_to_get_one(
    hub: RunningHub,
) -> None:
    code, output = await simulate(hub, "--demo", "--duration", "1")
    assert code == 2
    assert "HUB_DEV_LOGIN=1" in output


async def test_trainers_linked_through_the_api_receive_every_event(make_hub: Any) -> None:
    hub: RunningHub = await make_hub()
    code, output = await simulate(hub, "--secret", SECRET, "--api-key", API_KEY,
                                  "--athletes", "3", "--events", "6", "--rate", "0",
                                  "--trainers", "2")
    assert code == 0, output
    assert "acked 18/18 events" in output
    # Each athlete's session is watched by one trainer: 18 events and 3 `started` statuses
    # (published before the trainers subscribed, so not delivered) → 18 publications.
    assert "2 trainers received 18 publications" in output


def test_a_demo_workout_is_made_of_events_the_hub_accepts_and_looks_like_training() -> None:
    workout = Workout("demo-client-1")
    now = 1_800_000_000_000
    made = [workout(f"e{i}", now + i * 1000) for i in range(80)]
    for event in made:
        events.validate(event)
    sets = [e for e in made if e["type"] == "set"]
    samples = [s for e in made if e["type"] == "hr" for s in e["samples"]]
    assert len(sets) == 20
    by_exercise: dict[str, set[float]] = {}
    for s in sets:
        by_exercise.setdefault(s["exercise"], set()).add(s["weight_kg"])
    assert all(len(weights) == 1 for weights in by_exercise.values()), "one working weight each"
    assert len(by_exercise) >= 3
    times = [ts for ts, _ in samples]
    assert times == sorted(set(times)), "one sample a second, in order"
    bpm = [b for _, b in samples]
    assert 40 <= min(bpm) < max(bpm) <= 220 and max(bpm) - min(bpm) > 20


def test_the_progress_display_shows_sent_acknowledged_failed_and_latency() -> None:
    report = DeviceReport("d1", "s1", sent=3)
    report.acked = {"a": "set", "b": "hr"}
    report.latencies_ms.extend([5.0, 7.0])
    report.failed[107] += 1
    watcher = WatchReport("t1", received=2)
    watcher.latencies_ms.extend([3.0])
    console = Console(record=True, width=100, file=io.StringIO())
    console.print(Progress(lambda: [report], [watcher], "test").table())
    text = console.export_text()
    for expected in ("events sent", "3", "acknowledged", "2 (", "failed", "1",
                     "p50 5.0", "delivered to trainers", "p50 3.0"):
        assert expected in text, (expected, text)
