"""The baseline for `bench/coach.py --server baseline`: the least a server must do for the coach
bench's traffic, to tell what the machine costs from what the hub adds.

It speaks only the Centrifuge JSON commands the bench sends, on plain `websockets` (uvloop, as
the hub):
- `connect` is answered at once (no token check), `subscribe` adds the connection to the
  channel's watchers (no history, no presence, no permissions);
- `rpc coach.ask` is answered at once and streams the answer to the asking connection's
  channel with the hub's own model reader (`channels.coach_model.read_answer`: the same
  `openai` client, the same window), each delta sent to every watcher with
  `websockets.broadcast`, then `done`; nothing is stored, no prompt is read;
- `publish` (the live device's set events) stores the event, one insert committed per event
  (asyncpg to `--database-url`, else SQLite through aiosqlite), and is answered after the
  commit, as the hub acknowledges after its commit; `rpc session.start` answers a session id.

The settings (`HUB_COACH_*`) are the hub's, from the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import tempfile
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
import orjson
import uvloop
import websockets
from websockets.asyncio.server import Request, Response, ServerConnection, broadcast, serve

from channels.coach_model import model_client, read_answer
from hub.config import Settings

CREATE_PG = "CREATE TABLE IF NOT EXISTS events (id BIGSERIAL PRIMARY KEY, data TEXT NOT NULL)"
Store = Callable[[bytes], Awaitable[None]]


def health(connection: ServerConnection, request: Request) -> Response | None:
    if request.path == "/healthz":
        return connection.respond(HTTPStatus.OK, "ok\n")
    return None


class Baseline:
    """Channels by name with their watchers, the model client, and where events are stored."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.client = model_client(settings)
        self.store = store
        self.watchers: dict[str, set[ServerConnection]] = {}
        self.replies = itertools.count(1)
        self.tasks: set[asyncio.Task[None]] = set()

    async def handle(self, connection: ServerConnection) -> None:
        channel = ""
        async for message in connection:
            for line in (message if isinstance(message, bytes) else message.encode()).split(b"\n"):
                if not line.strip() or line.strip() == b"{}":
                    continue
                command = orjson.loads(line)
                reply: dict[str, Any] = {"id": command["id"]}
                if "connect" in command:
                    reply["connect"] = {"client": str(id(connection)), "version": "baseline"}
                elif "subscribe" in command:
                    channel = command["subscribe"]["channel"]
                    self.watchers.setdefault(channel, set()).add(connection)
                    reply["subscribe"] = {}
                elif "publish" in command:
                    await self.store(orjson.dumps(command["publish"]["data"]))
                    reply["publish"] = {}
                elif command.get("rpc", {}).get("method") == "coach.ask":
                    reply_id = f"r{next(self.replies)}"
                    task = asyncio.create_task(
                        self.answer(channel, reply_id, command["rpc"]["data"]["text"]))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
                    reply["rpc"] = {"data": {"message_id": f"q{reply_id}", "reply_id": reply_id}}
                else:  # session.start
                    reply["rpc"] = {"data": {"session_id": "baseline"}}
                await connection.send(orjson.dumps(reply).decode())
        for watching in self.watchers.values():
            watching.discard(connection)

    async def answer(self, channel: str, reply_id: str, question: str) -> None:
        assert self.client is not None
        index = itertools.count()
        parts: list[str] = []

        async def put(text: str) -> None:
            parts.append(text)
            self.send(channel, {"type": "delta", "reply_id": reply_id, "index": next(index),
                                "text": text})

        messages = [{"role": "system", "content": self.settings.coach_system_prompt},
                    {"role": "user", "content": question}]
        await read_answer(self.client, self.settings, messages, put)
        self.send(channel, {"type": "done", "reply_id": reply_id, "text": "".join(parts)})

    def send(self, channel: str, data: dict[str, Any]) -> None:
        push = {"push": {"channel": channel,
                         "pub": {"data": data, "time": time.time_ns() // 1_000_000}}}
        broadcast(self.watchers.get(channel, ()), orjson.dumps(push).decode())


async def open_store(database_url: str | None) -> tuple[Store, Callable[[], Awaitable[None]]]:
    """One insert committed per event; returns the store and its closer."""
    if database_url:
        connection = await asyncpg.connect(database_url)
        await connection.execute(CREATE_PG)

        async def store_pg(data: bytes) -> None:
            await connection.execute("INSERT INTO events (data) VALUES ($1)", data.decode())

        return store_pg, connection.close
    path = Path(tempfile.mkdtemp(prefix="coach-baseline-")) / "events.db"
    database = await aiosqlite.connect(path)
    await database.execute("PRAGMA journal_mode=WAL")
    await database.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, data TEXT NOT NULL)")

    async def store_sqlite(data: bytes) -> None:
        await database.execute("INSERT INTO events (data) VALUES (?)", (data.decode(),))
        await database.commit()

    return store_sqlite, database.close


async def main(host: str, port: int, database_url: str | None) -> None:
    store, close = await open_store(database_url)
    baseline = Baseline(Settings.from_env(), store)
    try:
        async with serve(baseline.handle, host, port, process_request=health,
                         compression=None, ping_interval=None) as server:
            print(f"coach baseline listening on {host}:{port} "
                  f"websockets={websockets.__version__}", flush=True)
            await server.serve_forever()
    finally:
        await close()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database-url", help="PostgreSQL (postgresql://...); else SQLite")
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    uvloop.run(main(args.host, args.port, args.database_url))
