"""The contract every broker keeps (hub/broker/base.py), run against each implementation.

Each test uses channels of its own, so brokers backed by a shared store need no cleanup
between tests. Events are awaited with `eventually` rather than assumed synchronous, so the
same tests hold for brokers that deliver over the network.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from hub.broker.base import (
    Broker,
    ClientInfo,
    HistoryOptions,
    Publication,
    StreamPosition,
)
from hub.broker.memory import MemoryBroker
from tests.broker.yielding import YieldingMemoryBroker

BROKERS: dict[str, Callable[[], Broker]] = {
    "memory": MemoryBroker,
    "memory-yielding": YieldingMemoryBroker,
}

REDIS_BROKERS: dict[str, str] = {
    "redis": "redis_broker_factory",
    "redis-sharded": "sharded_redis_broker_factory",
    "redis-cluster": "clustered_redis_broker_factory",
}
"""Brokers that need a Redis started for them: name → the fixture (tests/broker/conftest.py)
that gives a factory."""

SHORT = 0.05
"""A TTL the tests wait past; long enough to publish and read before it runs out."""

PAST_SHORT = SHORT * 2

SETTLE = 0.05
"""How long to wait before concluding that an event was not delivered."""

HISTORY = HistoryOptions(size=10, ttl=60.0)

ALICE = ClientInfo(user="alice", client="c-alice-1", conn_info=b'{"device":"watch"}')
ALICE_PHONE = ClientInfo(user="alice", client="c-alice-2")
BOB = ClientInfo(user="bob", client="c-bob-1")


@dataclass
class Recorder:
    """A BrokerEventHandler that remembers everything it is given, in order."""

    publications: list[tuple[str, Publication]] = field(default_factory=list)
    joins: list[tuple[str, ClientInfo]] = field(default_factory=list)
    leaves: list[tuple[str, ClientInfo]] = field(default_factory=list)

    def on_publication(self, channel: str, publication: Publication) -> None:
        self.publications.append((channel, publication))

    def on_join(self, channel: str, info: ClientInfo) -> None:
        self.joins.append((channel, info))

    def on_leave(self, channel: str, info: ClientInfo) -> None:
        self.leaves.append((channel, info))

    def published_in(self, channel: str) -> list[Publication]:
        return [publication for ch, publication in self.publications if ch == channel]


async def eventually(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """Wait until `condition` holds; fail if it still does not after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        await asyncio.sleep(0.005)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(params=sorted([*BROKERS, *REDIS_BROKERS]))
async def broker(request: pytest.FixtureRequest, recorder: Recorder) -> AsyncIterator[Broker]:
    if request.param in REDIS_BROKERS:
        factory: Callable[[], Broker] = request.getfixturevalue(REDIS_BROKERS[request.param])
    else:
        factory = BROKERS[request.param]
    instance = factory()
    await instance.start(recorder)
    yield instance
    await instance.close()


@pytest.fixture
def channel() -> str:
    return f"test:{uuid.uuid4().hex}"


@pytest.fixture
def other_channel() -> str:
    return f"test:{uuid.uuid4().hex}"


async def publish_many(
    broker: Broker, channel: str, count: int, history: HistoryOptions = HISTORY
) -> None:
    """Publish `{"n": 1}` … `{"n": count}` in order."""
    for n in range(1, count + 1):
        await broker.publish(channel, b'{"n":%d}' % n, history=history)


def offsets(publications: list[Publication]) -> list[int]:
    return [publication.offset for publication in publications]


# Offsets and delivery


async def test_offsets_start_at_one_and_grow_by_exactly_one(broker: Broker, channel: str) -> None:
    positions = [await broker.publish(channel, b"{}", history=HISTORY) for _ in range(3)]

    assert [position.offset for position in positions] == [1, 2, 3]
    assert len({position.epoch for position in positions}) == 1
    assert positions[0].epoch != ""


async def test_offsets_are_per_channel(broker: Broker, channel: str, other_channel: str) -> None:
    await publish_many(broker, channel, 3)

    position = await broker.publish(other_channel, b"{}", history=HISTORY)

    assert position.offset == 1


