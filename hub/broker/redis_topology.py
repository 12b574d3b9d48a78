"""Which Redis server holds a channel: one, several (sharded by the hub), or a Redis Cluster.

- One URL: everything on it.
- Several URLs: each channel lives on one of them, chosen by a jump consistent hash of the
  channel's name (adding a shard moves only about 1/N of the channels).
- A cluster (`HUB_REDIS_CLUSTER=1`, the URLs being seed nodes): the hash slot of the channel's
  hash tag, as Redis Cluster computes it, and the master that serves the slot according to
  CLUSTER SLOTS read when the broker starts. The layout is read once: a cluster resharded while
  nodes run answers MOVED, which the broker reports as unavailable until the nodes restart.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import RedisError

from hub.broker.base import BrokerUnavailable
from hub.broker.redis_commands import connect

_JUMP_MULTIPLIER = 2862933555777941757
_U64 = (1 << 64) - 1


def jump_hash(key: int, buckets: int) -> int:
    """Lamping and Veach's jump consistent hash: a bucket in [0, buckets) for a 64-bit key."""
    bucket, candidate = -1, 0
    while candidate < buckets:
        bucket = candidate
        key = (key * _JUMP_MULTIPLIER + 1) & _U64
        candidate = int((bucket + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return bucket


@dataclass(frozen=True, slots=True)
class Layout:
    """The shards' URLs and how a channel's hash tag picks one of them."""

    urls: list[str]
    slot_owners: list[int] | None = None
    """Cluster only: the index in `urls` of the master serving each hash slot."""

    @property
    def cluster(self) -> bool:
        return self.slot_owners is not None

    def shard_of(self, tag: bytes) -> int:
        if self.slot_owners is not None:
            return self.slot_owners[key_slot(tag)]
        if len(self.urls) == 1:
            return 0
        digest = hashlib.blake2b(tag, digest_size=8).digest()
        return jump_hash(int.from_bytes(digest, "little"), len(self.urls))


def _with_address(url: str, host: str, port: int) -> str:
    """`url` (its scheme, credentials and options) pointed at another server."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    netloc = f"{credentials}@{address}" if credentials else address
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def discover_cluster(seeds: list[str], timeout: float) -> Layout:
    """The cluster's masters and slot map, asked of the first seed that answers."""
    failures: list[str] = []
    for seed in seeds:
        client = connect(seed, timeout)
        try:
            ranges = await client.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
        except (RedisError, OSError) as error:
            failures.append(f"{seed}: {error}")
            continue
        finally:
            await client.aclose()
        return _layout(seed, ranges)
    raise BrokerUnavailable("no Redis Cluster seed answered: " + "; ".join(failures))


def _layout(seed: str, ranges: list[list[object]]) -> Layout:
    seed_host = urlsplit(seed).hostname or "127.0.0.1"
    urls: list[str] = []
    owners = [-1] * REDIS_CLUSTER_HASH_SLOTS
    for first, last, master, *_replicas in ranges:
        assert isinstance(first, int) and isinstance(last, int) and isinstance(master, list)
        host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
        url = _with_address(seed, host or seed_host, int(master[1]))
        if url not in urls:
            urls.append(url)
        owners[first : last + 1] = [urls.index(url)] * (last - first + 1)
    if -1 in owners:
        raise BrokerUnavailable("the Redis Cluster does not serve every hash slot")
    return Layout(urls, owners)
