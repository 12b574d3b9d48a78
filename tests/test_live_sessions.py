"""Live workouts end to end: starting and ending sessions, devices publishing sets and heart
rate, what watchers receive, validation, idempotent retries, ordering under load, and a
database outage."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import centrifuge
import pytest

from tests.app_helpers import (
    ISO_UTC,
    SUMMARY_KEYS,
    a_set,
    connection_switch,
    hr,
    link,
    reply_error,
    rpc,
    session_sets,
    start_session,
    subscribe,
)
from tests.conftest import ConnectClient
from tests.harness import Recorder, RunningHub, eventually

MakeHub = Callable[..., Any]


async def barrier(client: Any, channel: str, events: Recorder, marker: dict[str, Any]) -> None:
    """Publish `marker` and wait for it: whatever the subscriber got before has arrived."""
    await client.publish(channel, marker)
    await eventually(lambda: any(p.get("event_id") == marker["event_id"]
                                 for p in events.publications()))


# -- starting and ending ---------------------------------------------------------------------


@pytest.mark.parametrize(("role", "device"), [("athlete", None), ("device", "ann-watch")])
async def test_athlete_or_device_starts_a_session(connect: ConnectClient, role: str,
                                                  device: str | None) -> None:
    client, _ = await connect("ann", role, device=device)
    started = await rpc(client, "session.start", {"title": "Leg day"})
    assert set(started) == {"session_id", "channel"}
    assert started["session_id"]
    assert started["channel"] == f"session:{started['session_id']}"


@pytest.mark.parametrize("role", ["trainer", "admin"])
async def test_only_athletes_and_devices_start_sessions(connect: ConnectClient,
                                                        role: str) -> None:
    client, _ = await connect("tom", role)
    assert (await reply_error(client.rpc("session.start", {}))).code == 103


async def test_linked_trainers_hear_of_client_sessions_starting_and_ending(
        hub: RunningHub, connect: ConnectClient) -> None:
    await link(hub, "tom", "ann")
    tom, _ = await connect("tom", "trainer")
    tess, _ = await connect("tess", "trainer")
    _, tom_feed = await subscribe(tom, "trainer:tom")
    _, tess_feed = await subscribe(tess, "trainer:tess")
    ann, _ = await connect("ann")

    session_id = await start_session(ann, "Leg day")
    started = (await eventually(lambda: tom_feed.publications()))[0]
    assert set(started) == {"type", "user_id", "session_id", "title", "started_at"}
    assert started["type"] == "client_session_started"
    assert (started["user_id"], started["session_id"], started["title"]) == (
        "ann", session_id, "Leg day")
    assert ISO_UTC.match(started["started_at"]), started["started_at"]

    await ann.publish(f"session:{session_id}", a_set("s1", reps=5, weight_kg=100))
    result = await rpc(ann, "session.end", {"session_id": session_id})
    ended = (await eventually(lambda: tom_feed.publications()[1:]))[0]
    assert set(ended) == {"type", "user_id", "session_id", "title", "started_at", "summary"}
    assert ended["type"] == "client_session_ended"
    assert (ended["user_id"], ended["session_id"], ended["title"], ended["started_at"]) == (
        "ann", session_id, "Leg day", started["started_at"])
    assert ended["summary"] == result["summary"]
    assert ended["summary"]["sets"] == 1 and ended["summary"]["volume_kg"] == 500

    # tess is no trainer of ann's: a marker published to her feed is all she got.
    async with hub.api() as api:
        r = await api.post("/api/publish", json={"channel": "trainer:tess",
                                                  "data": {"type": "marker"}})
        assert r.status_code == 200, r.text
    await eventually(lambda: tess_feed.publications())
    assert tess_feed.publications() == [{"type": "marker"}]


async def test_session_channel_carries_status_started_and_ended_with_summary(
        hub: RunningHub, connect: ConnectClient) -> None:
    ann, _ = await connect("ann")
    session_id = await start_session(ann)
    channel = f"session:{session_id}"
    _, events = await subscribe(ann, channel)
    await ann.publish(channel, a_set("s1", reps=8, weight_kg=60))
    await ann.publish(channel, hr("h1", 120, 140))

    result = await rpc(ann, "session.end", {"session_id": session_id})

    status = await eventually(
        lambda: [p for p in events.publications() if p["type"] == "status"])
    assert status == [{"type": "status", "status": "ended", "session_id": session_id,
                       "summary": result["summary"]}]
    summary = result["summary"]
    assert set(summary) == SUMMARY_KEYS
    assert (summary["sets"], summary["reps"], summary["volume_kg"]) == (1, 8, 480)
    assert (summary["avg_bpm"], summary["max_bpm"]) == (130, 140)
    assert isinstance(summary["duration_s"], int) and summary["duration_s"] >= 0
    # The started status came before anyone could subscribe: it is in the channel's history.
    history = await ann.history(channel, limit=-1)
    assert history.publications[0].data == {"type": "status", "status": "started",
                                            "session_id": session_id}


# -- events and running stats ----------------------------------------------------------------


async def test_watchers_receive_events_as_sent_with_user_device_server_ts_and_running_stats(
        hub: RunningHub, connect: ConnectClient) -> None:
    await link(hub, "tom", "ann")
    ann, _ = await connect("ann")
    watch, _ = await connect("ann", "device", device="ann-watch")
    tom, _ = await connect("tom", "trainer")
    session_id = await start_session(ann)
    channel = f"session:{session_id}"
    _, seen = await subscribe(tom, channel)

    sent = [
        a_set("s1", reps=10, weight_kg=50, rpe=7.5, duration_s=40, ts=1_700_000_000_000,
              note="left knee ok"),
        hr("h1", 100, 120),
        a_set("s2", reps=8, weight_kg=60.5),
        hr("h2", 150),
    ]
    await watch.publish(channel, sent[0])
    await watch.publish(channel, sent[1])
    await ann.publish(channel, sent[2])
    await watch.publish(channel, sent[3])

    got = await eventually(lambda: len(seen.publications()) == 4 and seen.publications())
    for event, received in zip(sent, got, strict=True):
        assert {k: v for k, v in received.items() if k in event} == event
        assert received["user"] == "ann"
        assert isinstance(received["server_ts"], int) and received["server_ts"] > 0
    assert [p.get("device") for p in got] == ["ann-watch", "ann-watch", None, "ann-watch"]
    assert "device" not in got[2]
    assert [p["stats"] for p in got] == [
        {"sets": 1, "reps": 10, "volume_kg": 500},
        {"sets": 1, "reps": 10, "volume_kg": 500, "avg_bpm": 110, "max_bpm": 120},
        {"sets": 2, "reps": 18, "volume_kg": 984},
        {"sets": 2, "reps": 18, "volume_kg": 984, "avg_bpm": 123.3, "max_bpm": 150},
    ]
    assert set(got[0]) == set(sent[0]) | {"user", "device", "server_ts", "stats"}


INVALID_EVENTS: list[tuple[str, Any, str]] = [
    ("reps_above_range", a_set("x", reps=1001), "reps"),
    ("reps_negative", a_set("x", reps=-1), "reps"),
    ("reps_not_integer", a_set("x", reps=2.5), "reps"),
    ("reps_as_text", a_set("x", reps="10"), "reps"),
    ("weight_negative", a_set("x", weight_kg=-5), "weight_kg"),
    ("weight_above_range", a_set("x", weight_kg=1000.5), "weight_kg"),
    ("weight_missing", {"type": "set", "event_id": "x", "exercise": "row", "reps": 5},
     "weight_kg"),
    ("exercise_empty", a_set("x", exercise=""), "exercise"),
    ("exercise_too_long", a_set("x", exercise="x" * 65), "exercise"),
    ("rpe_above_range", a_set("x", rpe=11), "rpe"),
    ("rpe_below_range", a_set("x", rpe=0.5), "rpe"),
    ("unknown_type", {"type": "jump", "event_id": "x"}, "type"),
    ("missing_type", {"event_id": "x", "exercise": "row", "reps": 5, "weight_kg": 20}, "type"),
    ("duration_negative", a_set("x", duration_s=-1), "duration_s"),
    ("ts_negative", a_set("x", ts=-1), "ts"),
    ("bpm_above_range", hr("x", 120, 251), "bpm"),
    ("bpm_below_range", hr("x", 19), "bpm"),
    ("too_many_samples", hr("x", *[100] * 601), "samples"),
    ("no_samples", hr("x"), "samples"),
    ("samples_missing", {"type": "hr", "event_id": "x"}, "samples"),
    ("sample_not_a_pair", {"type": "hr", "event_id": "x", "samples": [[1, 120, 3]]}, "samples"),
    ("sample_bpm_not_integer", {"type": "hr", "event_id": "x", "samples": [[1, 120.5]]},
     "samples"),
    ("sample_ts_negative", {"type": "hr", "event_id": "x", "samples": [[-1, 120]]}, "ts_ms"),
    ("missing_event_id", {"type": "set", "exercise": "row", "reps": 5, "weight_kg": 20},
     "event_id"),
    ("empty_event_id", a_set(""), "event_id"),
    # PostgreSQL cannot store NUL: accepted, it would fail every batch it is committed with.
    ("nul_in_event_id", a_set("a\x00b"), "event_id"),
    ("nul_in_exercise", a_set("x", exercise="row\x00"), "exercise"),
    ("array_data", [a_set("x")], "event"),
    ("string_data", "set x", "event"),
]


async def test_invalid_events_get_107_naming_the_field_and_leave_no_trace(
        hub: RunningHub, connect: ConnectClient) -> None:
    device, _ = await connect("ann", "device", device="ann-watch")
    session_id = await start_session(device)
    channel = f"session:{session_id}"
    _, seen = await subscribe(device, channel)

    wrong = []
    for name, event, field in INVALID_EVENTS:
        try:
            await device.publish(channel, event)
        except centrifuge.ReplyError as error:
            if error.code != 107 or field not in error.message:
                wrong.append(f"{name}: {error.code} {error.message!r}, expected 107 naming {field}")
        else:
            wrong.append(f"{name}: accepted")
    assert not wrong

    await barrier(device, channel, seen, a_set("valid"))
    assert [p["event_id"] for p in seen.publications()] == ["valid"]
    assert seen.publications()[0]["stats"]["sets"] == 1
    assert [s["event_id"] for s in await session_sets(hub, session_id)] == ["valid"]


async def test_clients_cannot_forge_the_fields_the_server_adds(
        hub: RunningHub, connect: ConnectClient) -> None:
    ann, _ = await connect("ann")
    session_id = await start_session(ann)
    channel = f"session:{session_id}"
    _, seen = await subscribe(ann, channel)
    forged = {"user": "bob", "device": "bob-watch", "server_ts": 1,
              "stats": {"sets": 99, "reps": 99, "volume_kg": 99}}

    await ann.publish(channel, a_set("s1", reps=3, weight_kg=10, **forged))

    [got] = await eventually(lambda: seen.publications())
    assert got["user"] == "ann"
    assert "device" not in got  # sent from the phone, not from a device
    assert got["server_ts"] > 1
    assert got["stats"] == {"sets": 1, "reps": 3, "volume_kg": 30}
    [stored] = await session_sets(hub, session_id)
    assert (stored["user"], stored.get("device"), stored["server_ts"]) == (
        "ann", None, got["server_ts"])


async def test_athlete_sees_who_joins_and_leaves_the_session(
        hub: RunningHub, connect: ConnectClient) -> None:
    await link(hub, "tom", "ann")
    ann, _ = await connect("ann")
    session_id = await start_session(ann)
    _, watching = await subscribe(ann, f"session:{session_id}", join_leave=True)
    tom, _ = await connect("tom", "trainer")

    sub, _ = await subscribe(tom, f"session:{session_id}")
    joined = await eventually(lambda: [c for c in watching.named("join") if c.info.user == "tom"])
    await sub.unsubscribe()
    left = await eventually(lambda: watching.named("leave"))

    assert [ctx.info.user for ctx in left] == ["tom"]
    assert left[0].info.client == joined[0].info.client


async def test_a_retry_of_an_acknowledged_event_is_acknowledged_after_the_session_ended(
        hub: RunningHub, connect: ConnectClient) -> None:
    watch, _ = await connect("ann", "device", device="ann-watch")
    session_id = await start_session(watch)
    channel = f"session:{session_id}"
    await watch.publish(channel, a_set("s1"))
    await rpc(watch, "session.end", {"session_id": session_id})

    await watch.publish(channel, a_set("s1"))  # the first reply was lost: the device retries

    assert [s["event_id"] for s in await session_sets(hub, session_id)] == ["s1"]


async def test_a_retry_of_an_event_older_than_the_channels_history_is_not_broadcast(
        hub: RunningHub, connect: ConnectClient) -> None:
    """A retry is broadcast only when history shows the event never went out (a broadcast
    that failed after the commit, test_multinode_redis.py); when history no longer reaches
    back to the event, nothing is."""
    watch, _ = await connect("ann", "device", device="ann-watch")
    session_id = await start_session(watch)
    channel = f"session:{session_id}"
    await watch.publish(channel, a_set("old"))
    # The session channel retains its last 1000 publications: "old" and the start go.
    async with hub.api() as api:
        for n in range(1000):
            reply = await api.post("/api/publish", json={"channel": channel,
                                                         "data": {"type": "note", "n": n}})
            assert reply.status_code == 200, reply.text
    ann, _ = await connect("ann")
    _, seen = await subscribe(ann, channel)

    await watch.publish(channel, a_set("old"))  # a very late retry

    await barrier(watch, channel, seen, a_set("last"))
    assert [p["event_id"] for p in seen.publications()] == ["last"]


async def test_a_repeated_event_id_is_acknowledged_but_stored_and_broadcast_once(
        hub: RunningHub, connect: ConnectClient) -> None:
    ann, _ = await connect("ann")
    watch, _ = await connect("ann", "device", device="ann-watch")
    band, _ = await connect("ann", "device", device="ann-band")
    session_id = await start_session(ann)
    channel = f"session:{session_id}"
    _, seen = await subscribe(ann, channel)

    await watch.publish(channel, a_set("s1", reps=10))
    await watch.publish(channel, a_set("s1", reps=10))
    await band.publish(channel, a_set("s1", reps=10))  # event ids are unique per athlete
    await watch.publish(channel, hr("h1", 100))
    await watch.publish(channel, hr("h1", 100))
    await barrier(watch, channel, seen, a_set("s2", reps=5))

    got = seen.publications()
    assert [p["event_id"] for p in got] == ["s1", "h1", "s2"]
    assert got[-1]["stats"] == {"sets": 2, "reps": 15, "volume_kg": 750}
    assert [s["event_id"] for s in await session_sets(hub, session_id)] == ["s1", "s2"]
    async with hub.api() as api:
        session = (await api.get(f"/api/sessions/{session_id}")).json()
    assert session["summary"]["sets"] == 2 and session["summary"]["avg_bpm"] == 100


async def test_publish_is_acknowledged_only_after_the_event_is_committed(
        hub: RunningHub, connect: ConnectClient) -> None:
    watch, _ = await connect("ann", "device", device="ann-watch")
    session_id = await start_session(watch)
    async with hub.api() as api:
        for i in range(5):
            await watch.publish(f"session:{session_id}", a_set(f"s{i}", reps=i))
            r = await api.get(f"/api/sessions/{session_id}")
            assert [s["event_id"] for s in r.json()["sets"]][-1:] == [f"s{i}"]
            assert r.json()["summary"]["sets"] == i + 1


async def test_publishing_into_an_ended_or_unknown_session_is_denied(
        hub: RunningHub, connect: ConnectClient) -> None:
    ann, _ = await connect("ann")
    session_id = await start_session(ann)
    await rpc(ann, "session.end", {"session_id": session_id})

    ended = await reply_error(ann.publish(f"session:{session_id}", a_set("late")))
    unknown = await reply_error(ann.publish("session:no-such-session", a_set("lost")))

    assert (ended.code, unknown.code) == (103, 103)
    assert await session_sets(hub, session_id) == []


@pytest.mark.parametrize(("user", "role", "device"), [
    ("tom", "trainer", None), ("bob", "athlete", None), ("bob", "device", "bob-watch"),
    ("root", "admin", None),
])
async def test_only_the_owner_and_their_devices_publish_into_a_session(
        hub: RunningHub, connect: ConnectClient, user: str, role: str,
        device: str | None) -> None:
    await link(hub, "tom", "ann")
    ann, _ = await connect("ann")
    session_id = await start_session(ann)
    other, _ = await connect(user, role, device=device)

    error = await reply_error(other.publish(f"session:{session_id}", a_set("intruder")))

    assert error.code == 103
    assert await session_sets(hub, session_id) == []


async def test_a_burst_from_many_devices_is_stored_once_and_broadcast_in_order(
        hub: RunningHub, connect: ConnectClient) -> None:
    athletes, devices_each, sets_each = 3, 10, 10
    watchers: dict[str, Recorder] = {}
    devices: list[tuple[Any, str, str]] = []
    for a in range(athletes):
        phone, _ = await connect(f"athlete-{a}")
        session_id = await start_session(phone)
        _, watchers[session_id] = await subscribe(phone, f"session:{session_id}")
        for d in range(devices_each):
            client, _ = await connect(f"athlete-{a}", "device", device=f"band-{d}")
            devices.append((client, session_id, f"band-{d}"))

    async def send_all(client: Any, session_id: str, device: str) -> None:
        for i in range(sets_each):
            await client.publish(f"session:{session_id}", a_set(f"{device}-{i}", reps=1))
        await client.publish(f"session:{session_id}", a_set(f"{device}-0", reps=1))  # a retry

    await asyncio.gather(*(send_all(*d) for d in devices))

    per_session = devices_each * sets_each
    for session_id, seen in watchers.items():
        got = await eventually(lambda seen=seen: len(seen.publications()) >= per_session
                               and seen.publications())
        assert len(got) == per_session
        assert [p["stats"]["sets"] for p in got] == list(range(1, per_session + 1))
        assert [p["stats"]["reps"] for p in got] == list(range(1, per_session + 1))
        stored = await session_sets(hub, session_id)
        assert sorted(s["event_id"] for s in stored) == sorted(p["event_id"] for p in got)
        assert len({s["event_id"] for s in stored}) == per_session
        # Each device's own events keep the order it sent them in.
        for d in range(devices_each):
            mine = [p["event_id"] for p in got if p["device"] == f"band-{d}"]
            assert mine == [f"band-{d}-{i}" for i in range(sets_each)]


async def test_core_session_flow_on_each_database(make_hub: MakeHub, connect: ConnectClient,
                                                  database_url: str) -> None:
    hub = await make_hub(database_url=database_url)
    await link(hub, "tom", "ann")
    tom, _ = await connect("tom", "trainer", target=hub)
    _, feed = await subscribe(tom, "trainer:tom")
    watch, _ = await connect("ann", "device", device="ann-watch", target=hub)
    session_id = await start_session(watch, "Pull")
    channel = f"session:{session_id}"
    _, seen = await subscribe(tom, channel)

    await watch.publish(channel, a_set("s1", reps=12, weight_kg=22.5, rpe=8))
    await watch.publish(channel, a_set("s1", reps=12, weight_kg=22.5, rpe=8))
    await watch.publish(channel, hr("h1", 90, 110, 130))
    result = await rpc(watch, "session.end", {"session_id": session_id})

    got = await eventually(lambda: len(seen.publications()) == 3 and seen.publications())
    assert [p["type"] for p in got] == ["set", "hr", "status"]
    assert got[1]["stats"] == {"sets": 1, "reps": 12, "volume_kg": 270, "avg_bpm": 110,
                               "max_bpm": 130}
    assert result["summary"]["sets"] == 1 and result["summary"]["max_bpm"] == 130
    assert [p["type"] for p in await eventually(lambda: len(feed.publications()) == 2
                                                and feed.publications())] == [
        "client_session_started", "client_session_ended"]
    async with hub.api() as api:
        stored = (await api.get(f"/api/sessions/{session_id}")).json()
        recent = (await api.get("/api/users/ann/sessions")).json()["sessions"]
    assert stored["status"] == "ended" and stored["summary"] == result["summary"]
    assert stored["sets"] == [{"type": "set", "event_id": "s1", "exercise": "squat", "reps": 12,
                               "weight_kg": 22.5, "rpe": 8, "user": "ann",
                               "device": "ann-watch", "server_ts": got[0]["server_ts"]}]
    assert [s["session_id"] for s in recent] == [session_id]


# -- database outage -------------------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_database_outage_gives_a_temporary_error_and_the_retry_succeeds(
        database_url: str, make_hub: MakeHub, connect: ConnectClient) -> None:
    hub = await make_hub(database_url=database_url)
    watch, events = await connect("ann", "device", device="ann-watch", target=hub)
    session_id = await start_session(watch)
    channel = f"session:{session_id}"
    _, seen = await subscribe(watch, channel)
    await watch.publish(channel, a_set("s1"))

    async with connection_switch(database_url) as allow:
        await allow(False)
        error = await reply_error(watch.publish(channel, a_set("s2")))
        assert (error.code, error.temporary) == (100, True)
        assert not events.named("disconnected")
        await allow(True)
        await watch.publish(channel, a_set("s2"))
    got = await eventually(lambda: len(seen.publications()) == 2 and seen.publications())
    assert [(p["event_id"], p["stats"]["sets"]) for p in got] == [("s1", 1), ("s2", 2)]
    assert [s["event_id"] for s in await session_sets(hub, session_id)] == ["s1", "s2"]
    assert not events.named("disconnected")
