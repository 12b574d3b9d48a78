"""What the contract suite cannot see of the Redis broker: how it uses Redis (one PUBLISH per
publication, pipelining), and how it lives through Redis dying, restarting, being flushed and
forgetting its scripts; sharding and cluster placement; several nodes on one Redis.

Each test that counts commands or kills Redis has a private `redis-server` of its own.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial

import pytest
from redis.crc import key_slot

from hub.broker.base import (
    BrokerUnavailable,
    ClientInfo,
    HistoryOptions,
    Publication,
    StreamPosition,
)
from hub.broker.redis import RedisBroker
from hub.broker.redis_codec import KeySpace
from tests.broker.redis_servers import RedisServer, redis_server, redis_servers

HISTORY = HistoryOptions(size=100, ttl=60.0)
ALICE = ClientInfo(user="alice", client="c-alice-1", conn_info=b'{"device":"watch"}')
BOB = ClientInfo(user="bob", client="c-bob-1")


@dataclass
class Node:
    """A BrokerEventHandler that records everything, as a node would receive it."""

    publications: list[tuple[str, Publication]] = field(default_factory=list)
    joins: list[tuple[str, ClientInfo]] = field(default_factory=list)
    leaves: list[tuple[str, ClientInfo]] = field(default_factory=list)
    controls: list[bytes] = field(default_factory=list)
    resubscribed: list[list[str]] = field(default_factory=list)

    def on_publication(self, channel: str, publication: Publication) -> None:
        self.publications.append((channel, publication))

    def on_join(self, channel: str, info: ClientInfo) -> None:
        self.joins.append((channel, info))

    def on_leave(self, channel: str, info: ClientInfo) -> None:
        self.leaves.append((channel, info))

    def on_control(self, data: bytes) -> None:
        self.controls.append(data)

    def on_resubscribed(self, channels: list[str]) -> None:
        self.resubscribed.append(sorted(channels))

    def data_in(self, channel: str) -> list[bytes]:
        return [publication.data for ch, publication in self.publications if ch == channel]


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        await asyncio.sleep(0.01)


async def eventually_returns(
    call: Callable[[], Awaitable[object]], expected: object, timeout: float = 10.0
) -> None:
    """Wait until `call()` returns `expected`; fail if it still does not after `timeout`."""
    deadline = time.monotonic() + timeout
    while (found := await call()) != expected:
        if time.monotonic() > deadline:
            pytest.fail(f"still {found!r}")
        await asyncio.sleep(0.05)


async def eventually_succeeds(call: Callable[[], Awaitable[object]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await call()
            return
        except BrokerUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def command_calls(server: RedisServer, command: str) -> int:
    with server.client() as client:
        stats = client.info("commandstats").get(f"cmdstat_{command}", {})
    return int(stats.get("calls", 0)) if isinstance(stats, dict) else 0


def reads_processed(server: RedisServer) -> int:
    """Socket reads Redis made, all clients together: a pipeline arrives in one or a few."""
    with server.client() as client:
        return int(client.info("stats")["total_reads_processed"])


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture
def channel() -> str:
    return f"session:{uuid.uuid4().hex}"


StartNode = Callable[[], Awaitable[tuple[RedisBroker, Node]]]


@pytest.fixture
async def start_node(private_redis: RedisServer) -> AsyncIterator[StartNode]:
    """Start brokers (nodes) on the private Redis; all closed after the test."""
    started: list[RedisBroker] = []

    async def start() -> tuple[RedisBroker, Node]:
        broker = RedisBroker([private_redis.url], timeout=1.0)
        node = Node()
        await broker.start(node)
        started.append(broker)
        return broker, node

    yield start
    for broker in started:
        await broker.close()


# How Redis is used


async def test_one_publish_per_publication_whatever_the_number_of_nodes(
    private_redis: RedisServer, start_node: StartNode, channel: str
) -> None:
    nodes = [await start_node() for _ in range(3)]
    for broker, _ in nodes:
        await broker.subscribe(channel)
    publisher = nodes[0][0]
    before = command_calls(private_redis, "publish")

    for n in range(20):
        await publisher.publish(channel, b'{"n":%d}' % n, history=HISTORY)

    assert command_calls(private_redis, "publish") - before == 20
    await eventually(lambda: all(len(node.data_in(channel)) == 20 for _, node in nodes))


async def test_concurrent_publishes_share_round_trips(
    private_redis: RedisServer, start_node: StartNode, channel: str
) -> None:
    broker, _ = await start_node()
    await broker.subscribe(channel)
    reads_before = reads_processed(private_redis)

    positions = await asyncio.gather(
        *(broker.publish(channel, b'{"n":%d}' % n, history=HISTORY) for n in range(500))
    )

    reads = reads_processed(private_redis) - reads_before
    assert sorted(position.offset for position in positions) == list(range(1, 501))
    assert reads < 500 / 10, f"{reads} socket reads for 500 publications"


async def test_refreshing_presence_of_many_clients_is_one_pipeline(
    private_redis: RedisServer, start_node: StartNode, channel: str
) -> None:
    broker, _ = await start_node()
    entries = [(channel, f"c-{n}", ClientInfo(f"user-{n}", f"c-{n}")) for n in range(300)]
    reads_before = reads_processed(private_redis)

    await broker.refresh_presence(entries, ttl=60.0)

    assert reads_processed(private_redis) - reads_before < 300 / 10
    assert await broker.presence_stats(channel) == (300, 300)


async def test_a_large_presence_refresh_does_not_hold_up_publications(
    start_node: StartNode, channel: str
) -> None:
    broker, _ = await start_node()
    entries = [(channel, f"c-{n}", ClientInfo(f"user-{n}", f"c-{n}")) for n in range(20000)]
    refreshing = asyncio.create_task(broker.refresh_presence(entries, ttl=60.0))
    for _ in range(5):  # the refresh batch is packed and on the wire
        await asyncio.sleep(0)

    await broker.publish(channel, b"{}", history=HISTORY)

    assert not refreshing.done()
    await refreshing
    assert await broker.presence_stats(channel) == (20000, 20000)


async def test_join_leave_control_and_publications_reach_every_node(
    start_node: StartNode, channel: str
) -> None:
    (first, first_node), (second, second_node) = [await start_node() for _ in range(2)]
    await second.subscribe(channel)

    await first.publish_join(channel, ALICE)
    await first.publish(channel, b'{"hr":120}', info=ALICE, history=HISTORY)
    await first.publish_leave(channel, ALICE)
    await second.publish_control(b"disconnect alice")

    await eventually(lambda: len(second_node.leaves) == 1 and len(first_node.controls) == 1)
    await eventually(lambda: len(second_node.controls) == 1)
    assert second_node.joins == [(channel, ALICE)]
    assert second_node.data_in(channel) == [b'{"hr":120}']
    delivered = second_node.publications[0][1]
    position = (await first.history(channel)).position
    assert (delivered.offset, delivered.epoch, delivered.info) == (1, position.epoch, ALICE)
    assert first_node.controls == second_node.controls == [b"disconnect alice"]
    assert first_node.publications == [] and first_node.joins == []


async def test_presence_is_shared_and_a_dead_nodes_entries_expire(
    start_node: StartNode, channel: str
) -> None:
    (dying, _), (alive, _) = [await start_node() for _ in range(2)]
    await dying.add_presence(channel, ALICE.client, ALICE, ttl=0.3)
    await alive.add_presence(channel, BOB.client, BOB, ttl=60.0)
    assert await alive.presence(channel) == {ALICE.client: ALICE, BOB.client: BOB}

    await dying.close()  # it never removes Alice: its entries only stop being refreshed

    await eventually_returns(lambda: alive.presence(channel), {BOB.client: BOB})


class FailingNode(Node):
    """A node whose handler raises on `{"n":1}`, as a bug would."""

    def on_publication(self, channel: str, publication: Publication) -> None:
        if publication.data == b'{"n":1}':
            raise RuntimeError("handler bug")
        super().on_publication(channel, publication)


async def test_a_failing_handler_does_not_stop_delivery(
    private_redis: RedisServer, channel: str
) -> None:
    broker, node = RedisBroker([private_redis.url]), FailingNode()
    await broker.start(node)
    try:
        await broker.subscribe(channel)

        for n in (1, 2):
            await broker.publish(channel, b'{"n":%d}' % n, history=HISTORY)

        await eventually(lambda: node.data_in(channel) == [b'{"n":2}'])
    finally:
        await broker.close()


# Redis dying, restarting, flushed


async def test_redis_killed_and_restarted_resubscribes_and_delivers_again(
    private_redis: RedisServer, start_node: StartNode, channel: str
) -> None:
    broker, node = await start_node()
    other = f"trainer:{uuid.uuid4().hex}"
    gone = f"session:{uuid.uuid4().hex}"
    for name in (channel, other, gone):
        await broker.subscribe(name)
    await broker.unsubscribe(gone)
    await broker.publish(channel, b'{"n":1}', history=HISTORY)
    await eventually(lambda: len(node.data_in(channel)) == 1)

    private_redis.kill()

    with pytest.raises(BrokerUnavailable):
        await broker.publish(channel, b'{"n":2}', history=HISTORY)
    with pytest.raises(BrokerUnavailable):
        await broker.ping()
    with pytest.raises(BrokerUnavailable):
        await broker.history(channel, limit=-1)
    with pytest.raises(BrokerUnavailable):
        await broker.subscribe(f"session:{uuid.uuid4().hex}")

    private_redis.start()

    await eventually(lambda: node.resubscribed == [sorted([channel, other])])
    await eventually_succeeds(broker.ping)
    position = await broker.publish(channel, b'{"n":3}', history=HISTORY)
    await eventually(lambda: node.data_in(channel) == [b'{"n":1}', b'{"n":3}'])
    assert position.offset == 1  # Redis restarted empty: a new stream
    await broker.publish(other, b'{"t":1}')
    await eventually(lambda: node.data_in(other) == [b'{"t":1}'])


async def test_a_lost_pubsub_connection_alone_is_reconnected_and_reported(
    private_redis: RedisServer, start_node: StartNode, channel: str
) -> None:
    broker, node = await start_node()
    await broker.subscribe(channel)
    with private_redis.client() as client:
        client.client_kill_filter(_type="pubsub")

    await eventually(lambda: node.resubscribed == [[channel]])
    await eventually_succeeds(broker.ping)
    await broker.publish(channel, b'{"n":1}', history=HISTORY)
    await eventually(lambda: node.data_in(channel) == [b'{"n":1}'])


async def test_calls_fail_promptly_when_redis_is_unreachable(
    private_redis: RedisServer, start_node: StartNode, channel: str
) -> None:
    broker, _ = await start_node()
    private_redis.kill()

    for call in (
        broker.publish(channel, b"{}", history=HISTORY),
        broker.publish_join(channel, ALICE),
        broker.publish_control(b"x"),
        broker.presence(channel),
        broker.add_presence(channel, ALICE.client, ALICE, ttl=1.0),
        broker.refresh_presence([(channel, ALICE.client, ALICE)], ttl=1.0),
    ):
        with pytest.raises(BrokerUnavailable):
            await asyncio.wait_for(call, timeout=10.0)


async def test_calls_to_a_redis_that_stopped_answering_time_out_then_recover(
    private_redis: RedisServer, start_node: StartNode, channel: str
) -> None:
    broker, node = await start_node()
    await broker.subscribe(channel)
    private_redis.pause()
    try:
        with pytest.raises(BrokerUnavailable):
            await asyncio.wait_for(broker.publish(channel, b"{}", history=HISTORY), 10.0)
        with pytest.raises(BrokerUnavailable):
            await asyncio.wait_for(broker.ping(), 10.0)
    finally:
        private_redis.resume()

    await eventually_succeeds(broker.ping)
    await eventually_succeeds(lambda: broker.publish(channel, b'{"after":1}', history=HISTORY))
    await eventually(lambda: b'{"after":1}' in node.data_in(channel))


async def test_start_fails_when_redis_cannot_be_reached() -> None:
    with redis_server() as server:
        url = server.url
    broker = RedisBroker([url], timeout=0.5)

    with pytest.raises(BrokerUnavailable):
        await asyncio.wait_for(broker.start(Node()), timeout=10.0)


async def test_flushed_redis_starts_the_stream_under_a_new_epoch(
    private_redis: RedisServer, start_node: StartNode, channel: str
) -> None:
    broker, _ = await start_node()
    await broker.publish(channel, b"{}", history=HISTORY)
    old = await broker.publish(channel, b"{}", history=HISTORY)
    with private_redis.client() as client:
        client.flushall()

    new = await broker.publish(channel, b"{}", history=HISTORY)

    assert old.offset == 2
    assert new.offset == 1 and new.epoch not in ("", old.epoch)
    result = await broker.history(channel, since=old, limit=-1)
    assert result.position == new


async def test_scripts_forgotten_by_redis_are_loaded_again(
    private_redis: RedisServer, start_node: StartNode, channel: str
) -> None:
    broker, node = await start_node()
    await broker.subscribe(channel)
    await broker.publish(channel, b'{"n":1}', history=HISTORY)
    with private_redis.client() as client:
        client.script_flush()

    positions = await asyncio.gather(
        *(broker.publish(channel, b'{"n":%d}' % n, history=HISTORY) for n in range(2, 12))
    )

    assert sorted(position.offset for position in positions) == list(range(2, 12))
    await eventually(lambda: len(node.data_in(channel)) == 11)
    assert [p.offset for _, p in node.publications] == list(range(1, 12))


# Sharded and clustered


async def test_sharded_channels_spread_over_every_shard_and_keys_stay_on_theirs(
    sharded_redis: list[RedisServer],
) -> None:
    prefix = f"spread-{uuid.uuid4().hex[:8]}"
    broker = RedisBroker([server.url for server in sharded_redis], prefix=prefix)
    node = Node()
    await broker.start(node)
    channels = [f"session:{n}" for n in range(60)]
    try:
        for name in channels:
            await broker.subscribe(name)
            await broker.publish(name, b"{}", history=HISTORY)
            await broker.add_presence(name, ALICE.client, ALICE, ttl=60.0)
        await eventually(lambda: len(node.publications) == len(channels))
    finally:
        await broker.close()

    keyspace = KeySpace(prefix)
    for index, server in enumerate(sharded_redis):
        mine = [name for name in channels if broker.shard_of(name) == index]
        expected = {
            key
            for name in mine
            for key in (
                keyspace.channel(name).meta,
                keyspace.channel(name).stream,
                keyspace.channel(name).presence_set,
                keyspace.channel(name).presence_hash,
            )
        }
        with server.client() as client:
            found = set(client.scan_iter(match=f"{prefix}:*"))
        assert mine, f"no channel on shard {index}"
        assert found == expected


async def test_one_shard_restarting_resubscribes_only_its_channels() -> None:
    with redis_servers(3) as servers:
        urls = [server.url for server in servers]
        publisher, subscriber = RedisBroker(urls, timeout=1.0), RedisBroker(urls, timeout=1.0)
        publishing, node = Node(), Node()
        await publisher.start(publishing)
        await subscriber.start(node)
        try:
            channels = [f"session:{n}" for n in range(30)]
            for name in channels:
                await subscriber.subscribe(name)
            on_shard = {
                index: [name for name in channels if subscriber.shard_of(name) == index]
                for index in range(3)
            }
            assert all(on_shard.values())
            await publisher.publish_control(b"before")
            await eventually(lambda: node.controls == publishing.controls == [b"before"])

            servers[1].restart()

            await eventually(lambda: node.resubscribed == [sorted(on_shard[1])])
            for name in channels:
                await eventually_succeeds(partial(publisher.publish, name, b"{}"))
            await eventually(lambda: {ch for ch, _ in node.publications} == set(channels))
            await publisher.publish_control(b"after")
            await eventually(lambda: node.controls == [b"before", b"after"])
        finally:
            await publisher.close()
            await subscriber.close()


async def test_cluster_nodes_share_channels_through_sharded_pubsub(
    clustered_redis: list[RedisServer],
) -> None:
    seeds = [clustered_redis[1].url]
    brokers = [RedisBroker(seeds, cluster=True), RedisBroker(seeds, cluster=True)]
    nodes = [Node(), Node()]
    for broker, node in zip(brokers, nodes, strict=True):
        await broker.start(node)
    channels = [f"session:{uuid.uuid4().hex}" for _ in range(12)]
    try:
        assert len(brokers[0].shard_urls) == len(clustered_redis)
        assert {brokers[0].shard_of(name) for name in channels} == {0, 1, 2}
        spublish_before = sum(command_calls(server, "spublish") for server in clustered_redis)
        for name in channels:
            await brokers[1].subscribe(name)
        for name in channels:
            await brokers[0].publish(name, b'{"n":1}', history=HISTORY)
        await brokers[0].publish_control(b"everyone")

        await eventually(lambda: len(nodes[1].publications) == len(channels))
        await eventually(lambda: nodes[0].controls == nodes[1].controls == [b"everyone"])
        spublished = sum(command_calls(server, "spublish") for server in clustered_redis)
        assert spublished - spublish_before == len(channels) + 1
        for name in channels:
            result = await brokers[1].history(name, limit=-1)
            assert [p.data for p in result.publications] == [b'{"n":1}']
            assert result.position == StreamPosition(1, result.position.epoch)
    finally:
        for broker in brokers:
            await broker.close()


def test_every_channel_key_shares_its_pubsub_slot() -> None:
    keyspace = KeySpace("fitsync")
    for name in ("session:1", "trainer:t-9", "odd{name}", "}", "{}", "a}b{c"):
        keys = keyspace.channel(name)
        slots = {
            key_slot(key)
            for key in (
                keys.pubsub,
                keys.meta,
                keys.stream,
                keys.presence_set,
                keys.presence_hash,
            )
        }
        assert len(slots) == 1, name
    assert keyspace.channel("a{b").meta != keyspace.channel("a}b").meta
