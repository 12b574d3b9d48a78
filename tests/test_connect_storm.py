"""Connects that do not wait for the database: known users are answered from memory, new users
are created in batches, and a database that cannot keep up gets clients a temporary error."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event
from sqlalchemy.engine import make_url
from websockets.exceptions import InvalidStatus

from models import queries
from models.db import Database
from models.user_directory import DirectoryBusy, UserDirectory
from tests import harness
from tests.db_fixtures import create_postgres_database, drop_postgres_database, postgres_admin_url
from tests.harness import RunningHub, eventually, start_hub
from tests.raw import MakeHub, OpenRaw, OpenSdk

TEMPORARY_ERROR = 111


async def store_user(url: str, user_id: str, role: str = "athlete") -> None:
    """A user that exists before the node starts (created by another node, or the API)."""
    db = Database(url)
    await db.start()
    try:
        await queries.upsert_user(db, user_id, user_id.title(), role)
    finally:
        await db.close()


def record_statements(hub: RunningHub) -> list[str]:
    """Every SQL statement the hub's application sends through its engine from now on."""
    seen: list[str] = []

    def before_execute(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    engine = hub.node.application.db.engine.sync_engine  # type: ignore[attr-defined]
    event.listen(engine, "before_cursor_execute", before_execute)
    return seen


async def test_a_known_user_connects_without_a_database_statement(
    database_url: str, make_hub: MakeHub, raw: OpenRaw
) -> None:
    await store_user(database_url, "ann")
    hub = await make_hub(database_url)
    statements = record_statements(hub)

    known = await raw(hub)
    await known.connect(hub.token("ann"))
    assert statements == []

    new = await raw(hub)
    await new.connect(hub.token("bob"))
    written = [s for s in statements if not s.startswith("BEGIN")]
    assert len(written) == 1 and written[0].startswith("INSERT INTO users")


async def test_a_user_created_on_another_node_after_start_connects_and_is_kept(
    database_url: str, make_hub: MakeHub, raw: OpenRaw
) -> None:
    hub = await make_hub(database_url)
    await store_user(database_url, "cy", role="trainer")

    client = await raw(hub)
    await client.connect(hub.token("cy", "trainer"))

    db = Database(database_url)
    await db.start()
    try:
        stored = await queries.get_user(db, "cy")
    finally:
        await db.close()
    assert stored is not None and stored["name"] == "Cy" and stored["role"] == "trainer"


async def test_new_users_connecting_at_once_all_exist_once_connected(
    database_url: str, make_hub: MakeHub, sdk: OpenSdk
) -> None:
    hub = await make_hub(database_url)
    users = [f"new-{i}" for i in range(20)]
    await asyncio.gather(*(sdk(hub, hub.token(u)) for u in users))

    directory: UserDirectory = hub.node.application.users  # type: ignore[attr-defined]
    assert all(directory.known(u) for u in users)
    db = Database(database_url)
    await db.start()
    try:
        stored = [await queries.get_user(db, u) for u in users]
    finally:
        await db.close()
    assert [s["role"] if s else None for s in stored] == ["athlete"] * len(users)


async def test_users_created_together_share_one_insert_and_existing_ones_are_kept(
    database: Database,
) -> None:
    await queries.upsert_user(database, "ann", "Ann", "trainer")
    directory = UserDirectory(database)
    await directory.load()
    assert directory.known("ann") and not directory.known("u0")

    await asyncio.gather(
        *(directory.create(f"u{i}", "athlete") for i in range(50)),
        directory.create("ann", "athlete"),
    )

    assert directory.batches_committed == 1 and directory.ids_committed == 50
    assert all(directory.known(f"u{i}") for i in range(50))
    assert (await queries.get_user(database, "u49") or {}).get("role") == "athlete"
    ann = await queries.get_user(database, "ann")
    assert ann is not None and (ann["name"], ann["role"]) == ("Ann", "trainer")


async def test_creating_beyond_the_waiting_limit_is_refused_at_once(database: Database) -> None:
    directory = UserDirectory(database, max_waiting=2)

    outcomes = await asyncio.gather(
        *(directory.create(f"u{i}", "athlete") for i in range(3)), return_exceptions=True
    )

    assert outcomes[:2] == [None, None]
    assert isinstance(outcomes[2], DirectoryBusy)
    assert await queries.get_user(database, "u2") is None


@pytest.fixture
async def write_lock(database_url: str) -> AsyncIterator[Callable[[], Any]]:
    """`await take()` holds the database's write lock on `users` until the test ends or
    calls the release function it returns."""
    held: list[Callable[[], Any]] = []
    opened: list[sqlite3.Connection] = []

    async def take() -> Callable[[], Any]:
        if database_url.startswith("sqlite"):
            conn = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
            opened.append(conn)
            conn.execute("BEGIN IMMEDIATE")

            async def release_sqlite() -> None:
                if conn.in_transaction:  # False once released: the lock is gone
                    conn.execute("ROLLBACK")

            held.append(release_sqlite)
            return release_sqlite
        pg = await asyncpg.connect(database_url)
        transaction = pg.transaction()
        await transaction.start()
        await pg.execute("LOCK TABLE users IN EXCLUSIVE MODE")

        async def release_postgres() -> None:
            if not pg.is_closed():
                await transaction.rollback()
                await pg.close()

        held.append(release_postgres)
        return release_postgres

    yield take
    for release in held:
        await release()
    for conn in opened:
        conn.close()


async def test_a_new_user_hears_a_temporary_error_while_the_database_is_stuck(
    database_url: str, make_hub: MakeHub, raw: OpenRaw, write_lock: Callable[[], Any]
) -> None:
    hub = await make_hub(database_url)
    release = await write_lock()

    client = await raw(hub)
    reply = await client.command("connect", {"token": hub.token("dee")}, timeout=30)
    assert reply["error"]["code"] == TEMPORARY_ERROR and reply["error"]["temporary"] is True

    await release()
    again = await raw(hub)
    await again.connect(hub.token("dee"))
    directory: UserDirectory = hub.node.application.users  # type: ignore[attr-defined]
    await eventually(lambda: directory.known("dee"))


async def test_with_the_database_unreachable_known_users_connect_and_new_ones_retry_later(
    raw: OpenRaw,
) -> None:
    url = await create_postgres_database()
    name = make_url(url).database
    admin = await asyncpg.connect(postgres_admin_url())
    hub: RunningHub | None = None
    try:
        await store_user(url, "ann")
        hub = await start_hub(harness.test_settings(url))
        await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )

        known = await raw(hub)
        await known.connect(hub.token("ann"))
        new = await raw(hub)
        reply = await new.command("connect", {"token": hub.token("eve")}, timeout=30)
        assert reply["error"]["code"] == TEMPORARY_ERROR and reply["error"]["temporary"] is True
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        await admin.close()
        if hub is not None:
            await hub.stop()
        await drop_postgres_database(url)


