"""The server-to-server HTTP API and the public probes, as the app's backend and a load
balancer use them."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.app_helpers import (
    a_set,
    connection_switch,
    link,
    reply_error,
    rpc,
    start_session,
    subscribe,
)
from tests.conftest import ConnectClient
from tests.harness import API_KEY, RunningHub, eventually

MakeHub = Callable[..., Any]


def assert_error(response: httpx.Response, status: int) -> str:
    """The documented error body; returns its message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == status
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return str(body["error"]["message"])


# -- the API key -----------------------------------------------------------------------------


@pytest.mark.parametrize("authorization", [
    None, "apikey wrong-key", f"Bearer {API_KEY}", "apikey", f"apikey {API_KEY}x",
    b"apikey \xe9t\xe9",
])
async def test_requests_without_the_right_api_key_are_401(hub: RunningHub,
                                                          authorization: Any) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with httpx.AsyncClient(base_url=hub.http_url, headers=headers) as api:
        for method, path in (("POST", "/api/publish"), ("PUT", "/api/users/ann"),
                             ("GET", "/api/sessions/x"), ("GET", "/api/users/ann/sessions"),
                             ("PUT", "/api/trainers/tom/clients/ann"),
                             ("GET", "/api/channels/user:ann/history"),
                             ("POST", "/api/disconnect")):
            r = await api.request(method, path, json={"channel": "user:ann", "data": {}})
            assert_error(r, 401)


async def test_the_api_scheme_is_case_insensitive(hub: RunningHub) -> None:
    headers = {"Authorization": f"ApiKey {API_KEY}"}
    async with httpx.AsyncClient(base_url=hub.http_url, headers=headers) as api:
        r = await api.post("/api/publish", json={"channel": "user:ann", "data": {}})
    assert r.status_code == 200, r.text


async def test_the_api_is_off_without_a_configured_key(make_hub: MakeHub) -> None:
    hub = await make_hub(api_key=None)
    async with hub.api() as api:
        r = await api.post("/api/publish", json={"channel": "user:ann", "data": {}})
        message = assert_error(r, 401)
        assert "HUB_API_KEY" in message
        assert (await api.get("/healthz")).status_code == 200


# -- publish ---------------------------------------------------------------------------------


async def test_publish_returns_offset_and_epoch_and_reaches_subscribers(
        hub: RunningHub, connect: ConnectClient) -> None:
    _, events = await connect("ann")
    await eventually(lambda: events.named("subscribed"))
    async with hub.api() as api:
        first = await api.post("/api/publish", json={"channel": "user:ann",
                                                     "data": {"type": "notification", "n": 1}})
        second = await api.post("/api/publish", json={"channel": "user:ann",
                                                      "data": {"type": "notification", "n": 2}})
    assert first.status_code == second.status_code == 200
    assert set(first.json()) == {"offset", "epoch"}
    assert first.json()["offset"] >= 1 and first.json()["epoch"]
    assert second.json() == {"offset": first.json()["offset"] + 1,
                             "epoch": first.json()["epoch"]}
    await eventually(lambda: len(events.publications()) == 2)
    assert [p["n"] for p in events.publications()] == [1, 2]


@pytest.mark.parametrize("body", [
    b"not json", b"", b"[1, 2]", b'"user:ann"', b'{"data": {}}', b'{"channel": "", "data": {}}',
    b'{"channel": 7, "data": {}}', b'{"channel": "user:ann"}',
])
async def test_publish_with_a_bad_body_is_400(hub: RunningHub, body: bytes) -> None:
    async with hub.api() as api:
        r = await api.post("/api/publish", content=body,
                           headers={"Content-Type": "application/json"})
    assert_error(r, 400)


@pytest.mark.parametrize("channel", ["chat:ann", "ann", "user:", "session"])
async def test_publish_into_an_unknown_namespace_is_404(hub: RunningHub, channel: str) -> None:
    async with hub.api() as api:
        r = await api.post("/api/publish", json={"channel": channel, "data": {}})
    assert_error(r, 404)


# -- users and links -------------------------------------------------------------------------


async def test_put_user_creates_then_updates(hub: RunningHub, connect: ConnectClient) -> None:
    async with hub.api() as api:
        created = await api.put("/api/users/ann", json={"name": "Ann", "role": "athlete"})
        updated = await api.put("/api/users/ann", json={"name": "Ann Lee", "role": "athlete"})
    assert created.status_code == updated.status_code == 200
    assert created.json() == {"user_id": "ann", "name": "Ann", "role": "athlete"}
    assert updated.json() == {"user_id": "ann", "name": "Ann Lee", "role": "athlete"}
    await link(hub, "tom", "ann")
    tom, _ = await connect("tom", "trainer")
    assert (await rpc(tom, "trainer.clients"))["clients"][0]["name"] == "Ann Lee"


