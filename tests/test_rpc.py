"""RPC methods through the official SDK: session.end, sessions.recent, trainer.clients, and
the protocol errors for unknown methods and bad data."""

from __future__ import annotations

import pytest

from tests.app_helpers import (
    ISO_UTC,
    SUMMARY_KEYS,
    a_set,
    hr,
    link,
    reply_error,
    rpc,
    start_session,
)
from tests.conftest import ConnectClient
from tests.harness import RunningHub

SESSION_ITEM_KEYS = {"session_id", "user_id", "title", "status", "started_at", "ended_at",
                     "summary"}


# -- session.end -----------------------------------------------------------------------------


async def test_session_title_must_be_a_short_string(connect: ConnectClient) -> None:
    ann, _ = await connect("ann")
    for title in ("x" * 201, 7, ["Legs"]):
        error = await reply_error(ann.rpc("session.start", {"title": title}))
        assert error.code == 107 and "title" in error.message, title
    assert await rpc(ann, "sessions.recent") == {"sessions": []}


@pytest.mark.parametrize(("role", "device"), [("athlete", None), ("device", "ann-watch")])
async def test_owner_or_their_device_ends_a_session_and_gets_its_summary(
        connect: ConnectClient, role: str, device: str | None) -> None:
    ann, _ = await connect("ann")
    session_id = await start_session(ann)
    await ann.publish(f"session:{session_id}", a_set("s1", reps=10, weight_kg=40))
    await ann.publish(f"session:{session_id}", a_set("s2", reps=6, weight_kg=42.5))
    await ann.publish(f"session:{session_id}", hr("h1", 95, 105, 160))
    ender, _ = await connect("ann", role, device=device)

    result = await rpc(ender, "session.end", {"session_id": session_id})

    assert set(result) == {"summary"}
    summary = result["summary"]
    assert set(summary) == SUMMARY_KEYS
    assert {k: summary[k] for k in ("sets", "reps", "volume_kg", "avg_bpm", "max_bpm")} == {
        "sets": 2, "reps": 16, "volume_kg": 655, "avg_bpm": 120, "max_bpm": 160}
    assert isinstance(summary["duration_s"], int) and summary["duration_s"] >= 0


async def test_summary_of_a_session_without_heart_rate_has_null_bpm(
        connect: ConnectClient) -> None:
    ann, _ = await connect("ann")
    session_id = await start_session(ann)
    summary = (await rpc(ann, "session.end", {"session_id": session_id}))["summary"]
    assert summary | {"duration_s": 0} == {"sets": 0, "reps": 0, "volume_kg": 0,
                                           "duration_s": 0, "avg_bpm": None, "max_bpm": None}


@pytest.mark.parametrize(("user", "role", "device"), [
    ("bob", "athlete", None), ("bob", "device", "bob-watch"), ("tom", "trainer", None),
    ("root", "admin", None),
])
async def test_someone_else_may_not_end_a_session(hub: RunningHub, connect: ConnectClient,
                                                  user: str, role: str,
                                                  device: str | None) -> None:
    await link(hub, "tom", "ann")
    ann, _ = await connect("ann")
    session_id = await start_session(ann)
    other, _ = await connect(user, role, device=device)

    assert (await reply_error(other.rpc("session.end", {"session_id": session_id}))).code == 103
    # Still active: the owner can publish and end it.
    await ann.publish(f"session:{session_id}", a_set("s1"))
    assert (await rpc(ann, "session.end", {"session_id": session_id}))["summary"]["sets"] == 1


async def test_ending_a_session_twice_or_an_unknown_one_is_denied(
        connect: ConnectClient) -> None:
    ann, _ = await connect("ann")
    session_id = await start_session(ann)
    await rpc(ann, "session.end", {"session_id": session_id})

    again = await reply_error(ann.rpc("session.end", {"session_id": session_id}))
    unknown = await reply_error(ann.rpc("session.end", {"session_id": "no-such-session"}))

    assert (again.code, unknown.code) == (103, 103)


@pytest.mark.parametrize("data", [{}, {"session_id": ""}, {"session_id": 42}])
async def test_session_end_without_a_session_id_is_a_bad_request(connect: ConnectClient,
                                                                 data: dict[str, object]) -> None:
    ann, _ = await connect("ann")
    error = await reply_error(ann.rpc("session.end", data))
    assert error.code == 107 and "session_id" in error.message


# -- sessions.recent -------------------------------------------------------------------------


