"""One node's pub/sub connection to one Redis server, kept alive for the node's lifetime.

A node has one of these per shard (per cluster master), whatever the number of channels and
clients: channels are added and removed on it with SUBSCRIBE / UNSUBSCRIBE (SSUBSCRIBE /
SUNSUBSCRIBE on a cluster). One task reads it and hands every message to `deliver`
synchronously, in the order Redis sent them, so a channel's publications arrive in the order
they were published.

When the connection is lost (Redis died, restarted, or stopped answering PINGs), the reader
connects again with capped, jittered exponential backoff (at most `RECONNECT_CAP` seconds
between attempts, so a Redis that is back is found within a second), subscribes every channel
still wanted, and once Redis confirmed all of them calls `resubscribed` with them, before
delivering any message received after the reconnect. Messages published while it was down are
not delivered: the caller reads them from history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterable
from typing import Any

from redis.asyncio.connection import AbstractConnection, Connection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from hub.broker.base import BrokerUnavailable

log = logging.getLogger("hub.broker.redis")

RECONNECT_FIRST = 0.05
RECONNECT_CAP = 0.8
"""Seconds: the first reconnect delay, doubling per failed attempt up to the cap; each delay
is drawn between half and all of that. With connecting and subscribing again taking a few
milliseconds, channels are subscribed again within one second of Redis accepting
connections."""

HEALTH_INTERVAL = 2.0
"""Seconds of silence after which the reader sends a PING; no answer for as long again and the
connection counts as lost (a half-open TCP connection never says so itself)."""

SUBSCRIBE_BATCH = 500
"""Channels per SUBSCRIBE when subscribing many at once after a reconnect."""

Deliver = Callable[[bytes, bytes], None]
Resubscribed = Callable[[list[bytes]], None]


def reconnect_delay(failures: int) -> float:
    ceiling = min(RECONNECT_CAP, RECONNECT_FIRST * 2 ** min(failures, 16))
    delay: float = ceiling * random.uniform(0.5, 1.0)
    return delay


def _connection(url: str, timeout: float) -> AbstractConnection:
    kwargs: dict[str, Any] = dict(parse_url(url))
    connection_class = kwargs.pop("connection_class", Connection)
    connection: AbstractConnection = connection_class(
        **kwargs,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
        protocol=2,
    )
    return connection


class PubSubReader:
    """The pub/sub connection of one shard and the task that reads it."""

    def __init__(
        self,
        url: str,
        *,
        sharded: bool,
        timeout: float,
        deliver: Deliver,
        resubscribed: Resubscribed,
    ) -> None:
        self._url = url
        self._timeout = timeout
        self._deliver = deliver
        self._resubscribed = resubscribed
        if sharded:
            self._subscribe_cmd, self._unsubscribe_cmd = b"SSUBSCRIBE", b"SUNSUBSCRIBE"
            self._confirmed, self._message = b"ssubscribe", b"smessage"
        else:
            self._subscribe_cmd, self._unsubscribe_cmd = b"SUBSCRIBE", b"UNSUBSCRIBE"
            self._confirmed, self._message = b"subscribe", b"message"
        self._batch = 1 if sharded else SUBSCRIBE_BATCH
        """SSUBSCRIBE takes several channels only of one slot: one per command."""
        self._wanted: set[bytes] = set()
        self._waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self._connection: AbstractConnection | None = None
        """Set while connected with every wanted channel's SUBSCRIBE sent."""
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._connection is not None

    async def start(self) -> None:
        """Start reading; raise BrokerUnavailable if Redis cannot be reached by the timeout."""
        self._task = asyncio.create_task(self._run(), name=f"redis pub/sub {self._url}")
        try:
            await asyncio.wait_for(self._connected.wait(), self._timeout)
        except TimeoutError:
            raise BrokerUnavailable(f"Redis at {self._url} cannot be reached") from None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._wanted.clear()

    async def subscribe(self, name: bytes) -> None:
        """Return once Redis confirmed the subscription: what is published to `name` from then
        on is delivered (until the connection is lost)."""
        connection = self._connection
        if connection is None:
            raise BrokerUnavailable(f"Redis at {self._url} is not connected")
        self._wanted.add(name)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(name, []).append(waiter)
        try:
            await self._send(connection, self._subscribe_cmd, name)
            await asyncio.wait_for(asyncio.shield(waiter), self._timeout)
        except BaseException as error:
            self._wanted.discard(name)
            self._forget_waiter(name, waiter)
            if isinstance(error, TimeoutError | RedisError | OSError):
                raise BrokerUnavailable(
                    f"Redis did not confirm the subscription: {error}") from error
            raise

    async def unsubscribe(self, name: bytes) -> None:
        """Stop delivering `name` at once; Redis is told when it can be (after a lost
        connection the channel is simply not subscribed again)."""
        self._wanted.discard(name)
        connection = self._connection
        if connection is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._send(connection, self._unsubscribe_cmd, name)

    @staticmethod
    async def _send(connection: AbstractConnection, *command: bytes) -> None:
        # Shielded: a caller cancelled mid-write must not cut the connection every channel of
        # the shard shares.
        await asyncio.shield(connection.send_command(*command, check_health=False))

    def _forget_waiter(self, name: bytes, waiter: asyncio.Future[None]) -> None:
        waiters = self._waiters.get(name)
        if waiters is not None and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self._waiters[name]

    async def _run(self) -> None:
        failures = 0
        was_connected = False
        while True:
            connection = _connection(self._url, self._timeout)
            try:
                await connection.connect()  # type: ignore[no-untyped-call]
                names = sorted(self._wanted)
                for start in range(0, len(names), self._batch):
                    await self._send(
                        connection, self._subscribe_cmd, *names[start : start + self._batch]
                    )
                self._connection = connection
                self._connected.set()
                if was_connected:
                    log.warning(
                        "Redis at %s is back; subscribing %d channels again", self._url, len(names)
                    )
                failures = 0
                await self._read(connection, set(names) if was_connected else set())
            except (RedisError, OSError) as error:
                if self._connection is not None:
                    log.warning("Redis pub/sub connection to %s lost: %s", self._url, error)
                elif failures == 0:
                    log.warning("Redis at %s cannot be reached: %s", self._url, error)
            except Exception:  # a bug must cost a reconnect, never the node's fan-out
                log.exception("Redis pub/sub reader for %s failed", self._url)
            finally:
                if self._connection is not None:
                    was_connected = True
                self._connection = None
                self._fail_waiters()
                await connection.disconnect(nowait=True)
            await asyncio.sleep(reconnect_delay(failures))
            failures += 1

    def _fail_waiters(self) -> None:
        waiters, self._waiters = self._waiters, {}
        for waiter in (w for pending in waiters.values() for w in pending):
            if not waiter.done():
                waiter.set_exception(BrokerUnavailable("Redis pub/sub connection lost"))

    async def _read(self, connection: AbstractConnection, resubscribing: set[bytes]) -> None:
        """Read until the connection fails. While `resubscribing` is not empty, messages wait
        so that `resubscribed` comes before them."""
        names = sorted(resubscribing)
        held: list[tuple[bytes, bytes]] = []
        pinged = False
        while True:
            reply = await connection.read_response(timeout=HEALTH_INTERVAL)
            if reply is None:
                if pinged:
                    raise ConnectionError(f"Redis at {self._url} does not answer PING")
                await self._send(connection, b"PING")
                pinged = True
                continue
            pinged = False
            kind = reply[0]
            if kind == self._message:
                name = reply[1]
                if name not in self._wanted:
                    continue
                if resubscribing:
                    held.append((name, reply[2]))
                else:
                    self._deliver(name, reply[2])
            elif kind == self._confirmed:
                name = reply[1]
                for waiter in self._waiters.pop(name, ()):
                    if not waiter.done():
                        waiter.set_result(None)
                if resubscribing:
                    resubscribing.discard(name)
                    if not resubscribing:
                        self._resubscribed([n for n in names if n in self._wanted])
                        self._deliver_held(held)
                        held = []

    def _deliver_held(self, held: Iterable[tuple[bytes, bytes]]) -> None:
        for name, data in held:
            if name in self._wanted:
                self._deliver(name, data)
