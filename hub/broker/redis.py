"""The Redis broker: many nodes that share channels, history and presence through Redis.

What lives in Redis, per channel (hub/broker/redis_codec.py names the keys):
- a meta hash with the stream's epoch and top offset, kept `meta_ttl` past its last use;
- a stream of the retained publications (entry id = offset), at most `size` long, expiring
  `ttl` after the last publication;
- presence: a hash (client id → info) and a sorted set (client id → expiry, Redis's clock);
  expired entries are dropped when read, and both keys expire with their last entry, so a node
  that died leaves nothing behind after the TTL.

A publication costs one script call (hub/broker/lua/publish.lua) that assigns the offset,
appends to history, refreshes the TTLs and PUBLISHes the publication with its offset and
epoch, atomically: exactly one Redis PUBLISH per publication, however many nodes and
subscribers. Calls from all callers are pipelined per shard (hub/broker/redis_commands.py),
presence apart from the rest.
Each node holds one pub/sub connection per shard (hub/broker/redis_pubsub.py) on which it is
subscribed to the channels it has local subscribers on; join, leave and publications share that
subscription, control messages have a channel of their own (on the first shard; on a cluster,
on the master of its slot).

Sharding and clusters: hub/broker/redis_topology.py.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from hub.broker.base import (
    Broker,
    BrokerEventHandler,
    BrokerUnavailable,
    ClientInfo,
    HistoryOptions,
    HistoryResult,
    PresenceEntry,
    StreamPosition,
)
from hub.broker.redis_codec import (
    JOIN_PREFIX,
    KIND_JOIN,
    KIND_LEAVE,
    KIND_PUBLICATION,
    LEAVE_PREFIX,
    ChannelKeys,
    KeySpace,
    decode_info,
    decode_publication,
    decode_published,
    encode_info,
    encode_publication,
    stream_offset,
)
from hub.broker.redis_commands import (
    HISTORY,
    PRESENCE_ADD,
    PRESENCE_GET,
    PRESENCE_REMOVE,
    PUBLISH,
    CommandPipeline,
    connect,
)
from hub.broker.redis_pubsub import PubSubReader
from hub.broker.redis_topology import Layout, discover_cluster

log = logging.getLogger("hub.broker.redis")


def _new_epoch() -> str:
    return secrets.token_urlsafe(6)


def _ms(seconds: float) -> int:
    """A TTL in whole milliseconds, never 0 (PEXPIRE 0 would delete the key at once)."""
    return max(1, round(seconds * 1000))


@dataclass(slots=True)
class _Shard:
    """One Redis server: its command pipelines and the node's pub/sub connection to it.

    Presence has a pipeline of its own, so a node refreshing thousands of entries in one batch
    never holds up publications behind it; streams (publish, history, join, leave, control)
    share the other, which keeps them in the order they were issued.
    """

    url: str
    client: aioredis.Redis
    commands: CommandPipeline
    presence: CommandPipeline
    pubsub: PubSubReader

    async def close(self) -> None:
        await self.pubsub.close()
        await self.commands.close()
        await self.presence.close()
        await self.client.aclose()


class RedisBroker(Broker):
    """Fan-out, history and presence in Redis: one server, several (sharded), or a cluster.

    `urls` are the shards (or, with `cluster`, seed nodes of one Redis Cluster); `prefix`
    starts every key and pub/sub channel, so deployments and test runs can share a Redis;
    `timeout` bounds every connect, read and write, after which a call raises
    `BrokerUnavailable`. `start` raises it too when Redis cannot be reached then; after that,
    outages are survived (calls fail meanwhile, subscriptions come back by themselves).
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        prefix: str = "fitsync",
        cluster: bool = False,
        timeout: float = 2.0,
    ) -> None:
        if not urls:
            raise ValueError("the Redis broker needs at least one Redis URL")
        self._urls = list(urls)
        self._cluster = cluster
        self._timeout = timeout
        self._keys = KeySpace(prefix)
        self._publish = b"SPUBLISH" if cluster else b"PUBLISH"
        self._layout = Layout(self._urls)
        self._shards: list[_Shard] = []
        self._control_shard = 0
        self._handler: BrokerEventHandler | None = None
        self._subscribed: dict[bytes, str] = {}
        """Pub/sub name → channel, for every channel this node is subscribed to."""

    @property
    def shard_urls(self) -> list[str]:
        """The Redis servers channels are spread over (a cluster's masters)."""
        return list(self._layout.urls)

    def shard_of(self, channel: str) -> int:
        """The index in `shard_urls` of the server holding `channel`."""
        return self._layout.shard_of(self._keys.channel(channel).tag)

    async def start(self, handler: BrokerEventHandler) -> None:
        self._handler = handler
        try:
            if self._cluster:
                self._layout = await discover_cluster(self._urls, self._timeout)
                self._control_shard = self._layout.shard_of(self._keys.control)
            for url in self._layout.urls:
                client = connect(url, self._timeout)
                shard = _Shard(
                    url,
                    client,
                    CommandPipeline(client),
                    CommandPipeline(client),
                    PubSubReader(
                        url,
                        sharded=self._cluster,
                        timeout=self._timeout,
                        deliver=self._deliver,
                        resubscribed=self._resubscribed,
                    ),
                )
                self._shards.append(shard)
                await shard.commands.load_scripts()
                await shard.pubsub.start()
            await self._shards[self._control_shard].pubsub.subscribe(self._keys.control)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        self._handler = None
        self._subscribed.clear()
        shards, self._shards = self._shards, []
        for shard in shards:
            await shard.close()

    async def subscribe(self, channel: str) -> None:
        keys = self._keys.channel(channel)
        self._subscribed[keys.pubsub] = channel
        try:
            await self._shard(keys).pubsub.subscribe(keys.pubsub)
        except BaseException:
            self._subscribed.pop(keys.pubsub, None)
            raise

    async def unsubscribe(self, channel: str) -> None:
        keys = self._keys.channel(channel)
        self._subscribed.pop(keys.pubsub, None)
        await self._shard(keys).pubsub.unsubscribe(keys.pubsub)

    async def publish(
        self,
        channel: str,
        data: bytes,
        *,
        info: ClientInfo | None = None,
        tags: dict[str, str] | None = None,
        history: HistoryOptions | None = None,
    ) -> StreamPosition:
        keys = self._keys.channel(channel)
        body = encode_publication(bytes(data), time.time_ns() // 1_000_000, info, tags)
        if history is not None and history.size > 0 and history.ttl > 0:
            retain: tuple[Any, ...] = (
                history.size,
                _ms(history.ttl),
                _ms(history.meta_ttl),
                _new_epoch(),
            )
        else:
            retain = (0, 0, 0, "")
        offset, epoch = await self._call(
            keys,
            PUBLISH.call((keys.meta, keys.stream), (keys.pubsub, body, *retain, self._publish)),
        )
        return StreamPosition(offset, epoch.decode())

    async def publish_control(self, data: bytes) -> None:
        shard = self._shards_or_raise()[self._control_shard]
        await shard.commands.call((self._publish, self._keys.control, data))

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        keys = self._keys.channel(channel)
        await self._call(keys, (self._publish, keys.pubsub, JOIN_PREFIX + encode_info(info)))

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        keys = self._keys.channel(channel)
        await self._call(keys, (self._publish, keys.pubsub, LEAVE_PREFIX + encode_info(info)))

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int = 0,
        reverse: bool = False,
        meta_ttl: float = 86400.0,
    ) -> HistoryResult:
        """Retained publications come back with the epoch they were published under. A stream
        expires as a whole `ttl` after its last publication (not one publication at a time)."""
        keys = self._keys.channel(channel)
        if not reverse:
            direction, offset = b"f", since.offset if since is not None else 0
        elif since is None:
            direction, offset = b"t", 0
        else:
            direction, offset = b"r", since.offset
        top, raw_epoch, entries = await self._call(
            keys,
            HISTORY.call(
                (keys.meta, keys.stream),
                (_ms(meta_ttl), _new_epoch(), limit, direction, offset),
            ),
        )
        epoch = raw_epoch.decode()
        publications = [
            decode_publication(fields[1], stream_offset(entry_id), epoch)
            for entry_id, fields in entries
        ]
        return HistoryResult(publications, StreamPosition(top, epoch))

    async def add_presence(
        self, channel: str, client_id: str, info: ClientInfo, ttl: float
    ) -> None:
        keys = self._keys.channel(channel)
        await self._shard(keys).presence.call(self._presence_add(keys, client_id, info, ttl))

    async def refresh_presence(self, entries: Iterable[PresenceEntry], ttl: float) -> None:
        """One pipeline per shard, whatever the number of entries."""
        shards = self._shards_or_raise()
        answers = []
        for channel, client_id, info in entries:
            keys = self._keys.channel(channel)
            command = self._presence_add(keys, client_id, info, ttl)
            answers.append(shards[self._layout.shard_of(keys.tag)].presence.submit(command))
        await asyncio.gather(*answers)

    async def remove_presence(self, channel: str, client_id: str) -> None:
        keys = self._keys.channel(channel)
        await self._shard(keys).presence.call(
            PRESENCE_REMOVE.call((keys.presence_set, keys.presence_hash), (client_id,))
        )

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        keys = self._keys.channel(channel)
        flat = await self._shard(keys).presence.call(
            PRESENCE_GET.call((keys.presence_set, keys.presence_hash), ())
        )
        return {flat[i].decode(): decode_info(flat[i + 1]) for i in range(0, len(flat), 2)}

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        present = await self.presence(channel)
        return len(present), len({info.user for info in present.values()})

    async def ping(self) -> None:
        """Every shard answers PING and has its pub/sub connection up."""
        for shard in self._shards_or_raise():
            await shard.commands.call((b"PING",))
            if not shard.pubsub.connected:
                raise BrokerUnavailable(f"Redis pub/sub connection to {shard.url} is down")

    def _presence_add(
        self, keys: ChannelKeys, client_id: str, info: ClientInfo, ttl: float
    ) -> tuple[Any, ...]:
        return PRESENCE_ADD.call(
            (keys.presence_set, keys.presence_hash), (_ms(ttl), client_id, encode_info(info))
        )

    def _shards_or_raise(self) -> list[_Shard]:
        if not self._shards:
            raise BrokerUnavailable("the Redis broker is not started")
        return self._shards

    def _shard(self, keys: ChannelKeys) -> _Shard:
        return self._shards_or_raise()[self._layout.shard_of(keys.tag)]

    async def _call(self, keys: ChannelKeys, command: tuple[Any, ...]) -> Any:
        return await self._shard(keys).commands.call(command)

    def _deliver(self, name: bytes, message: bytes) -> None:
        """A pub/sub message, decoded and handed to the handler (on the reader's task)."""
        handler = self._handler
        if handler is None:
            return
        try:
            if name == self._keys.control:
                handler.on_control(message)
                return
            channel = self._subscribed.get(name)
            if channel is None:
                return
            kind = message[0]
            if kind == KIND_PUBLICATION:
                handler.on_publication(channel, decode_published(message))
            elif kind == KIND_JOIN:
                handler.on_join(channel, decode_info(memoryview(message)[1:]))
            elif kind == KIND_LEAVE:
                handler.on_leave(channel, decode_info(memoryview(message)[1:]))
        except Exception:
            log.exception("handling a Redis message on %r failed", name)

    def _resubscribed(self, names: list[bytes]) -> None:
        handler = self._handler
        channels = [self._subscribed[name] for name in names if name in self._subscribed]
        if handler is not None and channels:
            try:
                handler.on_resubscribed(channels)
            except Exception:
                log.exception("on_resubscribed failed")
