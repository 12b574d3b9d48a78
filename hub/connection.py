"""The socket edge: a WebSocket protocol plugged into uvicorn in place of its ASGI one.

uvicorn parses HTTP and, on an upgrade request, hands the raw transport to this class. HTTP
routes (the API, health, metrics, dashboard) stay ordinary Starlette; WebSockets skip ASGI
entirely. That is what makes the fan-out cheap: without per-message ASGI events, awaits or
tasks, a publication reaches a socket as one `transport.write` of bytes shared by every
subscriber (see hub/writer.py), and an idle connection costs a few small objects and no task.

websockets' sans-I/O `ServerProtocol` does the handshake, frame parsing (with the frame size
limit, answered by close 1009), control frames and the closing handshake. The one exception is
the hot path of an open connection: reads made only of whole, final, masked text or binary
frames within the size limit (a device's publish, a subscriber's pong) are unmasked here and go
straight to the client; websockets' generator-based parser costs several microseconds per
frame. Anything else, from the first byte that is not such a frame, goes through websockets,
which is then at a frame boundary, exactly where it would have been after parsing those frames.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.streams import StreamReader
from websockets.typing import Subprotocol

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets built without its C extension
    from websockets.utils import apply_mask

from hub.client import CLOSED, Client, Transport
from hub.drain import DrainState
from hub.node import Node
from hub.origins import OriginPolicy
from hub.protocol.codecs import CODECS, SUBPROTOCOLS, codec_index
from hub.protocol.codes import Disconnect, DisconnectCode
from hub.writer import Writer

log = logging.getLogger("hub.connection")
_ws_log = logging.getLogger("hub.connection.websocket")
_ws_log.setLevel(logging.WARNING)  # websockets logs every open and close at INFO

WEBSOCKET_PATH = "/connection/websocket"
_FINAL_DATA_HEADS = (0x80 | Opcode.TEXT.value, 0x80 | Opcode.BINARY.value)
"""First bytes of a final text or binary frame without extension bits."""
_CLOSE_TIMEOUT = 2.0
_SUBPROTOCOLS = [Subprotocol(name) for name in SUBPROTOCOLS]
_BETWEEN_FRAMES = StreamReader.at_eof.__code__
"""Where websockets' parser waits for the first byte of the next frame."""
_BUSY_TEXT = b"this node is busy; connect again later\n"
_BUSY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                  b"Retry-After: 1\r\nConnection: close\r\nContent-Length: "
                  + str(len(_BUSY_TEXT)).encode() + b"\r\n\r\n" + _BUSY_TEXT)
_BUSY_LOG_INTERVAL = 10.0


class _BusyNotice:
    """Logs busy refusals at most every `_BUSY_LOG_INTERVAL` seconds: a storm refuses
    thousands a second, each counted in `fitsync_handshakes_refused_busy`."""

    def __init__(self) -> None:
        self.unlogged = 0
        self.logged_at = float("-inf")

    def refused(self, now: float, waiting: int) -> None:
        self.unlogged += 1
        if now - self.logged_at >= _BUSY_LOG_INTERVAL:
            log.warning("refused %d WebSocket handshakes with 503: %d connections are waiting "
                        "for their connect reply (HUB_MAX_CONNECTING)", self.unlogged, waiting)
            self.unlogged, self.logged_at = 0, now


_busy_notice = _BusyNotice()


def server_protocol(max_size: int) -> ServerProtocol:
    """websockets' sans-I/O server as every connection uses it."""
    return ServerProtocol(
        subprotocols=_SUBPROTOCOLS,
        select_subprotocol=_select_subprotocol,
        max_size=max_size,
        logger=_ws_log,
    )


def at_frame_boundary(ws: ServerProtocol) -> bool:
    """websockets holds no partial frame or fragmented message: bytes may bypass it.

    An empty buffer is not enough: once websockets has read a frame's header it waits for the
    payload with nothing buffered. Between frames its parser waits in `StreamReader.at_eof`;
    should a websockets release wait elsewhere, this is never true and every read simply goes
    through websockets (tests/test_frame_fuzz.py would notice the fast path unused).
    """
    if ws.state is not State.OPEN or ws.current_size is not None or ws.reader.buffer:
        return False
    waiting: object = ws.parser
    while (inner := getattr(waiting, "gi_yieldfrom", None)) is not None:
        waiting = inner
    return getattr(waiting, "gi_code", None) is _BETWEEN_FRAMES


