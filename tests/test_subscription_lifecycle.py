"""A subscription's life on a node whose broker suspends: presence that lasts as long as the
subscription, one broker subscription per channel, and clients that vanish mid-subscribe.

Hubs here run on `YieldingMemoryBroker`, which suspends at every call like a networked broker
(with chosen calls made slow to hold a race's window open), so these races are exercised."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hub.broker.base import HistoryOptions, Publication, StreamPosition
from hub.broker.memory import MemoryBroker
from hub.continuity import Continuity
from hub.metrics import Metrics
from tests.broker.yielding import YieldingMemoryBroker
from tests.conftest import ConnectClient
from tests.harness import RunningHub, eventually
from tests.multinode import subscribed
from tests.raw import MakeHub, OpenRaw


async def session_of(hub: RunningHub, connect: ConnectClient, athlete: str) -> str:
    client, _ = await connect(athlete, target=hub)
    result = await client.rpc("session.start", {"title": "legs"})
    return str(result.data["channel"])


async def presence_of(hub: RunningHub, channel: str) -> set[str]:
    async with hub.api() as api:
        r = await api.get(f"/api/channels/{channel}/presence")
    assert r.status_code == 200, r.text
    return set(r.json()["presence"])


def gauge(hub: RunningHub, name: str) -> float:
    value = hub.node.metrics.registry.get_sample_value(name)
    assert value is not None
    return value


# -- presence lives as long as the subscription --------------------------------------------------


async def test_presence_outlives_its_ttl_while_the_client_stays_subscribed(
    make_hub: MakeHub, connect: ConnectClient,
) -> None:
    hub = await make_hub(presence_ttl=1.5)
    channel = await session_of(hub, connect, "ann")
    watcher, _ = await connect("boss", "admin", target=hub)
    await subscribed(watcher, channel)
    assert watcher.client_id in await presence_of(hub, channel)

    await asyncio.sleep(4.5)  # three TTLs: an entry added once and never refreshed is gone

    assert watcher.client_id in await presence_of(hub, channel)


async def test_presence_refresh_is_one_batched_call_per_interval(
    make_hub: MakeHub, connect: ConnectClient,
) -> None:
    broker = _BatchCounting()
    hub = await make_hub(presence_ttl=0.9, broker=broker)
    channel = await session_of(hub, connect, "ann")
    for n in range(5):
        client, _ = await connect(f"admin{n}", "admin", target=hub)
        await subscribed(client, channel)

    await eventually(lambda: any(len(batch) == 5 for batch in broker.batches), timeout=10)

    assert all(len(batch) <= 5 for batch in broker.batches)
    assert all({entry[0] for entry in batch} == {channel} for batch in broker.batches)


class _BatchCounting(MemoryBroker):
    """The memory broker, remembering each batched presence refresh it was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[Any]] = []

    async def refresh_presence(self, entries: Any, ttl: float) -> None:
        entries = list(entries)
        self.batches.append(entries)
        await super().refresh_presence(entries, ttl)


async def test_join_and_leave_are_sent_once_each(
    make_hub: MakeHub, connect: ConnectClient,
) -> None:
    hub = await make_hub(presence_ttl=0.6, broker=YieldingMemoryBroker(delay=0.01))
    channel = await session_of(hub, connect, "ann")
    owner, _ = await connect("boss", "admin", target=hub)
    _, watching = await subscribed(owner, channel, join_leave=True)
    visitor, _ = await connect("tom", "admin", target=hub)
    visit, _ = await subscribed(visitor, channel)

    await asyncio.sleep(1.5)  # several presence refreshes
    await visit.unsubscribe()
    await eventually(lambda: watching.named("leave"))
    await asyncio.sleep(0.5)

    assert [j.info.user for j in watching.named("join")] == ["boss", "tom"]
    assert [j.info.user for j in watching.named("leave")] == ["tom"]
    assert await presence_of(hub, channel) == {owner.client_id}


# -- a client that goes away mid-subscribe leaves no trace ----------------------------------------


async def test_client_gone_while_its_subscribe_waits_on_the_broker_leaves_no_trace(
    make_hub: MakeHub, connect: ConnectClient, raw: OpenRaw,
) -> None:
    broker = YieldingMemoryBroker(delay=0.005, slow={"history": 0.5})
    hub = await make_hub(broker=broker)
    channel = await session_of(hub, connect, "ann")
    owner, _ = await connect("boss", "admin", target=hub)
    _, watching = await subscribed(owner, channel, join_leave=True)
    subscriptions_before = gauge(hub, "fitsync_subscriptions")

    leaving = await raw(hub)
    await leaving.connect(hub.token("tom", "admin"))
    reads = broker.calls.count("history")
    await leaving.send({"id": 2, "subscribe": {"channel": channel}})
    await eventually(lambda: broker.calls.count("history") > reads)  # its position is read
    await leaving.close()
    await asyncio.sleep(1.0)

    assert gauge(hub, "fitsync_subscriptions") == subscriptions_before
    assert await presence_of(hub, channel) == {owner.client_id}
    assert [j.info.user for j in watching.named("join")] == ["boss"]
    assert watching.named("leave") == []
    assert channel in broker.subscribed_channels()


