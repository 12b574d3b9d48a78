"""Connecting: the ConnectResult, token checks, the first command, expiry and refresh, pings."""

from __future__ import annotations

import time
from typing import Any

import centrifuge
import jwt
import pytest

from tests.conftest import ConnectClient
from tests.harness import SECRET, RunningHub, eventually
from tests.raw import (
    MakeHub,
    OpenRaw,
    OpenSdk,
)

OTHER_SECRET = "another-secret-0123456789abcdef-0123"


def claims_token(secret: str = SECRET, **claims: Any) -> str:
    body = {"sub": "u1", "exp": int(time.time()) + 3600, **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, secret, algorithm="HS256")


# -- the connect reply -----------------------------------------------------------------------


async def test_connect_result_has_client_ping_pong_ttl_and_user_channel(
    hub: RunningHub, raw: OpenRaw
) -> None:
    client = await raw(hub)
    result = await client.connect(hub.token("u1", ttl=600))
    assert isinstance(result["client"], str) and result["client"]
    assert result["ping"] == 25
    assert result["pong"] is True
    assert result["expires"] is True
    assert 0 < result["ttl"] <= 600
    sub = result["subs"]["user:u1"]
    assert sub["recoverable"] is True and sub["positioned"] is True
    assert isinstance(sub["epoch"], str) and sub["epoch"]


async def test_sdk_connected_event_names_the_client_the_hub_registered(
    hub: RunningHub, connect: ConnectClient
) -> None:
    _, events = await connect("u1")
    connected = events.named("connected")
    assert len(connected) == 1
    assert [c.id for c in hub.node.clients["u1"]] == [connected[0].client]
    await eventually(lambda: events.named("subscribed"))
    assert [s.channel for s in events.named("subscribed")] == ["user:u1"]


# -- refused tokens --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(claims_token(secret=OTHER_SECRET), id="bad-signature"),
        pytest.param("not.a.jwt", id="garbage"),
        pytest.param("", id="empty"),
        pytest.param(claims_token(role="coach"), id="unknown-role"),
        pytest.param(claims_token(sub=None), id="missing-sub"),
        pytest.param(claims_token(exp=None), id="missing-exp"),
        pytest.param(claims_token(role="device"), id="device-without-device-id"),
    ],
)
async def test_invalid_token_closes_3500(hub: RunningHub, raw: OpenRaw, token: str) -> None:
    client = await raw(hub)
    await client.send({"id": 1, "connect": {"token": token}})
    assert await client.close_code() == 3500
    assert "u1" not in hub.node.clients


async def test_sdk_stops_for_good_on_an_invalid_token(hub: RunningHub, sdk: OpenSdk) -> None:
    client, events = await sdk(hub, claims_token(secret=OTHER_SECRET),
                               ready=False)
    await eventually(lambda: events.named("disconnected"))
    assert events.named("disconnected")[0].code == 3500
    assert client.state == centrifuge.ClientState.DISCONNECTED
    assert len(events.named("connecting")) == 1  # the initial one: no reconnect


async def test_expired_token_gets_error_109_and_the_socket_stays_open(
    hub: RunningHub, raw: OpenRaw
) -> None:
    client = await raw(hub)
    reply = await client.command("connect", {"token": hub.token("u1", ttl=-10)})
    assert reply["error"] == {"code": 109, "message": "token expired"}
    result = await client.connect(hub.token("u1"))
    assert result["client"]


async def test_sdk_fetches_a_fresh_token_after_109_and_connects(
    hub: RunningHub, sdk: OpenSdk
) -> None:
    calls: list[str] = []

    async def get_token() -> str:
        calls.append("connect")
        return hub.token("u1")

    client, events = await sdk(hub, hub.token("u1", ttl=-10), get_token=get_token,
                               min_reconnect_delay=0.05, ready=False)
    await client.ready(timeout=5)
    assert calls == ["connect"]
    assert [e.error.code for e in events.named("error")] == [109]
    assert len(events.named("connected")) == 1


