"""The composition root: settings → broker, application, node → Starlette app and uvicorn.

This is the one place where the hub meets FitSync's channels; everything below it is wired
through the `Application` and `Broker` interfaces.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette

from hub import http_api
from hub.broker.base import Broker
from hub.broker.memory import MemoryBroker
from hub.broker.redis import RedisBroker
from hub.broker_timing import time_broker_calls
from hub.config import Settings
from hub.connection import HubWebSocketProtocol
from hub.drain import DrainingServer, DrainState
from hub.node import Node
from hub.origins import OriginPolicy
from hub.rules import Application
from hub.workers import BindError, Supervisor

log = logging.getLogger("hub")


def make_broker(settings: Settings) -> Broker:
    if settings.redis_url:
        return RedisBroker(
            [url.strip() for url in settings.redis_url.split(",") if url.strip()],
            prefix=settings.redis_prefix,
            cluster=settings.redis_cluster,
            timeout=settings.redis_timeout,
        )
    return MemoryBroker()


def make_application(settings: Settings) -> Application:
    from channels.app import FitSyncApplication

    return FitSyncApplication(settings)


def create_app(
    settings: Settings, application: Application | None = None, broker: Broker | None = None
) -> Starlette:
    """The whole node as a Starlette app; `application` and `broker` default to the ones the
    settings name (tests pass their own broker)."""
    app_impl = application or make_application(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        node = Node(settings, broker or make_broker(settings), app_impl)
        time_broker_calls(node.broker, node.metrics)
        drain = DrainState()
        node.metrics.draining.set_function(lambda: float(drain.draining))  # read at each scrape
        await node.start()
        try:
            yield {"node": node, "drain": drain, "origins": OriginPolicy(
                settings.allowed_origins, allow_localhost=settings.dev_mode)}
        finally:
            await node.close()

    routes = [*http_api.routes(app_impl.routes()), *app_impl.public_routes()]
    return Starlette(routes=routes, lifespan=lifespan)


def uvicorn_config(settings: Settings, app: Starlette, **extra: Any) -> uvicorn.Config:
    """uvicorn with our WebSocket protocol class instead of its ASGI WebSocket support."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "backlog": settings.listen_backlog,
        "ws": HubWebSocketProtocol,
        "http": "httptools",
        "loop": "uvloop",
        "lifespan": "on",
        "log_level": "info",
        "access_log": False,
        "log_config": None,  # `hub.logs` formats every logger, uvicorn's too
    }
    return uvicorn.Config(app, **{**options, **extra})


def serve(settings: Settings, workers: int = 1) -> None:
    """Run the node until stopped; with `workers` > 1, that many nodes in as many processes
    sharing the port (`hub.workers`; they need Redis), the schema migrated once before."""
    if workers > 1:
        migrate(settings)
        supervisor = Supervisor(settings, workers, serve_worker)
        try:
            status = supervisor.run()
        except BindError as exc:
            log.error("%s", exc)
            sys.exit(1)
        supervisor.reraise()
        sys.exit(status)
    tune_garbage_collector()
    DrainingServer(uvicorn_config(settings, create_app(settings)), settings).run()


def serve_worker(settings: Settings, sock: socket.socket) -> None:
    """One worker of `serve`: a node on a listening socket the supervisor bound."""
    tune_garbage_collector()
    DrainingServer(uvicorn_config(settings, create_app(settings)), settings).run([sock])


def migrate(settings: Settings) -> None:
    """The database schema upgraded to head, so that workers starting together find it there
    rather than all migrating it at once."""
    from models.db import Database

    async def upgrade() -> None:
        database = Database(settings.database_url)
        await database.start()
        await database.close()

    asyncio.run(upgrade())


def tune_garbage_collector() -> None:
    """Collect young objects less often, and never walk what start-up made. Under ingest load
    the default threshold of 700 paused the event loop for 100-150 ms about once a second,
    walking channel history then held as objects; history is now kept where the collector
    does not look (`hub.broker.memory`), and a threshold of 5,000 measured the same as this
    one (p99 19-20 ms either way)."""
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