async def test_the_listen_queue_is_as_long_as_configured(make_hub: MakeHub) -> None:
    hub = await make_hub(listen_backlog=77)

    done = await asyncio.to_thread(
        subprocess.run, ["ss", "-Hltn", f"sport = :{hub.settings.port}"], capture_output=True,
        text=True, check=True,
    )
    listening = done.stdout.split()

    assert listening[0] == "LISTEN" and listening[2] == "77"  # Send-Q: the backlog


async def test_a_connect_the_database_delays_is_answered_not_closed_as_stale(
    database_url: str, make_hub: MakeHub, raw: OpenRaw, write_lock: Callable[[], Any]
) -> None:
    hub = await make_hub(database_url, connect_timeout=0.5)
    await write_lock()

    client = await raw(hub)
    reply = await client.command("connect", {"token": hub.token("fay")}, timeout=30)

    assert reply["error"]["code"] == TEMPORARY_ERROR and reply["error"]["temporary"] is True
    assert await client.close_code(timeout=5) == 3502  # it did not retry: now it is stale


async def test_handshakes_beyond_the_connects_waiting_are_refused_503_until_one_is_answered(
    make_hub: MakeHub, raw: OpenRaw, sdk: OpenSdk
) -> None:
    """A node whose queue of unanswered connects is full answers new handshakes at once with
    503, which the SDKs meet with a jittered reconnect; answering a connect makes room."""
    hub = await make_hub(max_connecting=2)
    waiting = [await raw(hub), await raw(hub)]  # sockets open, no connect sent yet

    with pytest.raises(InvalidStatus) as refused:
        await raw(hub)
    assert refused.value.response.status_code == 503
    assert b"busy" in refused.value.response.body
    assert hub.node.metrics.handshakes_refused_busy._value.get() == 1
    _, events = await sdk(hub, hub.token("cy"), ready=False, min_reconnect_delay=0.05,
                          max_reconnect_delay=0.2)
    await eventually(lambda: hub.node.metrics.handshakes_refused_busy._value.get() >= 2)
    assert not events.named("connected")  # refused, and retrying

    await waiting[0].connect(hub.token("ann"))  # answered: room for one
    await eventually(lambda: events.named("connected"), timeout=10)
    await waiting[1].close()
    await eventually(lambda: hub.node.connecting == 0)