# -- the first command -----------------------------------------------------------------------


@pytest.mark.parametrize("command", [
    {"id": 1, "subscribe": {"channel": "user:u1"}},
    {"id": 1, "rpc": {"method": "session.start", "data": {}}},
    {"id": 1, "refresh": {"token": "x"}},
])
async def test_a_first_command_other_than_connect_closes_3501(
    hub: RunningHub, raw: OpenRaw, command: dict[str, Any]
) -> None:
    client = await raw(hub)
    await client.send(command)
    assert await client.close_code() == 3501


async def test_connect_twice_closes_3501(hub: RunningHub, raw: OpenRaw) -> None:
    client = await raw(hub)
    await client.connect(hub.token("u1"))
    await client.send({"id": 2, "connect": {"token": hub.token("u1")}})
    assert await client.close_code() == 3501


async def test_no_connect_within_connect_timeout_closes_3502(
    make_hub: MakeHub, raw: OpenRaw
) -> None:
    hub = await make_hub(connect_timeout=0.3)
    client = await raw(hub)
    assert await client.close_code() == 3502


# -- token expiry and refresh ----------------------------------------------------------------


async def test_sdk_refreshes_an_expiring_token_and_stays_on_one_connection(
    make_hub: MakeHub, sdk: OpenSdk
) -> None:
    hub = await make_hub(expired_close_delay=0.5)
    refreshes: list[str] = []

    async def get_token() -> str:
        refreshes.append("refresh")
        return hub.token("u1", ttl=2)

    client, events = await sdk(hub, hub.token("u1", ttl=2), get_token=get_token)
    [first] = hub.node.clients["u1"]
    # Two refreshes take the connection past the first token's expiry plus the grace.
    await eventually(lambda: len(refreshes) >= 2, timeout=8)
    assert client.state == centrifuge.ClientState.CONNECTED
    assert len(events.named("connected")) == 1
    assert len(events.named("connecting")) == 1
    assert not events.named("disconnected")
    assert not events.named("error")
    assert list(hub.node.clients["u1"]) == [first]


async def test_a_client_that_never_refreshes_is_closed_3005(
    make_hub: MakeHub, raw: OpenRaw
) -> None:
    hub = await make_hub(expired_close_delay=0.2)
    client = await raw(hub)
    result = await client.connect(hub.token("u1", ttl=2))
    assert result["expires"] is True
    assert await client.close_code() == 3005


async def test_sdk_dropped_as_expired_reconnects_with_a_fresh_token(
    make_hub: MakeHub, sdk: OpenSdk
) -> None:
    hub = await make_hub(expired_close_delay=0.3)
    calls: list[str] = []

    async def get_token() -> str:
        calls.append("token")
        if len(calls) == 1:
            raise RuntimeError("token service unavailable")  # the refresh fails
        return hub.token("u1")

    _, events = await sdk(hub, hub.token("u1", ttl=2), get_token=get_token,
                          min_reconnect_delay=0.05)
    await eventually(lambda: len(events.named("connected")) == 2, timeout=8)
    assert [c.code for c in events.named("connecting")] == [0, 3005]
    assert [getattr(e.error, "code", None) for e in events.named("error")] == [None, 109]
    assert len(calls) == 2
    assert not events.named("disconnected")


async def test_pings_go_on_until_an_unrefreshed_token_closes_the_connection_3005(
    make_hub: MakeHub, raw: OpenRaw
) -> None:
    """A connection's ping cycle and its token's expiry share one timer: pings keep coming
    while the token is valid, and the close comes at expiry plus the grace, not later."""
    hub = await make_hub(ping_interval=0.3, pong_timeout=0.2, expired_close_delay=0.2)
    client = await raw(hub)
    await client.connect(hub.token("u1", ttl=2))
    opened = time.monotonic()
    while True:
        try:
            messages = await client.read_frame(timeout=5)
        except Exception:  # the close ends the reading
            break
        if any(not m for m in messages):
            await client.pong()
    assert client.ws.close_code == 3005
    assert client.pings >= 3
    assert time.monotonic() - opened < 4.5


