"""Nodes when Redis goes away, comes back, or forgets: nothing is lost silently. Every
subscriber ends with every acknowledged publication, in order and once, or is told explicitly
that it did not recover. Also the same cross-node delivery on sharded Redis and on a Redis
Cluster."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import centrifuge
import httpx
import pytest

from tests.broker.redis_servers import RedisServer, redis_cluster, redis_server, redis_servers
from tests.db_fixtures import create_postgres_database, drop_postgres_database
from tests.harness import Recorder, eventually
from tests.multinode import Cluster, cluster_of, node_env, presence_on, set_event, subscribed


@pytest.fixture
async def database_url() -> AsyncIterator[str]:
    url = await create_postgres_database()
    yield url
    await drop_postgres_database(url)


@pytest.fixture
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fitsync-nodes-") as directory:
        yield Path(directory)


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


async def publish_until_acked(client: centrifuge.Client, channel: str,
                              event: dict[str, Any]) -> int:
    """Publish as a device does: retry the same event (same id) until acknowledged; returns
    the number of temporary errors it met."""
    errors = 0
    while True:
        try:
            await client.publish(channel, event)
            return errors
        except centrifuge.CentrifugeError:
            errors += 1
            await asyncio.sleep(0.05)


def received_ids(events: Recorder) -> list[str]:
    return [p["event_id"] for p in events.publications() if "event_id" in p]


def told_not_recovered(events: Recorder) -> bool:
    return any(ctx.was_recovering and not ctx.recovered for ctx in events.named("subscribed"))


def assert_nothing_lost_silently(events: Recorder, acked: list[str]) -> None:
    ids = received_ids(events)
    assert ids == sorted(set(ids), key=acked.index), "out of order or duplicated"
    if told_not_recovered(events):
        return
    assert ids == acked


async def ready_status(node_url: str) -> int:
    async with httpx.AsyncClient(base_url=node_url, timeout=10) as http:
        return (await http.get("/readyz")).status_code


async def test_redis_killed_and_restarted_mid_stream_loses_nothing_silently(
    redis: RedisServer, database_url: str, scratch: Path,
) -> None:
    with cluster_of(2, node_env(redis.url, database_url), scratch) as nodes:
        one, two = nodes.nodes
        device, _ = await nodes.connect(one, "ivy", "device")
        channel = (await device.rpc("session.start", {})).data["channel"]
        watchers = []
        for node, name in ((two, "w1"), (two, "w2"), (one, "w3")):
            client, _ = await nodes.connect(node, name, "admin")
            _, events = await subscribed(client, channel, recoverable=True, positioned=True)
            watchers.append(events)

        async def restart_soon() -> None:
            await asyncio.sleep(0.5)
            await asyncio.to_thread(redis.start)

        acked: list[str] = []
        errors = 0
        for n in range(40):
            if n == 15:
                redis.kill()
                assert await ready_status(one.http_url) == 503
                restarted = asyncio.create_task(restart_soon())
            # Refused while Redis is down: stored, not broadcast, so a retry is not acked
            # until its broadcast went out too.
            event_id = f"ev{n:02d}"
            errors += await publish_until_acked(device, channel, set_event(event_id))
            acked.append(event_id)
        await restarted

        assert errors > 0, "the outage should have refused some publishes"
        # Once every watcher is subscribed again, a last event reaches all of them live.
        await eventually(lambda: all(e.named("subscribed")[-1:] and
                                     len(e.named("subscribed")) >= 2 for e in watchers),
                         timeout=20)
        await publish_until_acked(device, channel, set_event("last"))
        acked.append("last")
        await eventually(lambda: all(received_ids(e)[-1:] == ["last"] for e in watchers),
                         timeout=20)
        for events in watchers:
            assert_nothing_lost_silently(events, acked)
        assert await ready_status(two.http_url) == 200
        async with one.api() as api:
            stored = (await api.get(f"/api/sessions/{channel.split(':')[1]}")).json()
        assert sorted(s["event_id"] for s in stored["sets"]) == acked
        await nodes.close_clients()


async def watched_session(nodes: Cluster, athlete: str) -> tuple[centrifuge.Client, str, Recorder]:
    """A device of `athlete` on the first node with a session started, watched (recoverable)
    by an admin on the second: the device, the session's channel, what the watcher got."""
    one, two = nodes.nodes
    device, _ = await nodes.connect(one, athlete, "device")
    channel = (await device.rpc("session.start", {})).data["channel"]
    watcher, _ = await nodes.connect(two, f"{athlete}-watcher", "admin")
    _, events = await subscribed(watcher, channel, recoverable=True, positioned=True)
    return device, channel, events


