"""The baseline for `bench/product.py --storm ... --storm-server websockets`: the least a
`websockets` server must do to answer a Centrifuge connect.

Each connection's `{"id": 1, "connect": {...}}` is answered with a connect result (a fresh
client id, the ping interval) and the connection is then held, answering pings. No token
check, no user, no subscription, no presence, no database: what the hub spends beyond this per
connect is the price of those. On uvloop, like the hub.
"""

from __future__ import annotations

import argparse
import uuid
from http import HTTPStatus

import orjson
import uvloop
import websockets
from websockets.asyncio.server import Request, Response, ServerConnection, serve


def health(connection: ServerConnection, request: Request) -> Response | None:
    if request.path == "/healthz":
        return connection.respond(HTTPStatus.OK, "ok\n")
    return None


async def handler(connection: ServerConnection) -> None:
    async for message in connection:
        for line in (message if isinstance(message, bytes) else message.encode()).split(b"\n"):
            if not line.strip() or line.strip() == b"{}":
                continue
            command = orjson.loads(line)
            if "connect" in command:
                result = {"client": uuid.uuid4().hex, "version": "0", "ping": 25, "pong": True}
                await connection.send(orjson.dumps({"id": command["id"], "connect": result})
                                      .decode())


async def main(host: str, port: int, backlog: int) -> None:
    async with serve(handler, host, port, process_request=health, compression=None,
                     backlog=backlog, ping_interval=None, max_queue=4) as server:
        print(f"storm baseline listening on {host}:{port} websockets={websockets.__version__}",
              flush=True)
        await server.serve_forever()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backlog", type=int, default=4096)
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    uvloop.run(main(args.host, args.port, args.backlog))