@pytest.mark.parametrize("body", [
    {"name": "Ann", "role": "coach"}, {"name": "Ann", "role": ""}, {"name": 7},
    {"name": "x" * 201}, [],
])
async def test_put_user_with_a_bad_value_is_400(hub: RunningHub, body: Any) -> None:
    async with hub.api() as api:
        r = await api.put("/api/users/ann", json=body)
    assert_error(r, 400)


async def test_links_are_added_and_removed(hub: RunningHub, connect: ConnectClient) -> None:
    tom, _ = await connect("tom", "trainer")
    async with hub.api() as api:
        added = await api.put("/api/trainers/tom/clients/ann")
        again = await api.put("/api/trainers/tom/clients/ann")
        assert added.status_code == again.status_code == 200, added.text
        assert added.json() == {"trainer_id": "tom", "client_id": "ann"}
        assert [c["user_id"] for c in (await rpc(tom, "trainer.clients"))["clients"]] == ["ann"]

        removed = await api.delete("/api/trainers/tom/clients/ann")
        assert removed.status_code == 200, removed.text
        assert removed.json() == {"trainer_id": "tom", "client_id": "ann", "removed": True}
        assert (await rpc(tom, "trainer.clients"))["clients"] == []

        assert_error(await api.delete("/api/trainers/tom/clients/ann"), 404)
        assert_error(await api.delete("/api/trainers/tom/clients/nobody"), 404)


# -- sessions --------------------------------------------------------------------------------


async def test_get_session_returns_it_with_its_sets(hub: RunningHub,
                                                    connect: ConnectClient) -> None:
    watch, _ = await connect("ann", "device", device="ann-watch")
    session_id = await start_session(watch, "Legs")
    await watch.publish(f"session:{session_id}", a_set("s1", reps=5, weight_kg=100, rpe=9))
    await watch.publish(f"session:{session_id}", {"type": "hr", "event_id": "h1",
                                                  "samples": [[1, 150]]})
    async with hub.api() as api:
        r = await api.get(f"/api/sessions/{session_id}")
        missing = await api.get("/api/sessions/no-such-session")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["session_id"], body["user_id"], body["title"], body["status"]) == (
        session_id, "ann", "Legs", "active")
    assert body["summary"]["sets"] == 1 and body["summary"]["max_bpm"] == 150
    [stored] = body["sets"]
    assert {k: stored[k] for k in ("type", "event_id", "exercise", "reps", "weight_kg", "rpe",
                                   "user", "device")} == {
        "type": "set", "event_id": "s1", "exercise": "squat", "reps": 5, "weight_kg": 100,
        "rpe": 9, "user": "ann", "device": "ann-watch"}
    assert_error(missing, 404)


async def test_get_user_sessions_lists_them_newest_first(hub: RunningHub,
                                                         connect: ConnectClient) -> None:
    ann, _ = await connect("ann")
    first = await start_session(ann)
    await rpc(ann, "session.end", {"session_id": first})
    second = await start_session(ann)
    async with hub.api() as api:
        r = await api.get("/api/users/ann/sessions")
        limited = await api.get("/api/users/ann/sessions", params={"limit": 1})
        assert_error(await api.get("/api/users/nobody/sessions"), 404)
        assert (await api.put("/api/users/newbie", json={"name": "New"})).status_code == 200
        newbie = await api.get("/api/users/newbie/sessions")
        for bad in ("0", "101", "ten"):
            assert_error(await api.get("/api/users/ann/sessions", params={"limit": bad}), 400)
    assert r.status_code == 200, r.text
    assert [(s["session_id"], s["status"]) for s in r.json()["sessions"]] == [
        (second, "active"), (first, "ended")]
    assert [s["session_id"] for s in limited.json()["sessions"]] == [second]
    assert newbie.json() == {"sessions": []}


# -- presence and history --------------------------------------------------------------------


async def test_presence_lists_the_clients_on_a_session_channel(
        hub: RunningHub, connect: ConnectClient) -> None:
    await link(hub, "tom", "ann")
    ann, ann_events = await connect("ann")
    session_id = await start_session(ann)
    channel = f"session:{session_id}"
    tom, tom_events = await connect("tom", "trainer")
    for client in (ann, tom):
        await subscribe(client, channel)
    ids = {ann_events.named("connected")[0].client: "ann",
           tom_events.named("connected")[0].client: "tom"}

    async with hub.api() as api:
        r = await api.get(f"/api/channels/{channel}/presence")
        unknown = await api.get("/api/channels/chat:x/presence")

    assert r.status_code == 200, r.text
    assert r.json() == {"presence": {cid: {"user": user, "client": cid}
                                     for cid, user in ids.items()}}
    assert_error(unknown, 404)