async def test_offsets_are_consecutive_under_concurrent_publishes(
    broker: Broker, recorder: Recorder, channel: str
) -> None:
    await broker.subscribe(channel)

    positions = await asyncio.gather(
        *(broker.publish(channel, b'{"n":%d}' % n, history=HISTORY) for n in range(100))
    )

    assert sorted(position.offset for position in positions) == list(range(1, 101))
    await eventually(lambda: len(recorder.published_in(channel)) == 100)
    delivered = recorder.published_in(channel)
    assert offsets(delivered) == list(range(1, 101))
    offset_of_data = {b'{"n":%d}' % n: position.offset for n, position in enumerate(positions)}
    assert all(offset_of_data[pub.data] == pub.offset for pub in delivered)


async def test_publication_is_not_delivered_for_unsubscribed_channel(
    broker: Broker, recorder: Recorder, channel: str
) -> None:
    await broker.publish(channel, b"{}", history=HISTORY)

    await asyncio.sleep(SETTLE)
    assert recorder.published_in(channel) == []


async def test_publication_is_delivered_after_subscribe(
    broker: Broker, recorder: Recorder, channel: str
) -> None:
    await broker.subscribe(channel)

    await broker.publish(channel, b'{"hr":120}', history=HISTORY)

    await eventually(lambda: len(recorder.published_in(channel)) == 1)
    assert recorder.published_in(channel)[0].data == b'{"hr":120}'


async def test_publication_is_not_delivered_after_unsubscribe(
    broker: Broker, recorder: Recorder, channel: str
) -> None:
    await broker.subscribe(channel)
    await broker.unsubscribe(channel)

    await broker.publish(channel, b"{}", history=HISTORY)

    await asyncio.sleep(SETTLE)
    assert recorder.published_in(channel) == []


async def test_info_tags_and_time_travel_with_publication(
    broker: Broker, recorder: Recorder, channel: str
) -> None:
    await broker.subscribe(channel)
    before_ms = int(time.time() * 1000)

    await broker.publish(channel, b"{}", info=ALICE, tags={"kind": "lap"}, history=HISTORY)

    await eventually(lambda: len(recorder.published_in(channel)) == 1)
    stored = (await broker.history(channel, limit=-1)).publications
    for publication in (recorder.published_in(channel)[0], stored[0]):
        assert publication.info == ALICE
        assert publication.tags == {"kind": "lap"}
        assert publication.time >= before_ms - 1000


# History


async def test_history_since_returns_exactly_the_later_publications_oldest_first(
    broker: Broker, channel: str
) -> None:
    await publish_many(broker, channel, 5)
    top = (await broker.history(channel)).position

    result = await broker.history(channel, since=StreamPosition(2, top.epoch), limit=-1)

    assert offsets(result.publications) == [3, 4, 5]
    assert [pub.data for pub in result.publications] == [b'{"n":3}', b'{"n":4}', b'{"n":5}']
    assert result.position == StreamPosition(5, top.epoch)


async def test_history_since_the_top_returns_nothing(broker: Broker, channel: str) -> None:
    top = await broker.publish(channel, b"{}", history=HISTORY)

    result = await broker.history(channel, since=top, limit=-1)

    assert result.publications == []
    assert result.position == top


async def test_history_limit_zero_returns_only_the_position(broker: Broker, channel: str) -> None:
    top = await broker.publish(channel, b"{}", history=HISTORY)

    result = await broker.history(channel, limit=0)

    assert result.publications == []
    assert result.position == top


async def test_history_limit_minus_one_returns_everything_retained(
    broker: Broker, channel: str
) -> None:
    await publish_many(broker, channel, 4)

    result = await broker.history(channel, limit=-1)

    assert offsets(result.publications) == [1, 2, 3, 4]


async def test_history_limit_n_returns_at_most_n_oldest_first(broker: Broker, channel: str) -> None:
    await publish_many(broker, channel, 5)
    epoch = (await broker.history(channel)).position.epoch

    result = await broker.history(channel, since=StreamPosition(1, epoch), limit=2)

    assert offsets(result.publications) == [2, 3]
    assert result.position == StreamPosition(5, epoch)


