"""Limits and bad input: the frame size limit, malformed frames, the command rate limit, and
several commands batched in one frame. A misbehaving connection never disturbs the others."""

from __future__ import annotations

import asyncio
from typing import Any

import centrifuge
import pytest

from tests.conftest import ConnectClient
from tests.harness import RunningHub, eventually
from tests.raw import (
    MakeHub,
    OpenRaw,
    OpenSdk,
)

BAD_FRAMES = [
    pytest.param(b"\x00\xff\xfe garbage \x80", id="garbage-bytes"),
    pytest.param("{not json", id="invalid-json"),
    pytest.param("[1,2,3]", id="array"),
    pytest.param('"connect"', id="string"),
    pytest.param("42", id="number"),
    pytest.param("null", id="null"),
    pytest.param('{"id":1,"connect":{}}\n{broken', id="second-line-broken"),
]


# -- frame size --------------------------------------------------------------------------------


async def test_a_frame_over_max_frame_bytes_closes_1009(make_hub: MakeHub, raw: OpenRaw) -> None:
    hub = await make_hub(max_frame_bytes=1024)
    client = await raw(hub)
    await client.connect(hub.token("boss", "admin"))
    await client.send({"id": 2, "publish": {"channel": "session:s1", "data": {"x": "y" * 1100}}})
    assert await client.close_code() == 1009


async def test_a_fragmented_message_over_the_limit_closes_1009(
    make_hub: MakeHub, raw: OpenRaw
) -> None:
    hub = await make_hub(max_frame_bytes=1024)
    client = await raw(hub)
    await client.connect(hub.token("u1"))
    await client.ws.send(['{"id":2,"rpc":{"method":"x","data":"', "y" * 600, "z" * 600, '"}}'])
    assert await client.close_code() == 1009


async def test_a_frame_within_max_frame_bytes_is_served(make_hub: MakeHub, raw: OpenRaw) -> None:
    hub = await make_hub(max_frame_bytes=1024)
    client = await raw(hub)
    await client.connect(hub.token("u1"))
    reply = await client.command("rpc", {"method": "no.such", "data": {"x": "y" * 900}})
    assert reply["error"]["code"] == 104


# -- malformed frames ----------------------------------------------------------------------------


@pytest.mark.parametrize("frame", BAD_FRAMES)
async def test_a_malformed_frame_closes_3501(
    hub: RunningHub, raw: OpenRaw, frame: str | bytes
) -> None:
    client = await raw(hub)
    await client.send_raw(frame)
    assert await client.close_code() == 3501


@pytest.mark.parametrize("frame", BAD_FRAMES)
async def test_a_malformed_frame_after_connect_closes_3501(
    hub: RunningHub, raw: OpenRaw, frame: str | bytes
) -> None:
    client = await raw(hub)
    await client.connect(hub.token("u1"))
    await client.send_raw(frame)
    assert await client.close_code() == 3501
    await eventually(lambda: "u1" not in hub.node.clients)


async def test_bad_input_on_other_connections_never_disturbs_a_subscriber(
    hub: RunningHub, raw: OpenRaw, connect: ConnectClient
) -> None:
    _, events = await connect("u1")
    published = 0

    async def publish(count: int) -> None:
        nonlocal published
        for _ in range(count):
            published += 1
            await hub.node.publish("user:u1", b'{"n":%d}' % published)
            await asyncio.sleep(0.001)

    async def misbehave(frame: str | bytes, connected: bool) -> int | None:
        client = await raw(hub)
        if connected:
            await client.connect(hub.token("u2"))
        await client.send_raw(frame)
        return await client.close_code()

    frames = [p.values[0] for p in BAD_FRAMES]
    during = asyncio.gather(*(misbehave(f, i % 2 == 0) for i, f in enumerate(frames)))
    codes, _ = await asyncio.gather(during, publish(100))
    assert codes == [3501] * len(frames)
    await publish(20)
    await eventually(lambda: len(events.publications()) >= 120)
    assert events.publications() == [{"n": n} for n in range(1, 121)]
    assert [p.pub.offset for p in events.named("publication")] == list(range(1, 121))
    assert len(events.named("connected")) == 1


# -- command rate ------------------------------------------------------------------------------