async def test_redis_flushed_gives_a_new_epoch_and_subscribers_are_told(
    redis: RedisServer, database_url: str, scratch: Path,
) -> None:
    with cluster_of(2, node_env(redis.url, database_url), scratch) as nodes:
        device, channel, events = await watched_session(nodes, "fay")
        await device.publish(channel, set_event("f1"))
        await eventually(lambda: received_ids(events) == ["f1"], timeout=10)
        epoch = events.named("subscribed")[0].stream_position.epoch

        with redis.client() as admin:
            admin.flushall()
        await device.publish(channel, set_event("f2"))

        again = await eventually(lambda: [c for c in events.named("subscribed")[1:]
                                          if c.was_recovering], timeout=15)
        assert again[0].recovered is False
        assert again[0].stream_position.epoch != epoch
        await device.publish(channel, set_event("f3"))
        await eventually(lambda: received_ids(events)[-1:] == ["f3"], timeout=10)
        await nodes.close_clients()


# -- beyond one Redis ----------------------------------------------------------------------------


async def crosses_nodes(nodes: Cluster) -> None:
    """Two devices on node 1 stream into their sessions; watchers on node 2 see every event of
    each in order, and presence is the same from both nodes."""
    one, two = nodes.nodes
    channels = []
    for athlete in ("sa", "sb", "sc", "sd"):
        device, _ = await nodes.connect(one, athlete, "device")
        channel = (await device.rpc("session.start", {})).data["channel"]
        channels.append((device, channel))
    watcher, _ = await nodes.connect(two, "admin", "admin")
    seen = {}
    for _, channel in channels:
        _, seen[channel] = await subscribed(watcher, channel)
    for n in range(5):
        for device, channel in channels:
            await device.publish(channel, set_event(f"{channel}-{n}"))
    for _, channel in channels:
        await eventually(lambda channel=channel: len(received_ids(seen[channel])) == 5,
                         timeout=15)
        assert received_ids(seen[channel]) == [f"{channel}-{n}" for n in range(5)]
        assert await presence_on(one, channel) == await presence_on(two, channel) \
            == {watcher.client_id}
    await nodes.close_clients()


async def test_nodes_on_three_sharded_redis_servers_behave_as_one(
    database_url: str, scratch: Path,
) -> None:
    with redis_servers(3) as servers:
        urls = ",".join(server.url for server in servers)
        with cluster_of(2, node_env(urls, database_url), scratch) as nodes:
            await crosses_nodes(nodes)
        used = []
        for server in servers:
            with server.client() as client:
                used.append(client.dbsize())
    assert all(count > 0 for count in used), f"keys per shard: {used}"


async def test_nodes_on_a_redis_cluster_behave_as_one(database_url: str, scratch: Path) -> None:
    with redis_cluster(3) as servers:
        seeds = ",".join(server.url for server in servers)
        env = node_env(seeds, database_url, HUB_REDIS_CLUSTER="1")
        with cluster_of(2, env, scratch) as nodes:
            await crosses_nodes(nodes)


async def test_a_node_that_lost_its_pubsub_connection_fills_the_gap_from_history(
    redis: RedisServer, database_url: str, scratch: Path,
) -> None:
    """Redis stays up but one node's pub/sub connection is cut: publications accepted while it
    was away are in history, so that node delivers them itself, in order and once, and its
    subscribers neither reconnect nor notice."""
    with cluster_of(2, node_env(redis.url, database_url), scratch) as nodes:
        one, two = nodes.nodes
        device, _ = await nodes.connect(one, "gus", "device")
        channel = (await device.rpc("session.start", {})).data["channel"]
        watcher, watcher_events = await nodes.connect(two, "gw", "admin")
        _, events = await subscribed(watcher, channel, recoverable=True, positioned=True)

        acked = []
        admin = redis.client()
        try:
            for n in range(30):
                if n == 10:
                    # No room for new connections: the cut pub/sub connections cannot come back
                    # while events 10-19 are published (the nodes' command connections stay).
                    admin.config_set("maxclients", admin.info("clients")["connected_clients"])
                    assert admin.client_kill_filter(_type="pubsub") >= 2
                if n == 20:
                    admin.config_set("maxclients", 10000)
                event_id = f"g{n:02d}"
                await publish_until_acked(device, channel, set_event(event_id))
                acked.append(event_id)
        finally:
            admin.config_set("maxclients", 10000)
            admin.close()

        await eventually(lambda: received_ids(events) == acked, timeout=20)
        assert len(events.named("subscribed")) == 1
        assert watcher_events.named("disconnected") == []
        async with two.api() as api:
            metrics = (await api.get("/metrics")).text
        filled = [line for line in metrics.splitlines()
                  if line.startswith("fitsync_gap_filled_publications_total")]
        assert filled and float(filled[0].split()[-1]) > 0, "nothing was missed: no test"
        await nodes.close_clients()


