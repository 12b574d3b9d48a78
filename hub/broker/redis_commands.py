"""One Redis server's command side: its Lua scripts and a pipeline that batches every caller.

Commands go through a `CommandPipeline`. Commands issued while a batch is on the wire wait
for it and then go together as the next one, so N concurrent publishes cost a handful of round
trips rather than N, and a caller alone still pays only one. One batch is in flight at a time,
so commands reach Redis in the order they were issued.

Scripts are called by SHA. Redis forgets scripts when it restarts or on SCRIPT FLUSH: a command
answered NOSCRIPT is sent again after loading the scripts, transparently to its caller.

Every failure to reach Redis (refused, lost, timed out) is raised as `BrokerUnavailable`; so are
the answers of a cluster in transition (MOVED, ASK, TRYAGAIN, CLUSTERDOWN, LOADING), of a Redis
out of memory (OOM: it then refuses every script whole, so nothing was written) and of a
replica that became read-only (READONLY). redis-py's own retries are off: a publish sent twice
would be published twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    MovedError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    TryAgainError,
)

from hub.broker.base import BrokerUnavailable

log = logging.getLogger("hub.broker.redis")

Command = tuple[Any, ...]

_TRANSIENT_ANSWERS = (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    MovedError,
    OutOfMemoryError,
    ReadOnlyError,
    TryAgainError,
)


class Script:
    """A Lua script shipped in hub/broker/lua, known by the SHA1 Redis gives it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = resources.files("hub.broker").joinpath(f"lua/{name}.lua").read_bytes()
        self.sha = hashlib.sha1(self.source).hexdigest()

    def call(self, keys: Sequence[bytes], args: Sequence[Any]) -> Command:
        return ("EVALSHA", self.sha, len(keys), *keys, *args)


PUBLISH = Script("publish")
HISTORY = Script("history")
PRESENCE_ADD = Script("presence_add")
PRESENCE_GET = Script("presence_get")
PRESENCE_REMOVE = Script("presence_remove")
SCRIPTS = (PUBLISH, HISTORY, PRESENCE_ADD, PRESENCE_GET, PRESENCE_REMOVE)


def connect(url: str, timeout: float) -> aioredis.Redis:
    """A client for `url` that gives up after `timeout` seconds and never retries by itself."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


def unavailable(error: BaseException) -> BrokerUnavailable:
    return BrokerUnavailable(f"Redis: {error}")


class CommandPipeline:
    """Commands of any number of callers to one Redis, sent as one pipeline per round trip."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._queue: list[tuple[Command, asyncio.Future[Any]]] = []
        self._sender: asyncio.Task[None] | None = None
        self._closed = False

    async def load_scripts(self) -> None:
        """SCRIPT LOAD every script (they are called by SHA, which this makes valid)."""
        try:
            for script in SCRIPTS:
                await self.client.script_load(script.source)
        except (RedisError, OSError) as error:
            raise unavailable(error) from error

    async def call(self, command: Command) -> Any:
        """Send `command` with the next batch and return its answer."""
        return await self.submit(command)

    def submit(self, command: Command) -> asyncio.Future[Any]:
        """Queue `command` for the next batch: commands submitted without awaiting in between
        go in the same one."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._closed:
            future.set_exception(BrokerUnavailable("Redis broker is closed"))
            return future
        self._queue.append((command, future))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_batches())
        return future

    async def close(self) -> None:
        """Fail what is still queued; the client is its owner's to close."""
        self._closed = True
        if self._sender is not None:
            self._sender.cancel()
            try:
                await self._sender
            except asyncio.CancelledError:
                pass
        self._fail(self._queue, BrokerUnavailable("Redis broker is closed"))
        self._queue = []

    async def _send_batches(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    answers = await self._execute([command for command, _ in batch])
                except asyncio.CancelledError:
                    self._fail(batch, BrokerUnavailable("Redis broker is closed"))
                    raise
                except (RedisError, OSError) as error:
                    self._fail(batch, unavailable(error))
                    continue
                except Exception as error:  # noqa: BLE001 - to the callers, not a dead task
                    self._fail(batch, error)
                    continue
                for (_, future), answer in zip(batch, answers, strict=True):
                    if future.done():
                        continue
                    if isinstance(answer, _TRANSIENT_ANSWERS):
                        future.set_exception(unavailable(answer))
                    elif isinstance(answer, BaseException):
                        future.set_exception(answer)
                    else:
                        future.set_result(answer)
        finally:
            self._sender = None

    async def _execute(self, commands: list[Command]) -> list[Any]:
        """Answers to `commands` in order (errors as exceptions in place); commands answered
        NOSCRIPT are sent again, in their order, once the scripts are loaded."""
        answers = await self._pipeline(commands)
        missing = [i for i, answer in enumerate(answers) if isinstance(answer, NoScriptError)]
        if missing:
            log.info("Redis lost its scripts (restarted or flushed): loading them again")
            await self.load_scripts()
            answers = await self._pipeline([commands[i] for i in missing])
            for i, answer in zip(missing, answers, strict=True):
                answers[i] = answer
        return answers

    async def _pipeline(self, commands: list[Command]) -> list[Any]:
        pipeline = self.client.pipeline(transaction=False)
        for command in commands:
            pipeline.execute_command(*command)
        answers: list[Any] = await pipeline.execute(raise_on_error=False)
        return answers

    @staticmethod
    def _fail(batch: list[tuple[Command, asyncio.Future[Any]]], error: Exception) -> None:
        for _, future in batch:
            if not future.done():
                future.set_exception(error)

