"""Outbound back-pressure: a reader that falls behind is cut with 3008 while its queue stays
bounded, everybody else keeps receiving everything, and what backs up leaves in one frame."""

from __future__ import annotations

import asyncio

from hub.client import Client
from hub.writer import Writer
from tests.harness import Recorder, RunningHub, eventually
from tests.raw import (
    MakeHub,
    OpenRaw,
    OpenSdk,
    RawClient,
)

LIMIT = 256 * 1024
BIG = b'{"blob":"' + b"x" * 16000 + b'"}'


def only_client(hub: RunningHub, user: str) -> Client:
    [client] = hub.node.clients[user]
    return client


def waiting_bytes(client: Client) -> int:
    """What the connection holds for its socket: the writer's queue plus the transport's."""
    writer: Writer = client.transport.writer
    return writer._pending_bytes + writer._transport.get_write_buffer_size()


def metric(hub: RunningHub, name: str, **labels: str) -> float:
    return hub.node.metrics.registry.get_sample_value(name, labels) or 0.0


async def lagging_subscriber(raw: OpenRaw, hub: RunningHub, channel: str) -> RawClient:
    """A raw client with a tiny receive buffer that stops reading once subscribed."""
    client = await raw(hub, receive_buffer=4096, max_queue=1)
    await client.connect(hub.token("lag", "admin"))
    await client.call("subscribe", {"channel": channel})
    return client


async def test_a_reader_that_falls_behind_is_cut_3008_with_bounded_memory(
    make_hub: MakeHub, raw: OpenRaw, sdk: OpenSdk
) -> None:
    hub = await make_hub(write_buffer_bytes=LIMIT)
    normal, _ = await sdk(hub, hub.token("boss", "admin"))
    events = Recorder()
    sub = normal.new_subscription("session:flood", events=events)
    await sub.subscribe()
    await sub.ready(timeout=5)
    slow = await lagging_subscriber(raw, hub, "session:flood")
    slow_client = only_client(hub, "lag")

    published, most_waiting = 0, 0
    while "lag" in hub.node.clients:
        assert published < 2000, "the lagging reader was never cut"
        for _ in range(5):
            await hub.node.publish("session:flood", BIG)
            published += 1
            most_waiting = max(most_waiting, waiting_bytes(slow_client))
        await eventually(lambda n=published: len(events.named("publication")) == n)
    for _ in range(20):
        await hub.node.publish("session:flood", b'{"after":true}')
        published += 1
    await eventually(lambda: len(events.named("publication")) == published)

    assert 0 < most_waiting <= LIMIT
    assert [p.pub.offset for p in events.named("publication")] == list(range(1, published + 1))
    assert metric(hub, "fitsync_disconnects_total", code="3008") == 1
    assert metric(hub, "fitsync_dropped_messages_total") >= 1
    assert slow_client not in hub.node.clients.get("lag", {})
    assert all(s.client is not slow_client
               for s in hub.node.registry.subscribers("session:flood") or {})
    assert await slow.close_code() == 3008
    assert len(hub.node.clients["boss"]) == 1


async def test_pushes_queued_while_the_socket_is_backed_up_leave_in_one_frame(
    hub: RunningHub, raw: OpenRaw
) -> None:
    slow = await lagging_subscriber(raw, hub, "session:batch")
    writer: Writer = only_client(hub, "lag").transport.writer
    big = 0
    while not writer._paused:
        assert big < 500, "the socket never backed up"
        await hub.node.publish("session:batch", BIG)
        big += 1
        await asyncio.sleep(0)
    for n in range(1, 6):
        await hub.node.publish("session:batch", b'{"small":%d}' % n)
    assert len(writer._pending) == 5

    pubs = await slow.publications(big + 5)
    assert [p["offset"] for p in pubs] == list(range(1, big + 6))
    small_frames = [f for f in slow.frames if any("small" in str(m) for m in f)]
    assert len(small_frames) == 1
    assert [m["push"]["pub"]["data"] for m in small_frames[0]][-5:] == [
        {"small": n} for n in range(1, 6)]
    assert "lag" in hub.node.clients  # backed up, never over the limit


async def test_publications_in_one_loop_turn_share_a_frame(hub: RunningHub, raw: OpenRaw) -> None:
    client = await raw(hub)
    await client.connect(hub.token("boss", "admin"))
    await client.call("subscribe", {"channel": "session:turn"})
    client.frames.clear()
    for n in range(1, 4):
        await hub.node.publish("session:turn", b'{"n":%d}' % n)
    frame = await client.read_frame()
    assert [m["push"]["pub"]["offset"] for m in frame] == [1, 2, 3]