async def test_history_returns_publications_with_offsets_and_the_stream_position(
        hub: RunningHub) -> None:
    async with hub.api() as api:
        positions = [(await api.post("/api/publish", json={
            "channel": "user:ann", "data": {"type": "notification", "n": n}})).json()
            for n in range(3)]
        r = await api.get("/api/channels/user:ann/history")
        limited = await api.get("/api/channels/user:ann/history", params={"limit": 1})
        empty = await api.get("/api/channels/user:nobody/history")
        unknown = await api.get("/api/channels/chat:x/history")
        bad = await api.get("/api/channels/user:ann/history", params={"limit": "many"})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "publications": [{"data": {"type": "notification", "n": n}, "offset": p["offset"]}
                         for n, p in enumerate(positions)],
        "epoch": positions[-1]["epoch"],
        "offset": positions[-1]["offset"],
    }
    assert [p["offset"] for p in limited.json()["publications"]] == [positions[0]["offset"]]
    assert empty.status_code == 200 and empty.json()["publications"] == []
    assert_error(unknown, 404)
    assert_error(bad, 400)


# -- disconnect ------------------------------------------------------------------------------


async def test_disconnect_closes_every_connection_of_that_user_only(
        hub: RunningHub, connect: ConnectClient) -> None:
    _, phone = await connect("ann")
    _, watch = await connect("ann", "device", device="ann-watch")
    _, bob = await connect("bob")
    async with hub.api() as api:
        r = await api.post("/api/disconnect", json={"user": "ann"})
        assert_error(await api.post("/api/disconnect", json={}), 400)
    assert r.status_code == 200, r.text
    assert r.json() == {}
    for events in (phone, watch):
        gone = await eventually(lambda events=events: events.named("disconnected"))
        assert gone[0].code == 3503
    assert not bob.named("disconnected")


# -- probes and metrics ----------------------------------------------------------------------


async def test_healthz_and_readyz_answer_without_a_key(hub: RunningHub) -> None:
    async with httpx.AsyncClient(base_url=hub.http_url) as probe:
        health = await probe.get("/healthz")
        ready = await probe.get("/readyz")
    assert health.status_code == 200
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_readyz_is_503_naming_the_database_while_it_is_unreachable(
        database_url: str, make_hub: MakeHub) -> None:
    hub = await make_hub(database_url=database_url)
    async with httpx.AsyncClient(base_url=hub.http_url) as probe, \
            connection_switch(database_url) as allow:
        await allow(False)
        down = await probe.get("/readyz")
        await allow(True)
        up = await probe.get("/readyz")
    assert down.status_code == 503, down.text
    assert down.json()["status"] == "unavailable"
    assert down.json()["checks"]["broker"] == "ok"
    assert down.json()["checks"]["database"].startswith("unavailable")
    assert up.status_code == 200, up.text


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value from the Prometheus exposition; 0 when the series is absent."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "")
    found = re.search(r"^" + pattern + r" (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_metrics_count_connections_subscriptions_publications_and_commands(
        hub: RunningHub, connect: ConnectClient) -> None:
    ann, events = await connect("ann")
    await eventually(lambda: events.named("subscribed"))
    session_id = await start_session(ann)
    _, seen = await subscribe(ann, f"session:{session_id}")
    await ann.publish(f"session:{session_id}", a_set("s1"))
    await eventually(lambda: seen.publications())
    await connect("tom", "trainer")
    assert (await reply_error(ann.rpc("no.such.method", {}))).code == 104

    async with httpx.AsyncClient(base_url=hub.http_url) as probe:
        r = await probe.get("/metrics")
    assert r.status_code == 200
    text = r.text
    assert metric(text, "fitsync_connections") == 2
    assert metric(text, "fitsync_subscriptions") == 3  # two user channels and one session
    assert metric(text, "fitsync_publications_total") >= 1
    assert metric(text, "fitsync_deliveries_total") >= 1
    assert metric(text, "fitsync_commands_total", method="connect", result="ok") == 2
    assert metric(text, "fitsync_commands_total", method="publish", result="ok") == 1
    assert metric(text, "fitsync_commands_total", method="rpc", result="ok") == 1
    assert metric(text, "fitsync_commands_total", method="rpc", result="error_104") == 1