def take_data_frames(
    ws: ServerProtocol, data: bytes, limit: int, deliver: Callable[[bytes], None]
) -> bytes:
    """Unmask the leading whole, final, masked text or binary frames of `data` (each at most
    `limit` bytes), `deliver` their payloads, and return the rest for websockets.

    Call only `at_frame_boundary(ws)`. Stops at the first other frame, or when `deliver`
    closed the connection. tests/test_frame_fuzz.py checks this against websockets alone.
    """
    pos, size = 0, len(data)
    while size - pos >= 6 and ws.state is State.OPEN:
        head, second = data[pos], data[pos + 1]
        if head not in _FINAL_DATA_HEADS or second < 0x80:  # not final data, or unmasked
            break
        length = second & 0x7F
        if length == 126:
            if size - pos < 8:
                break
            length = int.from_bytes(data[pos + 2:pos + 4], "big")
            start = pos + 8
        elif length == 127:
            break
        else:
            start = pos + 6
        end = start + length
        if length > limit or end > size:
            break
        deliver(apply_mask(data[start:end], data[start - 4:start]))
        pos = end
    return data[pos:] if pos else data


class HubWebSocketProtocol(asyncio.Protocol):
    """uvicorn's `ws` protocol class: constructed per upgraded connection."""

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.node: Node = app_state["node"]
        self.drain_state: DrainState = app_state["drain"]
        self.origins: OriginPolicy = app_state["origins"]
        self.connections = server_state.connections
        self.ws = server_protocol(self.node.settings.max_frame_bytes)
        self.transport: asyncio.Transport | None = None
        self.writer: Writer | None = None
        self.client: Client | None = None
        self._fragments: list[bytes] = []
        self._close_timer: asyncio.TimerHandle | None = None
        self._refused = False

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.connections.add(self)
        if self.node.connecting >= self.node.settings.max_connecting:
            self._refuse_busy()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self.client is not None and at_frame_boundary(self.ws):
            data = take_data_frames(self.ws, data, self.node.settings.max_frame_bytes,
                                    self.client.on_frame)
            if not data:
                return
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Request):
                self._handshake(event)
            elif isinstance(event, Frame):
                self._frame(event)
        self._write_protocol_output()
        if self.ws.parser_exc is not None and self.client is not None:
            self._closed_by_protocol()
        if self.ws.close_expected() and self._close_timer is None:
            self._close_timer = self.node.loop.call_later(_CLOSE_TIMEOUT, self._abort)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        if self._close_timer is not None:
            self._close_timer.cancel()
        if self.writer is not None:
            self.writer.closed = True
        if self.client is not None:
            self.client.closed()

    def pause_writing(self) -> None:
        if self.writer is not None:
            self.writer.pause()

    def resume_writing(self) -> None:
        if self.writer is not None:
            self.writer.resume()

    def shutdown(self) -> None:
        """uvicorn calls this on server shutdown: clients are told to reconnect elsewhere."""
        if self.client is not None:
            self.client.close(DisconnectCode.SHUTDOWN)
        elif self.transport is not None:
            self.transport.close()

    async def close_gracefully(self, timeout: float) -> None:
        """The drain's close (hub/drain.py): the command being handled finishes and is
        answered, those not started fail with the temporary error, then the shutdown
        disconnect. After `timeout` seconds the close comes anyway, cutting the command short;
        the client retries it."""
        client = self.client
        if client is not None and timeout > 0:
            try:
                async with asyncio.timeout(timeout):
                    await client.finish_commands()
            except TimeoutError:
                log.warning("client %s: command still running at the end of the drain, "
                            "closing anyway", client.id)
        self.shutdown()

    # -- handshake and frames ------------------------------------------------------------

    def _handshake(self, request: Request) -> None:
        url = urlsplit(request.path)
        if url.path != WEBSOCKET_PATH:
            self._reject(404, f"WebSocket endpoint is {WEBSOCKET_PATH}\n")
            return
        # Joined, two Origin headers match no pattern; `Headers.get` would raise on them.
        origin = ", ".join(request.headers.get_all("Origin")) or None
        hosts = request.headers.get_all("Host")
        if not self.origins.allows(origin, hosts[0] if len(hosts) == 1 else None):
            log.info("WebSocket from origin %r refused: not in HUB_ALLOWED_ORIGINS", origin)
            self._reject(403, "origin not allowed\n")
            return
        if self.drain_state.refusing:
            self._reject(503, "this node is shutting down; connect to another\n")
            return
        response = self.ws.accept(request)
        fmt = parse_qs(url.query).get("format") or parse_qs(url.query).get("cf_protocol")
        index = codec_index(response.headers.get("Sec-WebSocket-Protocol"), fmt[0] if fmt else None)
        if response.status_code != 101 or index is None:
            if index is None:
                response = self.ws.reject(400, "unknown format; use json, protobuf or msgpack\n")
            self.ws.send_response(response)
            self._write_protocol_output()
            assert self.transport is not None
            self.transport.close()
            return
        self.ws.send_response(response)
        self._write_protocol_output()
        # websockets' parser generator keeps `request` in its frame for the connection's life;
        # its headers are ~1.4 KB per idle connection nobody reads again.
        request.headers.clear()
        assert self.transport is not None
        codec = CODECS[index]
        self.writer = Writer(self.transport, self.node.flusher, codec.join,
                             self.node.settings.write_buffer_bytes, self._on_slow)
        self.client = Client(self.node, cast(Transport, self), index, codec)  # writer is set

    def _refuse_busy(self) -> None:
        """Too many connections wait for their connect reply: 503 before a byte of the request
        is parsed, the cheapest answer that makes the client back off and come again."""
        assert self.transport is not None
        self._refused = True
        self.node.metrics.handshakes_refused_busy.inc()
        _busy_notice.refused(self.node.loop.time(), self.node.connecting)
        self.transport.write(_BUSY_RESPONSE)
        self.transport.close()

    def _reject(self, status: int, text: str) -> None:
        self.ws.send_response(self.ws.reject(status, text))
        self._write_protocol_output()
        assert self.transport is not None
        self.transport.close()

    def _frame(self, frame: Frame) -> None:
        if frame.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
            if not frame.fin:
                self._fragments.append(bytes(frame.data))
                return
            payload = bytes(frame.data)  # the parser's data is bytes already: no copy
            if self._fragments:
                self._fragments.append(payload)
                payload = b"".join(self._fragments)
                self._fragments.clear()
            if self.client is not None:
                self.client.on_frame(payload)
        elif frame.opcode is Opcode.CLOSE and self.client is not None:
            self.client.closed()

    # -- closing -------------------------------------------------------------------------

    def close(self, disconnect: Disconnect) -> None:
        """Flush what is queued, send the close frame, and wait briefly for the client's."""
        if self.transport is None or self.transport.is_closing():
            return
        if self.ws.state is State.OPEN:  # else websockets is closing already, its frame queued
            self.ws.send_close(disconnect.code, disconnect.reason)
        data = b"".join(self.ws.data_to_send())
        if self.writer is not None:
            self.writer.write_now(data)
            self.writer.closed = True
        else:
            self.transport.write(data)
        if self.client is not None:
            self.client.closed()
        if self._close_timer is None:
            self._close_timer = self.node.loop.call_later(_CLOSE_TIMEOUT, self._abort)

    def _closed_by_protocol(self) -> None:
        """websockets itself closed the connection (oversized frame 1009, broken framing 1002)."""
        assert self.client is not None
        if self.ws.close_sent is not None and self.client.state != CLOSED:
            self.node.metrics.disconnects.labels(str(self.ws.close_sent.code)).inc()
        self.client.closed()

    def _on_slow(self, dropped: int) -> None:
        """The writer's queue overflowed; close outside the fan-out loop that noticed it."""
        self.node.metrics.dropped.inc(dropped)
        log.warning("client %s is too slow to keep up: %d queued messages dropped, disconnecting",
                    self.client.id if self.client else "?", dropped)
        self.node.loop.call_soon(self._close_slow)

    def _close_slow(self) -> None:
        if self.client is not None:
            self.client.close(DisconnectCode.SLOW)

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _write_protocol_output(self) -> None:
        """Send what websockets produced: handshake response, pongs, close frames."""
        assert self.transport is not None
        for data in self.ws.data_to_send():
            if data:
                self.transport.write(data)
            elif not self.transport.is_closing():
                self.transport.close()


def _select_subprotocol(protocol: ServerProtocol, offered: Any) -> Any:
    """JSON when the client offers nothing (the SDKs send no subprotocol for JSON)."""
    for name in offered:
        if name in SUBPROTOCOLS:
            return name
    return None