async def test_commands_over_the_rate_get_error_111_and_the_connection_goes_on(
    make_hub: MakeHub, sdk: OpenSdk
) -> None:
    hub = await make_hub(commands_per_second=5)
    client, events = await sdk(hub, hub.token("u1"))
    outcomes = await asyncio.gather(*(client.history("user:u1") for _ in range(20)),
                                    return_exceptions=True)
    refused = [o for o in outcomes if isinstance(o, centrifuge.ReplyError)]
    served = [o for o in outcomes if isinstance(o, centrifuge.HistoryResult)]
    assert len(refused) + len(served) == 20
    assert refused and served
    assert {(e.code, e.temporary) for e in refused} == {(111, True)}
    await asyncio.sleep(0.5)  # the bucket refills
    assert (await client.history("user:u1")).epoch
    assert client.state == centrifuge.ClientState.CONNECTED
    assert len(events.named("connected")) == 1 and not events.named("disconnected")


async def test_pongs_are_not_rate_limited(make_hub: MakeHub, raw: OpenRaw) -> None:
    hub = await make_hub(commands_per_second=2)
    client = await raw(hub)
    await client.connect(hub.token("u1"))
    await client.send(*[{}] * 50)
    await asyncio.sleep(0.5)
    assert (await client.call("history", {"channel": "user:u1"}))["epoch"]


# -- batched commands ----------------------------------------------------------------------------


async def test_commands_in_one_frame_are_answered_in_order(hub: RunningHub, raw: OpenRaw) -> None:
    client = await raw(hub)
    await client.send(
        {"id": 1, "connect": {"token": hub.token("boss", "admin")}},
        {"id": 2, "subscribe": {"channel": "session:b1"}},
        {"id": 3, "subscribe": {"channel": "chat:1"}},
        {"id": 4, "presence_stats": {"channel": "session:b1"}},
        {"id": 5, "unsubscribe": {"channel": "session:b1"}},
        {"id": 6, "history": {"channel": "session:b1", "limit": -1}},
        {"id": 7, "rpc": {"method": "no.such", "data": {}}},
    )
    while len(client.replies) < 7:
        await client.read_frame()
    order = [m["id"] for frame in client.frames for m in frame if m.get("id")]
    assert order == [1, 2, 3, 4, 5, 6, 7]
    assert client.replies[3]["error"]["code"] == 102
    assert client.replies[4]["presence_stats"] == {"num_clients": 1, "num_users": 1}
    assert client.replies[5]["unsubscribe"] == {}
    assert client.replies[7]["error"]["code"] == 104


async def test_a_trailing_newline_and_blank_lines_in_a_frame_are_tolerated(
    hub: RunningHub, raw: OpenRaw
) -> None:
    client = await raw(hub)
    token = hub.token("u1")
    await client.send_raw(f'{{"id":1,"connect":{{"token":"{token}"}}}}\n\n'
                          '{"id":2,"history":{"channel":"user:u1"}}\n')
    assert (await client.reply(2))["history"]["epoch"]


# -- wrongly typed fields ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        pytest.param({"id": 2, "history": {"channel": "user:boss", "limit": "all"}},
                     id="history-limit-string"),
        pytest.param({"id": 2, "history": {"channel": "user:boss", "limit": 1.5}},
                     id="history-limit-float"),
        pytest.param({"id": 2, "history": {"channel": "user:boss", "since": 5}},
                     id="history-since-number"),
        pytest.param({"id": 2, "history": {"channel": "user:boss",
                                           "since": {"offset": "x", "epoch": "e"}}},
                     id="history-since-offset-string"),
        pytest.param({"id": 2, "subscribe": {"channel": "session:s1", "recover": True,
                                             "offset": "x"}}, id="subscribe-offset-string"),
        pytest.param({"id": 2, "subscribe": {"channel": "session:s1", "recover": True,
                                             "offset": [1]}}, id="subscribe-offset-list"),
        pytest.param({"id": True, "history": {"channel": "user:boss"}}, id="id-boolean"),
        pytest.param({"id": "2", "history": {"channel": "user:boss"}}, id="id-string"),
    ],
)
async def test_a_wrongly_typed_field_closes_3501_instead_of_a_retryable_error(
    hub: RunningHub, raw: OpenRaw, command: dict[str, Any]
) -> None:
    client = await raw(hub)
    await client.connect(hub.token("boss", "admin"))
    await client.send(command)
    assert await client.close_code() == 3501
    assert not client.replies


@pytest.mark.parametrize("subs", [["user:u1"], {"user:u1": [1]}, {"user:u1": {"offset": "1",
                                                                            "recover": True}}])
async def test_wrongly_typed_connect_subs_close_3501(
    hub: RunningHub, raw: OpenRaw, subs: Any
) -> None:
    client = await raw(hub)
    await client.send({"id": 1, "connect": {"token": hub.token("u1"), "subs": subs}})
    assert await client.close_code() == 3501
    assert not client.replies
    await eventually(lambda: "u1" not in hub.node.clients)
