"""Redis for the broker tests: the shared one on 6379 under a prefix of this run, three private
servers for sharding, and a private three-master cluster, each started once per session."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from hub.broker.base import Broker
from hub.broker.redis import RedisBroker
from tests.broker.redis_servers import RedisServer, redis_cluster, redis_servers

SHARED_REDIS = "redis://127.0.0.1:6379"

BrokerFactory = Callable[[], Broker]


@pytest.fixture(scope="session")
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test run on the shared Redis; its keys are deleted afterwards."""
    prefix = f"fitsync-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    with redis.Redis.from_url(SHARED_REDIS) as client:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])


@pytest.fixture(scope="session")
def sharded_redis() -> Iterator[list[RedisServer]]:
    with redis_servers(3) as servers:
        yield servers


@pytest.fixture(scope="session")
def clustered_redis() -> Iterator[list[RedisServer]]:
    with redis_cluster(3) as servers:
        yield servers


@pytest.fixture(scope="session")
def redis_broker_factory(redis_prefix: str) -> BrokerFactory:
    return lambda: RedisBroker([SHARED_REDIS], prefix=redis_prefix)


@pytest.fixture(scope="session")
def sharded_redis_broker_factory(sharded_redis: list[RedisServer]) -> BrokerFactory:
    return lambda: RedisBroker([server.url for server in sharded_redis], prefix="fitsync")


@pytest.fixture(scope="session")
def clustered_redis_broker_factory(clustered_redis: list[RedisServer]) -> BrokerFactory:
    return lambda: RedisBroker([clustered_redis[0].url], prefix="fitsync", cluster=True)
