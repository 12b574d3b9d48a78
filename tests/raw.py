"""A bare protocol client over a plain WebSocket, for what an SDK never sends.

It speaks JSON (newline-joined objects in text frames) or msgpack (`uvarint(len) || map` in
binary frames), sends exactly the commands a test gives it, in the frames it chooses, and
reports the close code the hub sent. Server pings (`{}`) are counted, never answered unless the
test calls `pong()`.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import centrifuge
import msgpack
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from hub.protocol.codec import put_uvarint as uvarint
from hub.protocol.codec import split_uvarint_stream as split_uvarint
from tests.harness import Recorder, RunningHub

Message = dict[str, Any]


class RawClient:
    def __init__(self, ws: ClientConnection, encoding: str) -> None:
        self.ws = ws
        self.encoding = encoding
        self.pushes: list[Message] = []
        """Pushes read and not yet taken by `next_push`, in arrival order."""
        self.seen: list[Message] = []
        """Every push read, in arrival order."""
        self.replies: dict[int, Message] = {}
        self.pings = 0
        self.frames: list[list[Message]] = []
        """Every data frame read, as its decoded messages."""
        self._next_id = 0

    @classmethod
    async def open(cls, url: str, *, subprotocol: str | None = None, query: str = "",
                   receive_buffer: int | None = None, max_queue: int = 16) -> RawClient:
        """Connect; `receive_buffer` shrinks the socket's kernel buffer (a reader that lags)."""
        sock = None
        if receive_buffer is not None:
            host, port = url.split("/")[2].split(":")
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        ws = await connect(
            url + (f"?{query}" if query else ""),
            subprotocols=[subprotocol] if subprotocol else None,  # type: ignore[list-item]
            compression=None, ping_interval=None, max_size=None, max_queue=max_queue,
            close_timeout=1, sock=sock,
        )
        encoding = "msgpack" if subprotocol == "centrifuge-msgpack" or "msgpack" in query \
            else "json"
        return cls(ws, encoding)

    # -- sending ---------------------------------------------------------------------------

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def encode(self, *messages: Message) -> str | bytes:
        if self.encoding == "json":
            return "\n".join(json.dumps(m, separators=(",", ":")) for m in messages)
        parts = [msgpack.packb(m, use_bin_type=True) for m in messages]
        return b"".join(uvarint(len(p)) + p for p in parts)

    async def send(self, *messages: Message) -> None:
        """All `messages` in one frame."""
        await self.ws.send(self.encode(*messages))

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def pong(self) -> None:
        await self.send({})

    # -- receiving -------------------------------------------------------------------------

    def decode(self, frame: str | bytes) -> list[Message]:
        if self.encoding == "json":
            assert isinstance(frame, str), "JSON replies come in text frames"
            return [json.loads(line) for line in frame.strip().split("\n")]
        assert isinstance(frame, bytes), "msgpack replies come in binary frames"
        return [msgpack.unpackb(p, raw=False) for p in split_uvarint(frame)]

    async def read_frame(self, timeout: float = 5.0) -> list[Message]:
        """The next data frame's messages; pushes and replies are also filed."""
        messages = self.decode(await asyncio.wait_for(self.ws.recv(), timeout))
        self.frames.append(messages)
        for message in messages:
            if message.get("id"):
                self.replies[message["id"]] = message
            elif "push" in message:
                self.pushes.append(message["push"])
                self.seen.append(message["push"])
            else:
                self.pings += 1
        return messages

    async def reply(self, command_id: int, timeout: float = 5.0) -> Message:
        while command_id not in self.replies:
            await self.read_frame(timeout)
        return self.replies.pop(command_id)

    async def command(self, method: str, body: Message | None = None,
                      timeout: float = 5.0) -> Message:
        """Send one command and return its whole reply (result or error)."""
        command_id = self.next_id()
        await self.send({"id": command_id, method: body or {}})
        return await self.reply(command_id, timeout)

    async def call(self, method: str, body: Message | None = None) -> Message:
        """Send one command and return its result; an error reply fails the test."""
        reply = await self.command(method, body)
        assert "error" not in reply, reply
        return reply[method]

    async def connect(self, token: str, **extra: Any) -> Message:
        return await self.call("connect", {"token": token, **extra})

    async def next_push(self, kind: str | None = None, timeout: float = 5.0) -> Message:
        """The next push (of `kind`, such as "pub" or "unsubscribe", skipping others)."""
        while True:
            while not self.pushes:
                await self.read_frame(timeout)
            push = self.pushes.pop(0)
            if kind is None or kind in push:
                return push

    async def publications(self, count: int, timeout: float = 5.0) -> list[Message]:
        """The next `count` publication pushes' `pub` bodies, in order."""
        pubs: list[Message] = []
        while len(pubs) < count:
            pubs.append((await self.next_push("pub", timeout))["pub"])
        return pubs

    async def close_code(self, timeout: float = 5.0) -> int | None:
        """Read until the hub closes; the code it sent (None: no close frame came)."""
        try:
            while True:
                await self.read_frame(timeout)
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd is not None else None

    async def close(self) -> None:
        await self.ws.close()


def data_of(pub: Message) -> Any:
    """A publication's payload: embedded JSON, or msgpack `bin` holding JSON."""
    data = pub["data"]
    return json.loads(data) if isinstance(data, bytes) else data


# -- fixtures ------------------------------------------------------------------------------
# Imported by the protocol test modules (which makes pytest see them as `raw` and `sdk`); they
# take the hub to talk to as an argument, so a test on a `make_hub` hub does not start the
# default one too.

MakeHub = Callable[..., Awaitable[RunningHub]]
"""The type of conftest's `make_hub` fixture."""
OpenRaw = Callable[..., Awaitable[RawClient]]
OpenSdk = Callable[..., Awaitable[tuple[centrifuge.Client, Recorder]]]


@pytest.fixture(name="raw")
async def raw_fixture() -> AsyncIterator[OpenRaw]:
    """Open a raw client to a hub (`await raw(hub, subprotocol=...)`); closed after the test."""
    opened: list[RawClient] = []

    async def make(target: RunningHub, **options: Any) -> RawClient:
        client = await RawClient.open(target.ws_url, **options)
        opened.append(client)
        return client

    yield make
    for client in opened:
        await client.close()


@pytest.fixture(name="sdk")
async def sdk_fixture() -> AsyncIterator[OpenSdk]:
    """An SDK client that may fail to connect: `await sdk(hub, token, ready=False, ...)`."""
    clients: list[centrifuge.Client] = []

    async def make(target: RunningHub, token: str, *, ready: bool = True,
                   **options: Any) -> tuple[centrifuge.Client, Recorder]:
        recorder = Recorder()
        client = centrifuge.Client(target.ws_url, events=recorder, token=token, **options)
        clients.append(client)
        await client.connect()
        if ready:
            await client.ready(timeout=5)
        return client, recorder

    yield make
    for client in clients:
        await client.disconnect()