async def test_an_event_whose_broadcast_failed_after_its_commit_goes_out_on_the_retry(
    redis: RedisServer, database_url: str, scratch: Path,
) -> None:
    """Redis out of memory refuses the publication of an event already committed: the device
    is told to retry, and its retry, a duplicate, broadcasts the stored event, once."""
    with cluster_of(2, node_env(redis.url, database_url), scratch) as nodes:
        one = nodes.nodes[0]
        device, channel, events = await watched_session(nodes, "ivy")
        await device.publish(channel, set_event("ev0"))
        heart_rate = {"type": "hr", "event_id": "hr1", "samples": [[1_000, 120], [2_000, 131]]}

        with redis.client() as store:
            store.config_set("maxmemory", 1)  # every write refused (OOM), nothing else changes
            try:
                with pytest.raises(centrifuge.ReplyError) as refused:
                    await device.publish(channel, set_event("ev1", reps=8))
                assert refused.value.temporary and "broker unavailable" in refused.value.message
                with pytest.raises(centrifuge.ReplyError):
                    await device.publish(channel, heart_rate)
            finally:
                store.config_set("maxmemory", 0)
        async with one.api() as api:
            stored = (await api.get(f"/api/sessions/{channel.split(':')[1]}")).json()
        assert [s["event_id"] for s in stored["sets"]] == ["ev0", "ev1"]  # committed first

        for _ in range(3):  # the retry broadcasts it; later ones find it in history
            await device.publish(channel, set_event("ev1", reps=8))
            await device.publish(channel, heart_rate)
        await device.publish(channel, set_event("ev2"))
        await eventually(lambda: received_ids(events)[-1:] == ["ev2"], timeout=20)
        assert received_ids(events) == ["ev0", "ev1", "hr1", "ev2"]
        assert not told_not_recovered(events)
        late = {p["event_id"]: p for p in events.publications() if "event_id" in p}
        assert (late["ev1"]["reps"], late["ev1"]["device"]) == (8, "ivy-device")
        assert late["ev1"]["stats"]["sets"] == 2  # the session's totals when broadcast
        assert late["hr1"]["samples"] == heart_rate["samples"]
        assert late["hr1"]["stats"]["max_bpm"] == 131
        async with httpx.AsyncClient(base_url=one.http_url) as http:
            metrics = (await http.get("/metrics")).text
        assert "fitsync_session_events_broadcast_late_total 2.0" in metrics
        await nodes.close_clients()


async def test_a_retry_of_a_publish_that_timed_out_on_a_hung_redis_is_broadcast_once(
    redis: RedisServer, database_url: str, scratch: Path,
) -> None:
    """Redis stops answering while an event is published after its commit: the publish times
    out, and Redis may still run it once it resumes. Whether it did or not, the retry leaves
    the watcher with the event exactly once."""
    env = node_env(redis.url, database_url, HUB_REDIS_TIMEOUT="1")
    with cluster_of(2, env, scratch) as nodes:
        device, channel, events = await watched_session(nodes, "kim")
        await publish_until_acked(device, channel, set_event("k0"))  # 1 s is short
        redis.pause()
        try:
            with pytest.raises(centrifuge.ReplyError) as refused:
                await device.publish(channel, set_event("k1"))
            assert refused.value.temporary
        finally:
            redis.resume()
        await publish_until_acked(device, channel, set_event("k1"))
        await publish_until_acked(device, channel, set_event("k2"))
        await eventually(lambda: received_ids(events)[-1:] == ["k2"], timeout=20)
        assert received_ids(events) == ["k0", "k1", "k2"]
        await nodes.close_clients()