async def test_athlete_lists_own_recent_sessions_newest_first(connect: ConnectClient) -> None:
    ann, _ = await connect("ann")
    first = await start_session(ann, "Push")
    await ann.publish(f"session:{first}", a_set("s1", reps=5, weight_kg=80))
    await rpc(ann, "session.end", {"session_id": first})
    second = await start_session(ann, "Pull")
    bob, _ = await connect("bob")
    await start_session(bob)

    sessions = (await rpc(ann, "sessions.recent"))["sessions"]

    assert [s["session_id"] for s in sessions] == [second, first]
    assert all(set(s) == SESSION_ITEM_KEYS for s in sessions)
    live, done = sessions
    assert (live["user_id"], live["title"], live["status"], live["ended_at"]) == (
        "ann", "Pull", "active", None)
    assert (done["user_id"], done["title"], done["status"]) == ("ann", "Push", "ended")
    for stamp in (live["started_at"], done["started_at"], done["ended_at"]):
        assert ISO_UTC.match(stamp), stamp
    assert done["started_at"] <= done["ended_at"] <= live["started_at"]
    assert set(done["summary"]) == SUMMARY_KEYS
    assert (done["summary"]["sets"], done["summary"]["volume_kg"]) == (1, 400)
    assert (await rpc(ann, "sessions.recent", {"limit": 1}))["sessions"] == [live]


async def test_linked_trainer_lists_a_client_recent_sessions(hub: RunningHub,
                                                             connect: ConnectClient) -> None:
    await link(hub, "tom", "ann")
    ann, _ = await connect("ann")
    session_id = await start_session(ann)
    tom, _ = await connect("tom", "trainer")

    sessions = (await rpc(tom, "sessions.recent", {"user_id": "ann"}))["sessions"]

    assert [(s["session_id"], s["user_id"]) for s in sessions] == [(session_id, "ann")]


@pytest.mark.parametrize(("user", "role"), [("tess", "trainer"), ("bob", "athlete")])
async def test_recent_sessions_of_someone_not_linked_are_denied(
        hub: RunningHub, connect: ConnectClient, user: str, role: str) -> None:
    await link(hub, "tom", "ann")
    ann, _ = await connect("ann")
    await start_session(ann)
    other, _ = await connect(user, role)

    error = await reply_error(other.rpc("sessions.recent", {"user_id": "ann"}))

    assert error.code == 103


async def test_recent_sessions_limit_must_be_an_integer_from_1_to_100(
        connect: ConnectClient) -> None:
    ann, _ = await connect("ann")
    for limit in (0, -1, 101, "5", 2.5, True, None):
        error = await reply_error(ann.rpc("sessions.recent", {"limit": limit}))
        assert error.code == 107 and "limit" in error.message, limit
    assert (await rpc(ann, "sessions.recent", {"limit": 100}))["sessions"] == []


# -- trainer.clients -------------------------------------------------------------------------


async def test_trainer_lists_clients_with_names_and_live_sessions(
        hub: RunningHub, connect: ConnectClient) -> None:
    async with hub.api() as api:
        for user_id, name in (("ann", "Ann Lee"), ("bob", "Bob Roe")):
            r = await api.put(f"/api/users/{user_id}", json={"name": name, "role": "athlete"})
            assert r.status_code == 200, r.text
    await link(hub, "tom", "ann")
    await link(hub, "tom", "bob")
    await link(hub, "tess", "cid")
    ann, _ = await connect("ann")
    live = await start_session(ann)
    bob, _ = await connect("bob")
    await rpc(bob, "session.end", {"session_id": await start_session(bob)})
    tom, _ = await connect("tom", "trainer")

    result = await rpc(tom, "trainer.clients")

    assert result == {"clients": [
        {"user_id": "ann", "name": "Ann Lee", "live_session_id": live},
        {"user_id": "bob", "name": "Bob Roe", "live_session_id": None},
    ]}


async def test_a_trainer_without_clients_gets_an_empty_list(connect: ConnectClient) -> None:
    tess, _ = await connect("tess", "trainer")
    assert await rpc(tess, "trainer.clients") == {"clients": []}


async def test_only_trainers_list_clients(connect: ConnectClient) -> None:
    ann, _ = await connect("ann")
    assert (await reply_error(ann.rpc("trainer.clients", {}))).code == 103


# -- protocol errors -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["session.pause", "coach.nonexistent", "SESSION.START"])
async def test_unknown_rpc_method_is_104(connect: ConnectClient, method: str) -> None:
    ann, _ = await connect("ann")
    assert (await reply_error(ann.rpc(method, {}))).code == 104


@pytest.mark.parametrize(("role", "method"), [
    ("athlete", "session.start"), ("athlete", "session.end"), ("athlete", "sessions.recent"),
    ("trainer", "trainer.clients"),
])
async def test_rpc_data_that_is_not_an_object_is_107(connect: ConnectClient, role: str,
                                                     method: str) -> None:
    client, _ = await connect("u1", role)
    for data in ([1, 2], "text", 7):
        assert (await reply_error(client.rpc(method, data))).code == 107, data
