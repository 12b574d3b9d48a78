"""Small steps the FitSync behaviour tests share: subscribing, RPCs, links and sessions.

Everything goes through the official SDK or the HTTP API, as the app and its backend would.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import centrifuge
import pytest
from sqlalchemy.engine import make_url

from tests.db_fixtures import postgres_admin_url
from tests.harness import Recorder, RunningHub, eventually

ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
SUMMARY_KEYS = {"sets", "reps", "volume_kg", "duration_s", "avg_bpm", "max_bpm"}


async def subscribe(client: centrifuge.Client, channel: str,
                    **options: Any) -> tuple[centrifuge.Subscription, Recorder]:
    """Subscribe and wait for the outcome, granted (`subscribed`) or refused (`unsubscribed`)."""
    events = Recorder()
    sub = client.new_subscription(channel, events=events, **options)
    await sub.subscribe()
    await eventually(lambda: events.named("subscribed") or events.named("unsubscribed"))
    return sub, events


def refusal(events: Recorder) -> int | None:
    """The code a subscription was refused with, or None when it was granted."""
    refused = events.named("unsubscribed")
    return refused[0].code if refused else None


async def reply_error(call: Awaitable[Any]) -> centrifuge.ReplyError:
    """The error reply a command got; fails the test when the command succeeded."""
    with pytest.raises(centrifuge.ReplyError) as caught:
        await call
    return caught.value


async def rpc(client: centrifuge.Client, method: str, data: Any = None) -> Any:
    return (await client.rpc(method, {} if data is None else data)).data


async def start_session(client: centrifuge.Client, title: str = "") -> str:
    started = await rpc(client, "session.start", {"title": title} if title else {})
    return str(started["session_id"])


async def link(hub: RunningHub, trainer: str, client: str) -> None:
    async with hub.api() as api:
        r = await api.put(f"/api/trainers/{trainer}/clients/{client}")
    assert r.status_code == 200, r.text


async def session_sets(hub: RunningHub, session_id: str) -> list[dict[str, Any]]:
    async with hub.api() as api:
        r = await api.get(f"/api/sessions/{session_id}")
    assert r.status_code == 200, r.text
    sets: list[dict[str, Any]] = r.json()["sets"]
    return sets


def a_set(event_id: str, reps: int = 10, weight_kg: float = 50, **extra: Any) -> dict[str, Any]:
    return {"type": "set", "event_id": event_id, "exercise": "squat", "reps": reps,
            "weight_kg": weight_kg, **extra}


def hr(event_id: str, *bpms: int) -> dict[str, Any]:
    return {"type": "hr", "event_id": event_id,
            "samples": [[1_700_000_000_000 + i * 1000, bpm] for i, bpm in enumerate(bpms)]}


@asynccontextmanager
async def connection_switch(
        database_url: str) -> AsyncIterator[Callable[[bool], Awaitable[None]]]:
    """`allow(False)` makes a PostgreSQL test database refuse connections and ends the open
    ones, as an outage would; `allow(True)` (and leaving the block) brings it back."""
    name = make_url(database_url).database
    admin = await asyncpg.connect(postgres_admin_url())

    async def allow(allowed: bool) -> None:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE datname = $1 AND pid <> pg_backend_pid()", name)

    try:
        yield allow
    finally:
        await allow(True)
        await admin.close()
