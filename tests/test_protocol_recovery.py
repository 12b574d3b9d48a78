"""Stream positions and recovery: missed publications come back exactly once and in order,
a position the hub can no longer serve is reported as such, and the SDK recovers on its own."""

from __future__ import annotations

import asyncio
from typing import Any

import centrifuge
import pytest

from hub.protocol.codes import DisconnectCode
from tests.conftest import ConnectClient
from tests.harness import Recorder, RunningHub, eventually
from tests.raw import (
    OpenRaw,
    OpenSdk,
    RawClient,
)


async def admin(raw: OpenRaw, hub: RunningHub) -> RawClient:
    client = await raw(hub)
    await client.connect(hub.token("boss", "admin"))
    return client


async def publish_http(hub: RunningHub, channel: str, values: range) -> list[int]:
    """Publish `{"n": v}` for each value through the HTTP API; returns the offsets."""
    offsets = []
    async with hub.api() as api:
        for value in values:
            r = await api.post("/api/publish", json={"channel": channel, "data": {"n": value}})
            assert r.status_code == 200, r.text
            offsets.append(r.json()["offset"])
    return offsets


async def test_recovery_returns_exactly_the_missed_publications_then_live_ones(
    hub: RunningHub, raw: OpenRaw
) -> None:
    first = await admin(raw, hub)
    result = await first.call("subscribe", {"channel": "session:r1", "recoverable": True})
    assert result["recoverable"] is True and result["positioned"] is True
    epoch = result["epoch"]
    assert result.get("offset", 0) == 0
    assert await publish_http(hub, "session:r1", range(1, 4)) == [1, 2, 3]
    seen = await first.publications(3)
    assert [p["offset"] for p in seen] == [1, 2, 3]
    await first.close()

    await publish_http(hub, "session:r1", range(4, 7))
    second = await admin(raw, hub)
    result = await second.call("subscribe", {"channel": "session:r1", "recover": True,
                                             "epoch": epoch, "offset": 3})
    assert result["recovered"] is True and result["was_recovering"] is True
    assert result["epoch"] == epoch
    assert [(p["offset"], p["data"]) for p in result["publications"]] == [
        (4, {"n": 4}), (5, {"n": 5}), (6, {"n": 6})]

    await publish_http(hub, "session:r1", range(7, 9))
    live = await second.publications(2)
    assert [(p["offset"], p["data"]) for p in live] == [(7, {"n": 7}), (8, {"n": 8})]
    assert [p["pub"]["offset"] for p in second.seen if "pub" in p] == [7, 8]


async def test_publications_racing_a_recovering_subscribe_arrive_once_without_gap(
    hub: RunningHub, raw: OpenRaw, connect: ConnectClient
) -> None:
    owner, _ = await connect("a1")
    channel = (await owner.rpc("session.start", {})).data["channel"]  # offset 1: started
    epoch = (await hub.node.history(channel, None, 0, False))["epoch"]
    for n in range(2, 6):
        await hub.node.publish(channel, b'{"n":%d}' % n)

    async def flood() -> None:
        for n in range(6, 60):
            await hub.node.publish(channel, b'{"n":%d}' % n)
            await asyncio.sleep(0)

    client = await raw(hub)
    await client.connect(hub.token("a1"))
    publisher = asyncio.create_task(flood())
    result = await client.call("subscribe", {"channel": channel, "recover": True,
                                             "epoch": epoch, "offset": 2})
    await publisher
    assert result["recovered"] is True
    recovered = [p["offset"] for p in result["publications"]]
    assert recovered[0] == 3
    live = [p["offset"] for p in await client.publications(59 - recovered[-1])]
    assert recovered + live == list(range(3, 60))


async def test_sdk_recovers_after_the_server_drops_it_with_a_reconnect_code(
    hub: RunningHub, sdk: OpenSdk
) -> None:
    client, events = await sdk(hub, hub.token("boss", "admin"), min_reconnect_delay=0.3,
                               max_reconnect_delay=0.5)
    sub_events = Recorder()
    sub = client.new_subscription("session:r2", events=sub_events, recoverable=True)
    await sub.subscribe()
    await sub.ready(timeout=5)
    await eventually(lambda: events.named("subscribed"))  # user:boss, server-side
    for n in (1, 2):
        await hub.node.publish("session:r2", b'{"n":%d}' % n)
    await hub.node.publish("user:boss", b'{"u":1}')
    await eventually(lambda: len(sub_events.publications()) == 2 and events.publications())

    [server_side] = hub.node.clients["boss"]
    server_side.close(DisconnectCode.FORCE_RECONNECT)
    await eventually(lambda: len(events.named("connecting")) == 2)
    assert events.named("connecting")[1].code == 3011
    for n in (3, 4, 5):
        await hub.node.publish("session:r2", b'{"n":%d}' % n)
    for n in (2, 3):
        await hub.node.publish("user:boss", b'{"u":%d}' % n)

    await eventually(lambda: len(events.named("connected")) == 2)
    await sub.ready(timeout=5)
    await hub.node.publish("session:r2", b'{"n":6}')
    await hub.node.publish("user:boss", b'{"u":4}')
    await eventually(lambda: len(sub_events.publications()) >= 6
                     and len(events.publications()) >= 4)

    assert sub_events.publications() == [{"n": n} for n in range(1, 7)]
    assert [p.pub.offset for p in sub_events.named("publication")] == list(range(1, 7))
    resubscribed = sub_events.named("subscribed")[1]
    assert resubscribed.was_recovering is True and resubscribed.recovered is True
    assert events.publications() == [{"u": n} for n in range(1, 5)]
    server_resubscribed = events.named("subscribed")[1]
    assert server_resubscribed.channel == "user:boss"
    assert server_resubscribed.was_recovering is True and server_resubscribed.recovered is True
    assert len(hub.node.clients["boss"]) == 1


