"""Outbound path: each connection's bounded queue, frame batching, and the slow-client cut.

A message is encoded once per encoding (`Outbound`) and shared by every connection that uses
that encoding; its complete WebSocket frame is built once too, so fanning a publication out to
a thousand idle sockets is a thousand `transport.write` calls of the same bytes.

Writes are not made one by one: `send` parks the message on the connection and marks the
connection dirty; once per event-loop iteration `Flusher` writes every dirty connection's
messages. One waiting message goes out as its shared frame; several go out joined in one frame.
While the kernel cannot take more (the transport paused writing) nothing is written, messages
collect and leave together in one frame when it resumes.

Every queue is bounded: when what a connection has waiting (ours plus the transport's buffer)
passes `limit` bytes, `on_slow` fires once; the connection is then cut with the slow code
(3008), counted and logged by the caller. Nothing is dropped silently and one slow reader never
delays the others: the fan-out never awaits a socket.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

OP_TEXT = 0x1
OP_BINARY = 0x2


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked, unfragmented server frame: the same bytes are valid for every client."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, n) + payload


class Outbound:
    """One encoded reply or push, and its frame built on first use."""

    __slots__ = ("_frame", "message", "opcode")

    def __init__(self, message: bytes, opcode: int) -> None:
        self.message = message
        self.opcode = opcode
        self._frame: bytes | None = None

    @property
    def frame(self) -> bytes:
        if self._frame is None:
            self._frame = ws_frame(self.opcode, self.message)
        return self._frame


class Flusher:
    """Writes every connection that has messages waiting, once per loop iteration."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: list[Writer] = []

    def mark(self, writer: Writer) -> None:
        if not self._dirty:
            self._loop.call_soon(self._flush)
        self._dirty.append(writer)

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        for writer in dirty:
            writer.flush()


class Writer:
    """The queue in front of one socket. `join` is the codec's way of batching messages."""

    __slots__ = (
        "_flusher",
        "_join",
        "_limit",
        "_marked",
        "_on_slow",
        "_paused",
        "_pending",
        "_pending_bytes",
        "_transport",
        "closed",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        flusher: Flusher,
        join: Callable[[list[bytes]], bytes],
        limit: int,
        on_slow: Callable[[int], None],
    ) -> None:
        self._transport = transport
        self._flusher = flusher
        self._join = join
        self._limit = limit
        self._on_slow = on_slow
        self._pending: list[Outbound] = []
        self._pending_bytes = 0
        self._paused = False
        self._marked = False
        self.closed = False

    def send(self, item: Outbound) -> bool:
        """Queue one message; False (and the slow callback, once) if the queue is full."""
        if self.closed:
            return False
        self._pending.append(item)
        self._pending_bytes += len(item.message)
        if self._pending_bytes + self._transport.get_write_buffer_size() > self._limit:
            self._cut_slow()
            return False
        if not self._marked and not self._paused:
            self._marked = True
            self._flusher.mark(self)
        return True

    def flush(self) -> None:
        self._marked = False
        if self.closed or self._paused or not self._pending:
            return
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        if len(pending) == 1:
            data = pending[0].frame
        else:
            data = ws_frame(pending[0].opcode, self._join([p.message for p in pending]))
        self._transport.write(data)

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self.flush()

    def write_now(self, data: bytes) -> None:
        """Flush what is queued, then bytes that must follow it at once (a close frame)."""
        self._paused = False
        self.flush()
        if not self._transport.is_closing():
            self._transport.write(data)

    def _cut_slow(self) -> None:
        """Give up on this socket: its queued messages are dropped and reported by count."""
        self.closed = True
        dropped = len(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        self._on_slow(dropped)