async def test_a_refresh_moves_the_expiry_and_pings_go_on(make_hub: MakeHub, raw: OpenRaw) -> None:
    hub = await make_hub(ping_interval=0.3, pong_timeout=0.2, expired_close_delay=0.1)
    client = await raw(hub)
    await client.connect(hub.token("u1", ttl=1))
    await client.call("refresh", {"token": hub.token("u1", ttl=60)})
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        messages = await client.read_frame(timeout=2)
        if any(not m for m in messages):
            await client.pong()
    assert client.pings >= 5
    assert client.ws.close_code is None


async def test_refresh_answers_the_new_ttl(hub: RunningHub, raw: OpenRaw) -> None:
    client = await raw(hub)
    await client.connect(hub.token("u1", ttl=60))
    result = await client.call("refresh", {"token": hub.token("u1", ttl=900)})
    assert result["expires"] is True
    assert 60 < result["ttl"] <= 900


@pytest.mark.parametrize(
    ("token", "code"),
    [
        pytest.param(lambda hub: hub.token("u2"), 3500, id="another-user"),
        pytest.param(lambda hub: "garbage", 3500, id="garbage"),
        pytest.param(lambda hub: hub.token("u1", ttl=-10), 3005, id="expired"),
    ],
)
async def test_refresh_with_a_wrong_token_closes_the_connection(
    hub: RunningHub, raw: OpenRaw, token: Any, code: int
) -> None:
    client = await raw(hub)
    await client.connect(hub.token("u1"))
    await client.send({"id": 2, "refresh": {"token": token(hub)}})
    assert await client.close_code() == code


# -- ping / pong -----------------------------------------------------------------------------


async def test_sdk_answers_pings_and_stays_connected(make_hub: MakeHub, sdk: OpenSdk) -> None:
    hub = await make_hub(ping_interval=1.0, pong_timeout=0.5)
    client, events = await sdk(hub, hub.token("u1"), max_server_ping_delay=0.8)
    pings: list[None] = []
    handle_ping = client._handle_ping

    async def counting() -> None:
        pings.append(None)
        await handle_ping()

    client._handle_ping = counting  # type: ignore[method-assign]
    await eventually(lambda: len(pings) >= 3, timeout=6)
    assert client.state == centrifuge.ClientState.CONNECTED
    assert len(events.named("connected")) == 1
    assert len(events.named("connecting")) == 1
    assert len(hub.node.clients["u1"]) == 1


async def test_a_client_that_never_answers_pings_is_closed_3012(
    make_hub: MakeHub, raw: OpenRaw
) -> None:
    hub = await make_hub(ping_interval=1.0, pong_timeout=0.3)
    client = await raw(hub)
    await client.connect(hub.token("u1"))
    assert await client.close_code() == 3012
    assert client.pings >= 1


async def test_an_unsolicited_pong_is_ignored(hub: RunningHub, raw: OpenRaw) -> None:
    client = await raw(hub)
    await client.connect(hub.token("u1"))
    await client.pong()
    await client.send({}, {"id": 2, "history": {"channel": "user:u1", "limit": -1}})
    reply = await client.reply(2)
    assert reply["history"]["publications"] == []


async def test_a_sub_second_ping_interval_is_announced_as_a_whole_second(
    make_hub: MakeHub, raw: OpenRaw
) -> None:
    """centrifuge-js answers pings only when `ping` > 0, so it must never round down to 0."""
    hub = await make_hub(ping_interval=0.5, pong_timeout=0.3)
    client = await raw(hub)
    result = await client.connect(hub.token("u1"))
    assert result["ping"] == 1 and result["pong"] is True
