"""Which users exist, answered without a database round trip; unknown ones created in batches.

Every connect names its user in the token, and that user must exist before anything that
refers to it is stored (a session, a trainer link, a coach message). Asking the database on
every connect costs a round trip per connection, and a reconnect storm turns those into a
queue for the connection pool that outlasts the clients' timeouts. Instead:

* `load()` reads every user id once, at start (one query); `known()` is then a set lookup.
  Users are never deleted, so an id in the set always names a stored user.
* An id not in the set (a first connect, or a user another node created since this one
  started) goes through `create()`: queued, and written together with every other id queued
  meanwhile in one `INSERT … ON CONFLICT DO NOTHING`, one batch in flight, as set events are
  (`models.event_writer`). The caller resumes after the commit, so the user exists before its
  connect is answered, whichever node inserted it first; an existing row is never changed.
  Creating users off the connect path instead would let a `session.start` race the insert.
* Bounded: at most `max_waiting` ids wait at once, and a caller waits at most
  `wait_timeout` seconds. Beyond either, `create()` raises `DirectoryBusy` at once (the
  batch still commits, idempotently), so the caller can answer with a temporary error that
  clients retry with backoff, instead of a queue that grows until they time out.

Memory: one string per user (about 100 bytes with its set slot: ~100 MB per million users).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy import select

from models.db import Database
from models.queries import USER_ROLES
from models.tables import users, utcnow

MAX_BATCH = 1000
"""Rows per INSERT: a storm of new users commits in a few round trips."""
MAX_WAITING = 5000
WAIT_TIMEOUT_S = 3.0
"""Below the SDKs' default command timeout (5 s), so a slow database gets a reply in time."""

log = logging.getLogger("models.user_directory")


class DirectoryBusy(Exception):
    """Too many users waiting to be created, or their batch did not commit in time."""


class UserDirectory:
    """One per node: `load()` at start, then `known()` and `create()` from any task."""

    def __init__(
        self,
        db: Database,
        *,
        max_batch: int = MAX_BATCH,
        max_waiting: int = MAX_WAITING,
        wait_timeout: float = WAIT_TIMEOUT_S,
    ) -> None:
        self._db = db
        self._max_batch = max_batch
        self._max_waiting = max_waiting
        self._wait_timeout = wait_timeout
        self._known: set[str] = set()
        self._waiting: dict[str, tuple[str, asyncio.Future[None]]] = {}
        """user id → (role, future resolved once its row is committed), in arrival order."""
        self._in_flight: asyncio.Task[None] | None = None
        self.batches_committed = 0
        """INSERTs so far; with `ids_committed` (existing users included), shows how well
        creations group."""
        self.ids_committed = 0

    async def load(self) -> None:
        """Read every stored user id (one query)."""
        async with self._db.read() as conn:
            self._known.update((await conn.execute(select(users.c.id))).scalars())

    def known(self, user_id: str) -> bool:
        return user_id in self._known

    async def create(self, user_id: str, role: str) -> None:
        """Make sure the user is stored (with `role` if it was not): returns after the commit.

        Raises `DirectoryBusy` when `max_waiting` ids already wait or the commit takes longer
        than `wait_timeout`, and the database's error when the batch failed (nothing of it
        was stored; calling again is safe).
        """
        if role not in USER_ROLES:
            raise ValueError(f"role must be one of {', '.join(USER_ROLES)}, got {role!r}")
        if user_id in self._known:
            return
        pending = self._waiting.get(user_id)
        if pending is None:
            if len(self._waiting) >= self._max_waiting:
                raise DirectoryBusy(f"{len(self._waiting)} users already wait to be created")
            pending = (role, asyncio.get_running_loop().create_future())
            self._waiting[user_id] = pending
            if self._in_flight is None:
                self._in_flight = asyncio.get_running_loop().create_task(self._write())
        try:
            async with asyncio.timeout(self._wait_timeout):
                await asyncio.shield(pending[1])
        except TimeoutError:
            raise DirectoryBusy(f"user not created within {self._wait_timeout:g} s") from None

    async def close(self) -> None:
        """Wait for the batches in flight; afterwards nothing is written."""
        while self._in_flight is not None:
            await asyncio.wait([self._in_flight])

    async def _write(self) -> None:
        """Insert batches until nobody waits; every waiter hears its batch's outcome."""
        try:
            while self._waiting:
                batch = [
                    (user_id, self._waiting.pop(user_id))
                    for user_id in list(self._waiting)[: self._max_batch]
                ]
                await self._commit(batch)
        finally:
            self._in_flight = None

    async def _commit(self, batch: list[tuple[str, tuple[str, asyncio.Future[None]]]]) -> None:
        now = utcnow()
        rows: list[dict[str, Any]] = [
            {"id": user_id, "name": "", "role": role, "created_at": now}
            for user_id, (role, _) in batch
        ]
        stmt = self._db.insert(users).on_conflict_do_nothing(index_elements=[users.c.id])
        try:
            async with self._db.write() as conn:
                await conn.execute(stmt, rows)
        except BaseException as exc:
            log.warning("could not create %d users", len(batch), exc_info=True)
            error = exc if isinstance(exc, Exception) else RuntimeError("user creation stopped")
            for _, (_, future) in batch:
                if not future.done():
                    future.set_exception(error)
                    future.exception()  # retrieved: a waiter that timed out is not told
            if not isinstance(exc, Exception):
                raise
            return
        self.batches_committed += 1
        self.ids_committed += len(batch)
        for user_id, (_, future) in batch:
            self._known.add(user_id)
            if not future.done():
                future.set_result(None)