async def test_history_reverse_returns_newest_first(broker: Broker, channel: str) -> None:
    await publish_many(broker, channel, 4)

    result = await broker.history(channel, limit=-1, reverse=True)

    assert offsets(result.publications) == [4, 3, 2, 1]


async def test_history_reverse_with_limit_keeps_the_newest(broker: Broker, channel: str) -> None:
    await publish_many(broker, channel, 5)

    result = await broker.history(channel, limit=2, reverse=True)

    assert offsets(result.publications) == [5, 4]


async def test_history_reverse_since_pages_back_from_before_since(
    broker: Broker, channel: str
) -> None:
    await publish_many(broker, channel, 6, history=HistoryOptions(size=4, ttl=60.0))
    epoch = (await broker.history(channel)).position.epoch

    async def page(offset: int, limit: int) -> list[int]:
        found = await broker.history(
            channel, since=StreamPosition(offset, epoch), limit=limit, reverse=True
        )
        assert found.position == StreamPosition(6, epoch)
        return offsets(found.publications)

    assert await page(5, 2) == [4, 3]
    assert await page(3, 2) == []  # 2 is no longer retained (size 4 keeps 3-6)
    assert await page(7, -1) == [6, 5, 4, 3]
    assert await page(8, -1) == []
    assert await page(0, -1) == []


async def test_history_size_bound_drops_the_oldest(broker: Broker, channel: str) -> None:
    await publish_many(broker, channel, 5, history=HistoryOptions(size=3, ttl=60.0))

    result = await broker.history(channel, limit=-1)

    assert offsets(result.publications) == [3, 4, 5]
    assert result.position.offset == 5


async def test_expired_publications_are_dropped_but_offset_and_epoch_kept(
    broker: Broker, channel: str
) -> None:
    short = HistoryOptions(size=10, ttl=SHORT)
    await publish_many(broker, channel, 3, history=short)
    epoch = (await broker.history(channel)).position.epoch

    await asyncio.sleep(PAST_SHORT)

    result = await broker.history(channel, since=StreamPosition(1, epoch), limit=-1)
    assert result.publications == []
    assert result.position == StreamPosition(3, epoch)


async def test_recovery_across_expired_publications_shows_a_gap(
    broker: Broker, channel: str
) -> None:
    short = HistoryOptions(size=10, ttl=SHORT)
    await publish_many(broker, channel, 3, history=short)
    seen = StreamPosition(1, (await broker.history(channel)).position.epoch)
    await asyncio.sleep(PAST_SHORT)

    latest = await broker.publish(channel, b"{}", history=short)

    result = await broker.history(channel, since=seen, limit=-1)
    assert latest == StreamPosition(4, seen.epoch)
    assert offsets(result.publications) == [4]
    assert result.publications[0].offset > seen.offset + 1


async def test_stream_restarts_under_new_epoch_after_meta_ttl(broker: Broker, channel: str) -> None:
    short_meta = HistoryOptions(size=10, ttl=60.0, meta_ttl=SHORT)
    old = await broker.publish(channel, b"{}", history=short_meta)
    await asyncio.sleep(PAST_SHORT)

    new = await broker.publish(channel, b"{}", history=short_meta)

    assert new.offset == 1
    assert new.epoch not in ("", old.epoch)
    assert offsets((await broker.history(channel, limit=-1)).publications) == [1]


async def test_reading_history_keeps_stream_meta_alive(broker: Broker, channel: str) -> None:
    published = await broker.publish(
        channel, b"{}", history=HistoryOptions(size=10, ttl=60.0, meta_ttl=SHORT)
    )
    await broker.history(channel, meta_ttl=60.0)
    await asyncio.sleep(PAST_SHORT)

    result = await broker.history(channel)

    assert result.position == published


async def test_history_on_unknown_channel_creates_a_stable_epoch(
    broker: Broker, channel: str
) -> None:
    first = await broker.history(channel)
    second = await broker.history(channel, limit=-1)

    published = await broker.publish(channel, b"{}", history=HISTORY)

    assert first.publications == second.publications == []
    assert first.position.offset == 0
    assert first.position.epoch != ""
    assert second.position == first.position
    assert published == StreamPosition(1, first.position.epoch)