async def test_server_side_channel_recovers_through_connect_subs(
    hub: RunningHub, raw: OpenRaw
) -> None:
    first = await raw(hub)
    epoch = (await first.connect(hub.token("u1")))["subs"]["user:u1"]["epoch"]
    await first.close()
    await publish_http(hub, "user:u1", range(1, 3))
    second = await raw(hub)
    result = await second.connect(hub.token("u1"), subs={
        "user:u1": {"recover": True, "epoch": epoch, "offset": 0}})
    sub = result["subs"]["user:u1"]
    assert sub["recovered"] is True
    assert [(p["offset"], p["data"]) for p in sub["publications"]] == [(1, {"n": 1}), (2, {"n": 2})]


async def test_an_offset_older_than_retained_history_is_not_recovered(
    hub: RunningHub, raw: OpenRaw
) -> None:
    first = await raw(hub)
    epoch = (await first.connect(hub.token("u1")))["subs"]["user:u1"]["epoch"]
    await first.close()
    for n in range(1, 103):  # user: channels retain 100
        await hub.node.publish("user:u1", b'{"n":%d}' % n)
    second = await raw(hub)
    result = await second.connect(hub.token("u1"), subs={
        "user:u1": {"recover": True, "epoch": epoch, "offset": 1}})
    sub = result["subs"]["user:u1"]
    assert sub["was_recovering"] is True
    assert not sub.get("recovered")
    assert "publications" not in sub
    assert (sub["epoch"], sub["offset"]) == (epoch, 102)


async def test_another_epoch_is_not_recovered(hub: RunningHub, raw: OpenRaw) -> None:
    await hub.node.publish("session:r3", b'{"n":1}')
    client = await admin(raw, hub)
    result = await client.call("subscribe", {"channel": "session:r3", "recover": True,
                                             "epoch": "stale", "offset": 0})
    assert result["was_recovering"] is True
    assert not result.get("recovered")
    assert "publications" not in result
    current = await hub.node.history("session:r3", None, 0, False)
    assert (result["epoch"], result["offset"]) == (current["epoch"], 1)


async def test_an_offset_ahead_of_the_stream_is_not_recovered(
    hub: RunningHub, raw: OpenRaw
) -> None:
    await hub.node.publish("session:r4", b'{"n":1}')
    epoch = (await hub.node.history("session:r4", None, 0, False))["epoch"]
    client = await admin(raw, hub)
    result = await client.call("subscribe", {"channel": "session:r4", "recover": True,
                                             "epoch": epoch, "offset": 5})
    assert not result.get("recovered")
    assert result["offset"] == 1


@pytest.mark.parametrize("position", [{"epoch": "stale", "offset": 0}, {"offset": 1}])
async def test_reject_unrecovered_flag_turns_failed_recovery_into_error_112(
    hub: RunningHub, raw: OpenRaw, position: dict[str, Any]
) -> None:
    for n in range(1, 4):
        await hub.node.publish("trainer:t9", b'{"n":%d}' % n)
    client = await admin(raw, hub)
    reply = await client.command("subscribe", {"channel": "trainer:t9", "recover": True,
                                               "flag": 3, **position})
    assert reply["error"] == {"code": 112, "message": "unrecoverable position"}
    result = await client.call("subscribe", {"channel": "trainer:t9"})
    assert result["offset"] == 3


async def test_sdk_with_get_state_reloads_after_error_112(
    hub: RunningHub, connect: ConnectClient
) -> None:
    for n in range(1, 3):
        await hub.node.publish("session:r5", b'{"n":%d}' % n)
    client, _ = await connect("boss", "admin")
    calls: list[centrifuge.StreamPosition] = []

    async def get_state(channel: str) -> centrifuge.StreamPosition:
        if not calls:
            position = centrifuge.StreamPosition(offset=0, epoch="stale")
        else:
            top = await hub.node.history(channel, None, 0, False)
            position = centrifuge.StreamPosition(offset=top["offset"], epoch=top["epoch"])
        calls.append(position)
        return position

    events = Recorder()
    sub = client.new_subscription("session:r5", events=events, get_state=get_state,
                                  min_resubscribe_delay=0.05)
    await sub.subscribe()
    await sub.ready(timeout=5)
    assert len(calls) == 2 and calls[1].offset == 2
    assert events.named("subscribed")[0].recovered is True
    await hub.node.publish("session:r5", b'{"n":3}')
    await eventually(lambda: events.publications())
    assert [p.pub.offset for p in events.named("publication")] == [3]


async def test_history_with_a_stale_epoch_is_error_112(
    hub: RunningHub, connect: ConnectClient
) -> None:
    client, _ = await connect("u1")
    await hub.node.publish("user:u1", b'{"n":1}')
    with pytest.raises(centrifuge.ReplyError) as refused:
        await client.history("user:u1", since=centrifuge.StreamPosition(0, "stale"))
    assert refused.value.code == 112


async def test_history_since_a_position_returns_what_follows_it(
    hub: RunningHub, connect: ConnectClient
) -> None:
    client, _ = await connect("u1")
    for n in range(1, 6):
        await hub.node.publish("user:u1", b'{"n":%d}' % n)
    top = await client.history("user:u1")
    assert top.publications == [] and top.offset == 5
    after = await client.history("user:u1", limit=-1,
                                 since=centrifuge.StreamPosition(2, top.epoch))
    assert [p.offset for p in after.publications] == [3, 4, 5]
    assert [p.data for p in after.publications] == [{"n": 3}, {"n": 4}, {"n": 5}]
    newest = await client.history("user:u1", limit=2, reverse=True)
    assert [p.offset for p in newest.publications] == [5, 4]
