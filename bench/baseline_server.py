"""The baseline for bench/fanout.py: the smallest fan-out server `websockets` allows.

Every connection except `/publish` is a subscriber that only listens. Each text message that
arrives on `/publish` goes to all subscribers through one `websockets.broadcast()` call, then
the publisher gets a one-byte acknowledgement so it can keep a bounded number of publishes in
flight, as it does against the hub's HTTP API. No authentication, channels, history or
protocol envelope: whatever the hub costs beyond this is the price of those features.

It runs on uvloop, like the hub, so the comparison is not skewed by the event loop.
"""

from __future__ import annotations

import argparse
from http import HTTPStatus

import uvloop
import websockets
from websockets.asyncio.server import Request, Response, ServerConnection, serve

SUBSCRIBERS: set[ServerConnection] = set()


def health(connection: ServerConnection, request: Request) -> Response | None:
    """Answer `GET /healthz` like the hub does, so one readiness check serves both."""
    if request.path == "/healthz":
        return connection.respond(HTTPStatus.OK, "ok\n")
    return None


async def handler(connection: ServerConnection) -> None:
    if connection.request is not None and connection.request.path == "/publish":
        await publish_loop(connection)
        return
    SUBSCRIBERS.add(connection)
    try:
        await connection.wait_closed()
    finally:
        SUBSCRIBERS.discard(connection)


async def publish_loop(connection: ServerConnection) -> None:
    async for message in connection:
        websockets.broadcast(SUBSCRIBERS, message)
        await connection.send(b"1", text=True)


async def main(host: str, port: int) -> None:
    async with serve(
        handler, host, port, process_request=health, compression=None, backlog=1024
    ) as server:
        print(
            f"baseline listening on {host}:{port} loop=uvloop websockets={websockets.__version__}",
            flush=True,
        )
        await server.serve_forever()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    uvloop.run(main(args.host, args.port))
