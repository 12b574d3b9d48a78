"""The Python peer for bench/crossnode.py: the `broadcaster` package on Starlette, one node.

Run as several processes on one Redis, it is how a Python team would build "Redis pub/sub fans
out across nodes" without a hub: every WebSocket on `/` holds one `Broadcast.subscribe` of the
single channel and forwards each event's message as one text frame; each text message on the
`/publish` WebSocket is `Broadcast.publish`ed (one Redis PUBLISH), then acknowledged with one
byte once Redis took it, so the bench's publisher keeps a bounded window in flight exactly as
against the plain `websockets` baseline. No authentication, history or envelope, as there.

It runs under uvicorn on uvloop with httptools, like the hub.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from broadcaster import Broadcast
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

CHANNEL = "bench"


def make_app(redis_url: str) -> Starlette:
    broadcast = Broadcast(redis_url)

    async def healthz(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok\n")

    async def subscriber(websocket: WebSocket) -> None:
        await websocket.accept()
        async with broadcast.subscribe(CHANNEL) as events:
            async for event in events:  # type: ignore[union-attr]
                assert event is not None  # the iterator ends instead of yielding None
                await websocket.send_text(event.message)

    async def publisher(websocket: WebSocket) -> None:
        await websocket.accept()
        async for message in websocket.iter_text():
            await broadcast.publish(CHANNEL, message)
            await websocket.send_text("1")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with broadcast:
            yield

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            WebSocketRoute("/publish", publisher),
            WebSocketRoute("/", subscriber),
        ],
        lifespan=lifespan,
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    uvicorn.run(make_app(args.redis_url), host=args.host, port=args.port, loop="uvloop",
                http="httptools", ws="websockets", log_level="warning", access_log=False,
                ws_per_message_deflate=False, backlog=1024)