async def test_first_subscriber_gone_mid_subscribe_leaves_the_node_unsubscribed(
    make_hub: MakeHub, connect: ConnectClient, raw: OpenRaw,
) -> None:
    broker = YieldingMemoryBroker(delay=0.005, slow={"subscribe": 0.5})
    hub = await make_hub(broker=broker)
    channel = await session_of(hub, connect, "ann")
    await asyncio.sleep(0.2)
    subscriptions_before = gauge(hub, "fitsync_subscriptions")

    leaving = await raw(hub)
    await leaving.connect(hub.token("tom", "admin"))
    subscribes = broker.calls.count("subscribe")
    await leaving.send({"id": 2, "subscribe": {"channel": channel}})
    await eventually(lambda: broker.calls.count("subscribe") > subscribes)
    await leaving.close()
    await eventually(lambda: broker.calls.count("unsubscribe") >= 2)  # its user: and the session
    await asyncio.sleep(0.3)

    assert channel not in broker.subscribed_channels()
    assert channel not in hub.node.lifecycle.bound_channels()
    assert gauge(hub, "fitsync_subscriptions") == subscriptions_before
    assert await presence_of(hub, channel) == set()


async def test_a_subscriber_arriving_as_the_last_one_leaves_still_gets_publications(
    make_hub: MakeHub, connect: ConnectClient,
) -> None:
    broker = YieldingMemoryBroker(delay=0.005, slow={"unsubscribe": 0.5})
    hub = await make_hub(broker=broker)
    channel = await session_of(hub, connect, "ann")
    leaving, _ = await connect("boss", "admin", target=hub)
    first, _ = await subscribed(leaving, channel)
    arriving, _ = await connect("tom", "admin", target=hub)

    await first.unsubscribe()  # the node's broker unsubscribe is now under way, slowly
    await eventually(lambda: "unsubscribe" in broker.calls)
    _, events = await subscribed(arriving, channel)
    await asyncio.sleep(0.8)  # past the slow unsubscribe
    ann, _ = await connect("ann", target=hub)
    await ann.publish(channel, {"type": "set", "event_id": "e1", "exercise": "squat",
                                "reps": 5, "weight_kg": 100})

    await eventually(lambda: events.publications(), timeout=10)
    assert events.publications()[0]["event_id"] == "e1"
    assert channel in broker.subscribed_channels()


# -- continuity: the node fills gaps from history, or says it cannot ----------------------------


HISTORY = HistoryOptions(size=100, ttl=60)


class _Stream:
    """A Continuity over a real memory broker's history, recording what it delivers."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self.delivered: list[int] = []
        self.insufficient: list[str] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.continuity = Continuity(Metrics(), self._read, self._deliver,
                                     self.insufficient.append, self._spawn)

    async def _read(self, channel: str, since: StreamPosition) -> Any:
        return await self.broker.history(channel, since=since, limit=-1)

    def _deliver(self, channel: str, publication: Publication) -> None:
        self.delivered.append(publication.offset)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.append(task)
        return task

    def live(self, channel: str, offset: int, epoch: str) -> None:
        publication = Publication(b"{}", offset=offset, epoch=epoch)
        if self.continuity.accept(channel, publication):
            self._deliver(channel, publication)

    async def settle(self) -> None:
        while any(not t.done() for t in self.tasks):
            await asyncio.gather(*self.tasks)


@pytest.fixture
async def stream() -> _Stream:
    broker = MemoryBroker()
    await broker.start(_Ignoring())
    return _Stream(broker)


class _Ignoring:
    """A broker event handler that drops everything: these tests read history only."""

    def on_publication(self, channel: str, publication: Publication) -> None: ...
    def on_join(self, channel: str, info: Any) -> None: ...
    def on_leave(self, channel: str, info: Any) -> None: ...


async def _publish(broker: MemoryBroker, channel: str, count: int) -> str:
    position = StreamPosition(0, "")
    for _ in range(count):
        position = await broker.publish(channel, b"{}", history=HISTORY)
    return position.epoch


async def test_a_gap_in_live_publications_is_filled_from_history_in_order(
    stream: _Stream,
) -> None:
    epoch = await _publish(stream.broker, "c", 6)
    stream.live("c", 1, epoch)
    stream.live("c", 4, epoch)  # 2 and 3 never arrived
    stream.live("c", 5, epoch)  # arrives while the gap is being read
    await stream.settle()
    stream.live("c", 3, epoch)  # late duplicate
    stream.live("c", 6, epoch)

    assert stream.delivered == [1, 2, 3, 4, 5, 6]
    assert stream.insufficient == []


async def test_after_a_resubscription_what_was_missed_is_delivered(stream: _Stream) -> None:
    epoch = await _publish(stream.broker, "c", 2)
    stream.live("c", 1, epoch)
    stream.live("c", 2, epoch)
    await _publish(stream.broker, "c", 3)  # published while the node was not listening

    stream.continuity.resubscribed(["c"])
    await stream.settle()

    assert stream.delivered == [1, 2, 3, 4, 5]


async def test_a_new_epoch_tells_the_subscribers_they_cannot_recover(stream: _Stream) -> None:
    epoch = await _publish(stream.broker, "c", 2)
    stream.live("c", 1, epoch)
    stream.live("c", 2, epoch)
    stream.broker = MemoryBroker()  # the store restarted empty: the stream is gone
    await stream.broker.start(_Ignoring())
    new_epoch = await _publish(stream.broker, "c", 1)

    stream.live("c", 1, new_epoch)
    await stream.settle()

    assert stream.insufficient == ["c"]
    assert stream.delivered == [1, 2]
