"""One-line fixtures' machinery: a real hub on a real port, SDK clients that record events.

The hub runs in the test's event loop through uvicorn with the same configuration as
`fitsync-hub serve`; clients are the official centrifuge-python SDK or raw WebSockets.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import centrifuge
import httpx
import uvicorn

from hub import auth
from hub.app import create_app, uvicorn_config
from hub.broker.base import Broker
from hub.config import Settings
from hub.node import Node

SECRET = "fitsync-test-secret-0123456789abcdef"
API_KEY = "test-api-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningHub:
    settings: Settings
    server: uvicorn.Server
    task: asyncio.Task[None]

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.settings.port}/connection/websocket"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    @property
    def node(self) -> Node:
        node: Node = self.server.lifespan.state["node"]  # type: ignore[attr-defined]
        return node

    def token(self, user: str, role: str = "athlete", *, device: str | None = None,
              ttl: int = 3600) -> str:
        return auth.mint(SECRET, user, role, device=device, ttl=ttl)

    def api(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.http_url,
                                 headers={"Authorization": f"apikey {API_KEY}"})

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 15)


def test_settings(database_url: str, **overrides: Any) -> Settings:
    base = Settings(host="127.0.0.1", port=free_port(), jwt_secret=SECRET, api_key=API_KEY,
                    database_url=database_url)
    return replace(base, **overrides)


async def start_hub(settings: Settings, broker: Broker | None = None) -> RunningHub:
    config = uvicorn_config(settings, create_app(settings, broker=broker), log_level="warning")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.get_running_loop().create_task(server.serve())
    deadline = time.monotonic() + 15
    while not server.started:
        if task.done():
            task.result()
        if time.monotonic() > deadline:
            raise TimeoutError("hub did not start")
        await asyncio.sleep(0.01)
    return RunningHub(settings, server, task)


async def eventually(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll until `check()` is truthy; the value is returned, a timeout fails the test."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


@dataclass
class Recorder(centrifuge.ClientEventHandler, centrifuge.SubscriptionEventHandler):
    """Records every SDK event by name, in arrival order."""

    events: list[tuple[str, Any]] = field(default_factory=list)

    def named(self, name: str) -> list[Any]:
        return [ctx for n, ctx in self.events if n == name]

    def publications(self) -> list[Any]:
        return [ctx.pub.data for ctx in self.named("publication")]

    async def on_connecting(self, ctx: Any) -> None:
        self.events.append(("connecting", ctx))

    async def on_connected(self, ctx: Any) -> None:
        self.events.append(("connected", ctx))

    async def on_disconnected(self, ctx: Any) -> None:
        self.events.append(("disconnected", ctx))

    async def on_error(self, ctx: Any) -> None:
        self.events.append(("error", ctx))

    async def on_subscribed(self, ctx: Any) -> None:
        self.events.append(("subscribed", ctx))

    async def on_subscribing(self, ctx: Any) -> None:
        self.events.append(("subscribing", ctx))

    async def on_unsubscribed(self, ctx: Any) -> None:
        self.events.append(("unsubscribed", ctx))

    async def on_publication(self, ctx: Any) -> None:
        self.events.append(("publication", ctx))

    async def on_join(self, ctx: Any) -> None:
        self.events.append(("join", ctx))

    async def on_leave(self, ctx: Any) -> None:
        self.events.append(("leave", ctx))
