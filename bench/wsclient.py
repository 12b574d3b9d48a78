"""A minimal RFC 6455 client on a bare asyncio.Protocol, for the load generator.

The load side shares one core among 1,000 subscribers. The `websockets` client spends several
microseconds per message in its reader coroutine and message queue, so it would become the
bottleneck well before the servers under test do. This client parses server frames directly in
`data_received`, hands each message to a callback together with one receive timestamp per
read, and answers pings and closes. It offers no extensions, so neither server compresses.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import cast

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_HANDSHAKE_LIMIT = 16384
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux

OnMessage = Callable[[bytes, int], None]
"""Called with one complete message and the `time.time_ns()` of the read that completed it."""


class HandshakeError(Exception):
    pass


def _mask(payload: bytes, key: bytes) -> bytes:
    """XOR with the 4-byte key using one big-integer operation instead of a per-byte loop."""
    n = len(payload)
    if n == 0:
        return payload
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame (clients must mask, RFC 6455 §5.3)."""
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return header + key + _mask(payload, key)


class WebSocketClient(asyncio.Protocol):
    """Client side of one connection: handshake, frame parsing, control frames."""

    def __init__(self, host: str, port: int, path: str, on_message: OnMessage) -> None:
        self._request, self._accept = _handshake_request(host, port, path)
        self._on_message = on_message
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self._upgraded = False
        self._close_sent = False
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[int] = loop.create_future()
        """Resolves to the close code (1006 when the TCP connection dropped without one)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._upgraded and not self._finish_handshake():
            return
        self._parse_frames(time.time_ns())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or HandshakeError("connection closed during handshake"))
        if not self.closed.done():
            self.closed.set_result(1006)

    def send_text(self, text: bytes) -> None:
        """Send `text` (UTF-8 bytes) as one text frame."""
        assert self._transport is not None
        self._transport.write(encode_frame(_OP_TEXT, text))

    def close(self, code: int = 1000) -> None:
        """Start the closing handshake; the server answers and then drops TCP."""
        transport = self._transport
        if transport is not None and not transport.is_closing() and not self._close_sent:
            self._close_sent = True
            transport.write(encode_frame(_OP_CLOSE, struct.pack("!H", code)))

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _finish_handshake(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > _HANDSHAKE_LIMIT:
                self._fail_handshake("oversized handshake response")
            return False
        head = bytes(self._buffer[:end]).decode("latin-1")
        del self._buffer[: end + 4]
        status_line, *header_lines = head.split("\r\n")
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)
        }
        if status_line.split(" ")[1:2] != ["101"]:
            self._fail_handshake(f"handshake refused: {status_line}")
            return False
        if headers.get("sec-websocket-accept") != self._accept:
            self._fail_handshake("bad Sec-WebSocket-Accept")
            return False
        self._upgraded = True
        if not self.opened.done():  # done: the opener gave up waiting (cancelled it)
            self.opened.set_result(None)
        return True

    def _fail_handshake(self, reason: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(HandshakeError(reason))
        self.abort()

    def _parse_frames(self, now_ns: int) -> None:
        buf = self._buffer
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, start = b1 & 0x7F, pos + 2
            if length == 126:
                if size - start < 2:
                    break
                (length,) = struct.unpack_from("!H", buf, start)
                start += 2
            elif length == 127:
                if size - start < 8:
                    break
                (length,) = struct.unpack_from("!Q", buf, start)
                start += 8
            end = start + length
            if end > size:
                break
            if b0 == 0x80 | _OP_TEXT:  # the common case, without two more calls
                self._on_message(bytes(buf[start:end]), now_ns)
            else:
                self._handle_frame(b0, bytes(buf[start:end]), now_ns)
            pos = end
        del buf[:pos]

    def _handle_frame(self, b0: int, payload: bytes, now_ns: int) -> None:
        opcode = b0 & 0x0F
        if opcode in (_OP_TEXT, _OP_BINARY, _OP_CONT):
            self._handle_data(b0 & 0x80, payload, now_ns)
        elif opcode == _OP_PING:
            assert self._transport is not None
            self._transport.write(encode_frame(_OP_PONG, payload))
        elif opcode == _OP_CLOSE:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            if not self.closed.done():
                self.closed.set_result(code)
            self.close(1000)

    def _handle_data(self, fin: int, payload: bytes, now_ns: int) -> None:
        if not fin:
            self._fragments.append(payload)
            return
        if self._fragments:
            payload = b"".join([*self._fragments, payload])
            self._fragments.clear()
        self._on_message(payload, now_ns)


def _handshake_request(host: str, port: int, path: str) -> tuple[bytes, str]:
    key = base64.b64encode(os.urandom(16)).decode()
    accept = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
    request = (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    return request.encode(), accept


async def open_websocket(
    host: str,
    port: int,
    path: str,
    on_message: OnMessage,
    timeout: float = 10.0,
    source: str | None = None,
) -> WebSocketClient:
    """Connect and complete the opening handshake, or raise.

    `source` is the local address to connect from (another 127.x.y.z for loopback): each has
    its own range of ephemeral ports, which tens of thousands of connections to one server
    (and the TIME_WAIT sockets earlier runs left) exhaust, making every `connect()` search it.
    """
    loop = asyncio.get_running_loop()

    def protocol() -> WebSocketClient:
        return WebSocketClient(host, port, path, on_message)

    if source is None:
        opening = loop.create_connection(protocol, host, port)
    else:
        opening = _connect_from(loop, protocol, host, port, source)
    _, client = await asyncio.wait_for(opening, timeout)
    try:
        await asyncio.wait_for(client.opened, timeout)
    except BaseException:
        client.abort()
        raise
    return client


async def _connect_from(
    loop: asyncio.AbstractEventLoop,
    protocol: Callable[[], WebSocketClient],
    host: str,
    port: int,
    source: str,
) -> tuple[asyncio.BaseTransport, WebSocketClient]:
    """`create_connection` from `source`; the port is chosen at connect time, per destination
    (`IP_BIND_ADDRESS_NO_PORT`), not at bind time from the ports free for every destination."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        await loop.sock_connect(sock, (host, port))
        transport, client = await loop.create_connection(protocol, sock=sock)
    except BaseException:
        sock.close()
        raise
    return transport, client
