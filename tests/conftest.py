"""Fixtures shared by the whole suite: a running hub and SDK clients connected to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import centrifuge
import pytest

from hub.broker.base import Broker
from tests.harness import Recorder, RunningHub, start_hub, test_settings

pytest_plugins = ["tests.db_fixtures", "tests.raw", "tests.web_fixtures", "tests.coach_helpers"]

ConnectClient = Callable[..., Awaitable[tuple[centrifuge.Client, Recorder]]]


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[RunningHub]:
    """A hub on its embedded defaults: SQLite file, in-process broker."""
    running = await start_hub(test_settings(f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}"))
    yield running
    await running.stop()


@pytest.fixture
async def make_hub(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[RunningHub]]]:
    """A hub with settings changed for one test (short timeouts, small limits)."""
    started: list[RunningHub] = []

    async def make(database_url: str | None = None, *, broker: Broker | None = None,
                   **overrides: Any) -> RunningHub:
        url = database_url or f"sqlite+aiosqlite:///{tmp_path / f'hub{len(started)}.db'}"
        running = await start_hub(test_settings(url, **overrides), broker=broker)
        started.append(running)
        return running

    yield make
    for running in started:
        await running.stop()


@pytest.fixture
async def connect(hub: RunningHub) -> AsyncIterator[ConnectClient]:
    """Connect an official SDK client as `user` with `role`; disconnected after the test."""
    clients: list[centrifuge.Client] = []

    async def make(user: str, role: str = "athlete", *, target: RunningHub | None = None,
                   **options: Any) -> tuple[centrifuge.Client, Recorder]:
        where = target or hub
        recorder = Recorder()
        token = options.pop("token", None) or where.token(user, role,
                                                          device=options.pop("device", None))
        client = centrifuge.Client(where.ws_url, events=recorder, token=token, **options)
        await client.connect()
        await client.ready(timeout=5)
        clients.append(client)
        return client, recorder

    yield make
    for client in clients:
        await client.disconnect()
