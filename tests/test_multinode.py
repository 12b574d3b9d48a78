"""Many nodes that behave as one: hub processes sharing a private Redis and PostgreSQL, driven
by the official SDK. A client sees the same channel, presence and history whichever node it
is on, and actions on a user reach their connections on every node."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import centrifuge
import pytest

from tests.broker.redis_servers import RedisServer, redis_server
from tests.db_fixtures import create_postgres_database, drop_postgres_database
from tests.harness import eventually
from tests.multinode import Cluster, Node, cluster_of, node_env, presence_on, set_event, subscribed


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(scope="module")
async def database_url() -> AsyncIterator[str]:
    url = await create_postgres_database()
    yield url
    await drop_postgres_database(url)


@pytest.fixture(scope="module")
def two_nodes(redis: RedisServer, database_url: str) -> Iterator[Cluster]:
    with tempfile.TemporaryDirectory(prefix="fitsync-nodes-") as directory, \
            cluster_of(2, node_env(redis.url, database_url, HUB_PRESENCE_TTL="3"),
                       Path(directory)) as cluster:
        yield cluster


@pytest.fixture
async def nodes(two_nodes: Cluster) -> AsyncIterator[Cluster]:
    yield two_nodes
    await two_nodes.close_clients()


async def start_session(client: centrifuge.Client) -> str:
    result = await client.rpc("session.start", {"title": "legs"})
    return str(result.data["channel"])


# -- one channel, every node ---------------------------------------------------------------------


async def test_a_subscriber_on_node_2_receives_what_a_device_publishes_on_node_1(
    nodes: Cluster,
) -> None:
    one, two = nodes.nodes
    device, _ = await nodes.connect(one, "ann", "device")
    channel = await start_session(device)
    watcher, _ = await nodes.connect(two, "boss", "admin")
    _, events = await subscribed(watcher, channel)
    here, _ = await nodes.connect(one, "boss2", "admin")
    _, local_events = await subscribed(here, channel)

    for n in range(5):
        await device.publish(channel, set_event(f"e{n}", reps=n + 1))

    await eventually(lambda: len(events.publications()) == 5, timeout=10)
    await eventually(lambda: len(local_events.publications()) == 5, timeout=10)
    assert events.publications() == local_events.publications()
    assert [p["event_id"] for p in events.publications()] == [f"e{n}" for n in range(5)]
    assert events.publications()[-1]["stats"]["reps"] == 15


async def test_trainer_on_another_node_is_told_when_a_client_starts_a_session(
    nodes: Cluster,
) -> None:
    one, two = nodes.nodes
    async with one.api() as api:
        assert (await api.put("/api/trainers/tina/clients/lee")).status_code == 200
    trainer, _ = await nodes.connect(two, "tina", "trainer")
    _, told = await subscribed(trainer, "trainer:tina")
    athlete, _ = await nodes.connect(one, "lee")

    channel = await start_session(athlete)

    started = await eventually(lambda: told.publications(), timeout=10)
    assert started[0]["type"] == "client_session_started"
    assert f"session:{started[0]['session_id']}" == channel


async def test_presence_is_the_same_on_every_node(nodes: Cluster) -> None:
    one, two = nodes.nodes
    athlete, _ = await nodes.connect(one, "max")
    channel = await start_session(athlete)
    _, own = await subscribed(athlete, channel, join_leave=True)
    visitor, _ = await nodes.connect(two, "root", "admin")
    visit, _ = await subscribed(visitor, channel)

    joined = await eventually(lambda: [j for j in own.named("join") if j.info.user == "root"],
                              timeout=10)
    expected = {athlete.client_id, visitor.client_id}
    assert await presence_on(one, channel) == expected
    assert await presence_on(two, channel) == expected
    assert joined[0].info.client == visitor.client_id

    await asyncio.sleep(4)  # past the 3 s presence TTL: refreshed, not expired
    assert await presence_on(one, channel) == expected

    await visit.unsubscribe()
    await eventually(lambda: [x for x in own.named("leave") if x.info.user == "root"],
                     timeout=10)
    assert await presence_on(two, channel) == {athlete.client_id}


async def test_a_client_recovers_on_another_node_what_it_missed(nodes: Cluster) -> None:
    one, two = nodes.nodes
    athlete, _ = await nodes.connect(one, "kim")
    channel = await start_session(athlete)
    watcher, _ = await nodes.connect(one, "watch", "admin")
    sub, seen = await subscribed(watcher, channel, recoverable=True, positioned=True)
    await athlete.publish(channel, set_event("k1"))
    await eventually(lambda: seen.publications(), timeout=10)
    position = seen.named("subscribed")[0].stream_position
    last = seen.named("publication")[-1].pub.offset
    await watcher.disconnect()

    for n in range(2, 5):
        await athlete.publish(channel, set_event(f"k{n}"))

    async def state(_: str) -> centrifuge.StreamPosition:
        return centrifuge.StreamPosition(offset=last, epoch=position.epoch)

    elsewhere, _ = await nodes.connect(two, "watch", "admin")
    _, back = await subscribed(elsewhere, channel, recoverable=True, positioned=True,
                               get_state=state)
    assert back.named("subscribed")[0].recovered
    await eventually(lambda: len(back.publications()) == 3, timeout=10)
    assert [p["event_id"] for p in back.publications()] == ["k2", "k3", "k4"]


# -- actions on a user reach every node ----------------------------------------------------------


async def test_trainer_on_node_2_is_unsubscribed_at_once_when_node_1_unlinks_the_client(
    nodes: Cluster,
) -> None:
    one, two = nodes.nodes
    async with one.api() as api:
        await api.put("/api/trainers/tom/clients/zoe")
    athlete, _ = await nodes.connect(one, "zoe")
    channel = await start_session(athlete)
    trainer, _ = await nodes.connect(two, "tom", "trainer")
    _, watching = await subscribed(trainer, channel)
    _, coach = await subscribed(trainer, "coach:zoe")

    async with one.api() as api:
        r = await api.delete("/api/trainers/tom/clients/zoe")
    assert r.status_code == 200, r.text

    for events in (watching, coach):
        gone = await eventually(lambda events=events: events.named("unsubscribed"), timeout=10)
        assert gone[0].code == 2000


async def test_api_disconnect_on_node_1_reaches_the_user_on_node_2(nodes: Cluster) -> None:
    one, two = nodes.nodes
    _, phone = await nodes.connect(two, "una")
    _, other = await nodes.connect(two, "vic")

    async with one.api() as api:
        r = await api.post("/api/disconnect", json={"user": "una"})
    assert r.status_code == 200, r.text

    gone = await eventually(lambda: phone.named("disconnected"), timeout=10)
    assert gone[0].code == 3503
    assert not other.named("disconnected")


async def test_duplicate_event_sent_to_two_nodes_at_once_is_stored_and_broadcast_once(
    nodes: Cluster,
) -> None:
    one, two = nodes.nodes
    phone, _ = await nodes.connect(one, "dup", "device", device="phone")
    watch, _ = await nodes.connect(two, "dup", "device", device="watch")
    channel = await start_session(phone)
    observer, _ = await nodes.connect(two, "obs", "admin")
    _, seen = await subscribed(observer, channel)

    for n in range(10):
        event = set_event(f"same-{n}")
        await asyncio.gather(phone.publish(channel, event), watch.publish(channel, event))
    await phone.publish(channel, set_event("last"))

    await eventually(lambda: seen.publications() and
                     seen.publications()[-1]["event_id"] == "last", timeout=10)
    ids = [p["event_id"] for p in seen.publications()]
    assert ids == [f"same-{n}" for n in range(10)] + ["last"]
    async with one.api() as api:
        stored = (await api.get(f"/api/sessions/{channel.split(':')[1]}")).json()
    assert len(stored["sets"]) == 11


# -- nodes and Redis going away ------------------------------------------------------------------


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fitsync-nodes-") as directory:
        yield Path(directory)


async def test_a_killed_node_leaves_presence_within_its_ttl(
    own_redis: RedisServer, database_url: str, scratch: Path,
) -> None:
    with cluster_of(2, node_env(own_redis.url, database_url, HUB_PRESENCE_TTL="2"),
                    scratch) as nodes:
        one, two = nodes.nodes
        athlete, _ = await nodes.connect(one, "kai")
        channel = await start_session(athlete)
        await subscribed(athlete, channel)
        doomed, _ = await nodes.connect(two, "gone", "admin")
        await subscribed(doomed, channel)
        assert len(await presence_on(one, channel)) == 2

        os.kill(two.served.process.pid, signal.SIGKILL)
        two.served.process.wait()

        assert await presence_within(one, channel, {athlete.client_id}, timeout=10)
        await nodes.close_clients()


async def presence_within(node: Node, channel: str, expected: set[str], timeout: float) -> bool:
    """Poll the node's HTTP presence until it is `expected`; False if it never was."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await presence_on(node, channel) == expected:
            return True
        await asyncio.sleep(0.1)
    return False