async def test_publication_without_history_has_offset_zero_and_is_not_stored(
    broker: Broker, recorder: Recorder, channel: str
) -> None:
    await broker.subscribe(channel)

    position = await broker.publish(channel, b"{}")

    assert position == StreamPosition(0, "")
    await eventually(lambda: len(recorder.published_in(channel)) == 1)
    assert recorder.published_in(channel)[0].offset == 0
    result = await broker.history(channel, limit=-1)
    assert result.publications == []
    assert result.position.offset == 0


async def test_publication_without_history_reports_the_existing_epoch(
    broker: Broker, channel: str
) -> None:
    top = await broker.publish(channel, b"{}", history=HISTORY)

    position = await broker.publish(channel, b"{}")

    assert position == StreamPosition(0, top.epoch)
    assert (await broker.history(channel)).position == top


# Presence


async def test_presence_lists_added_clients(broker: Broker, channel: str) -> None:
    await broker.add_presence(channel, ALICE.client, ALICE, ttl=60.0)
    await broker.add_presence(channel, BOB.client, BOB, ttl=60.0)

    assert await broker.presence(channel) == {ALICE.client: ALICE, BOB.client: BOB}


async def test_presence_refresh_replaces_info_and_extends_ttl(broker: Broker, channel: str) -> None:
    await broker.add_presence(channel, ALICE.client, ALICE, ttl=SHORT)
    refreshed = ClientInfo(user="alice", client=ALICE.client, chan_info=b'{"role":"athlete"}')

    await broker.add_presence(channel, ALICE.client, refreshed, ttl=60.0)
    await asyncio.sleep(PAST_SHORT)

    assert await broker.presence(channel) == {ALICE.client: refreshed}


async def test_presence_remove_drops_the_client(broker: Broker, channel: str) -> None:
    await broker.add_presence(channel, ALICE.client, ALICE, ttl=60.0)
    await broker.add_presence(channel, BOB.client, BOB, ttl=60.0)

    await broker.remove_presence(channel, ALICE.client)

    assert await broker.presence(channel) == {BOB.client: BOB}


async def test_presence_expires_after_ttl(broker: Broker, channel: str) -> None:
    await broker.add_presence(channel, ALICE.client, ALICE, ttl=SHORT)
    await broker.add_presence(channel, BOB.client, BOB, ttl=60.0)

    await asyncio.sleep(PAST_SHORT)

    assert await broker.presence(channel) == {BOB.client: BOB}
    assert await broker.presence_stats(channel) == (1, 1)


async def test_presence_stats_count_clients_and_distinct_users(
    broker: Broker, channel: str
) -> None:
    await broker.add_presence(channel, ALICE.client, ALICE, ttl=60.0)
    await broker.add_presence(channel, ALICE_PHONE.client, ALICE_PHONE, ttl=60.0)

    assert await broker.presence_stats(channel) == (2, 1)


async def test_presence_of_unknown_channel_is_empty(broker: Broker, channel: str) -> None:
    assert await broker.presence(channel) == {}
    assert await broker.presence_stats(channel) == (0, 0)


# Join and leave


async def test_join_and_leave_are_delivered_for_subscribed_channel(
    broker: Broker, recorder: Recorder, channel: str
) -> None:
    await broker.subscribe(channel)

    await broker.publish_join(channel, ALICE)
    await broker.publish_leave(channel, ALICE)

    await eventually(lambda: len(recorder.leaves) == 1)
    assert recorder.joins == [(channel, ALICE)]
    assert recorder.leaves == [(channel, ALICE)]


async def test_join_and_leave_are_not_delivered_for_unsubscribed_channel(
    broker: Broker, recorder: Recorder, channel: str
) -> None:
    await broker.publish_join(channel, ALICE)
    await broker.publish_leave(channel, ALICE)

    await asyncio.sleep(SETTLE)
    assert recorder.joins == []
    assert recorder.leaves == []
