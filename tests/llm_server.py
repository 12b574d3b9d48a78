"""A scripted OpenAI-compatible chat server: real HTTP, real server-sent events.

It speaks enough of `POST /v1/chat/completions` for the official `openai` client: with
`"stream": true` it answers `text/event-stream` with `data: {chat.completion.chunk}` events and
`data: [DONE]` (and a usage chunk when `stream_options.include_usage` is set), otherwise one
`chat.completion`. Every request is recorded, so a test can read the prompt the hub built.
It is this project's own test double of an upstream model, used by the coach tests, by
`bench/coach.py` and by browser tests of the chat panel.

What an answer does is a `Behaviour`: the text (streamed word by word, spaces kept, so the
chunks concatenate to exactly `text`), the speed, and what goes wrong (an HTTP error with its
body and `retry-after`, a connection cut mid-stream, a stream that stops sending, a server that
never answers). Which behaviour a request gets, first match wins:

1. the next one queued with `server.script(...)` (or `POST /_script` from another process);
2. a preset named in the last user message as `[[name]]`, e.g. "how was my squat? [[slow]]"
   (`PRESETS`: normal, slow, fast, unauthorized, rate_limited, server_error, broken,
   stream_error, hang, no_headers);
3. the server's default behaviour.

In a test (same event loop)::

    server = LLMServer()
    await server.start()                 # on a free port; server.base_url ends in /v1
    server.script(PRESETS["broken"], Behaviour(text="Rest 90 s between sets."))
    ...                                  # point the client at server.base_url, any API key
    server.requests[-1].messages         # what the model was asked
    await server.stop()

As a process (browser tests, benchmarks)::

    .venv/bin/python -m tests.llm_server --port 8089 --preset slow
    curl -X POST localhost:8089/_script -d '{"preset": "rate_limited", "retry_after": 7}'
    curl -X POST localhost:8089/_script -d '{"text": "Drink water.", "tokens_per_second": 5}'
    curl localhost:8089/_requests        # recorded requests as JSON; DELETE clears them

`unanswered_port()` gives a port whose listen queue is full: connecting to it times out, the
one way to test an upstream connect timeout on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import re
import socket
import time
from collections import deque
from dataclasses import dataclass, field, fields, replace
from typing import Any, Self

DEFAULT_TEXT = (
    "Good session. Your squat volume is up on last week; keep the last set at RPE 8 and rest "
    "two to three minutes between heavy sets. Drink some water and eat protein within the hour."
)
_TOKEN = re.compile(r"\s*\S+|\s+")


def tokens_of(text: str) -> list[str]:
    """The chunks an answer is streamed in: words with the whitespace before them."""
    return _TOKEN.findall(text)


@dataclass(frozen=True)
class Behaviour:
    """How one request is answered. Defaults: a normal answer, as fast as the socket goes."""

    text: str = DEFAULT_TEXT
    tokens_per_second: float = 0.0
    """0: every chunk at once; otherwise a steady rate, chunk i sent at start + i / rate."""
    tokens_per_chunk: int = 1
    status: int = 200
    """Anything but 200 answers that status with an OpenAI-style error body and no stream."""
    error_message: str = "scripted error"
    retry_after: float | None = None
    """Sent as `retry-after` (seconds) with an error status."""
    break_after: int | None = None
    """Cut the connection (no final chunk, no [DONE]) after this many tokens."""
    error_after: int | None = None
    """Send an `error` event (as OpenAI does when it fails mid-stream) after this many tokens,
    then end the stream."""
    hang_after: int | None = None
    """Stop sending after this many tokens, keeping the connection open until the client
    closes it."""
    header_delay: float = 0.0
    """Seconds before the response starts; `math.inf` never answers (a read timeout)."""
    finish_reason: str = "stop"

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if not (f.name == "header_delay" and math.isinf(self.header_delay))}


PRESETS: dict[str, Behaviour] = {
    "normal": Behaviour(tokens_per_second=50),
    "slow": Behaviour(tokens_per_second=8),
    "fast": Behaviour(text=" ".join(["rep"] * 400), tokens_per_second=500),
    "unauthorized": Behaviour(status=401, error_message="Incorrect API key provided"),
    "rate_limited": Behaviour(status=429, error_message="Rate limit reached", retry_after=20),
    "server_error": Behaviour(status=500, error_message="The server had an error"),
    "broken": Behaviour(tokens_per_second=50, break_after=5),
    "stream_error": Behaviour(tokens_per_second=50, error_after=5,
                              error_message="The server had an error while processing"),
    "hang": Behaviour(tokens_per_second=50, hang_after=5),
    "no_headers": Behaviour(header_delay=math.inf),
}

_ERROR_TYPES = {401: "invalid_request_error", 429: "rate_limit_exceeded", 500: "server_error"}
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}
_PRESET_MARK = re.compile(r"\[\[(\w+)\]\]")


@dataclass
class RecordedRequest:
    """One chat request as the server saw it, and how its stream went."""

    body: dict[str, Any]
    headers: dict[str, str]
    behaviour: Behaviour
    connection: int = 0
    """Which connection it came on, numbered from 1 as they were accepted."""
    received_at: float = field(default_factory=time.monotonic)
    token_times: list[float] = field(default_factory=list)
    """`time.monotonic()` when each token was written (same clock in every process)."""
    closed_by_client_at: float | None = None
    """When the client closed the connection before the answer was complete."""
    completed: bool = False

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", []))

    @property
    def prompt_text(self) -> str:
        """All message contents, joined: what a test searches for context in."""
        return "\n".join(str(m.get("content", "")) for m in self.messages)

    def to_json(self) -> dict[str, Any]:
        return {"body": self.body, "behaviour": self.behaviour.to_json(),
                "received_at": self.received_at, "token_times": self.token_times,
                "closed_by_client_at": self.closed_by_client_at, "completed": self.completed,
                "connection": self.connection}


class LLMServer:
    """The server; `start()` binds (port 0: a free one), `stop()` closes every connection."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 default: Behaviour | None = None) -> None:
        self.host, self.port = host, port
        self.default = default or PRESETS["normal"]
        self.requests: list[RecordedRequest] = []
        self._queue: deque[Behaviour] = deque()
        self._server: asyncio.Server | None = None
        self._handlers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._arrived = asyncio.Condition()
        self._connections = 0

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next requests, in order."""
        self._queue.extend(behaviours)

    async def wait_for_requests(self, count: int, timeout: float = 10.0) -> RecordedRequest:
        """Wait until `count` chat requests arrived; returns the last."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) >= count)
        return self.requests[count - 1]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._handlers.values()):
            writer.transport.abort()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=5)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- HTTP ------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = writer
        self._connections += 1
        connection = self._connections
        try:
            while await self._one_request(reader, writer, connection):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._handlers.pop(task, None)
            writer.close()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           connection: int) -> bool:
        """Answer one request; True when the connection stays open for the next (after a
        stream that ended normally, as model APIs keep connections alive)."""
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, path, _ = request_line.split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in header_lines if line)}
        body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
        path = path.split("?", 1)[0]
        if method == "POST" and path.endswith("/chat/completions"):
            return await self._chat(json.loads(body or b"{}"), headers, reader, writer,
                                    connection)
        elif path == "/_script" and method == "POST":
            self._script_from_json(json.loads(body or b"{}"))
            await _respond(writer, 200, {"queued": len(self._queue)})
        elif path == "/_requests" and method == "GET":
            await _respond(writer, 200, [r.to_json() for r in self.requests])
        elif path == "/_requests" and method == "DELETE":
            self.requests.clear()
            await _respond(writer, 200, {"cleared": True})
        elif method == "GET" and path.endswith("/models"):
            await _respond(writer, 200, {"object": "list", "data": [
                {"id": "scripted", "object": "model", "created": 0, "owned_by": "tests"}]})
        else:
            await _respond(writer, 404, {"error": {"message": f"no route {method} {path}"}})
        return False

    def _script_from_json(self, spec: dict[str, Any] | list[dict[str, Any]]) -> None:
        for item in spec if isinstance(spec, list) else [spec]:
            item = dict(item)
            base = PRESETS[item.pop("preset", "normal")]
            if item.get("header_delay") == "inf":
                item["header_delay"] = math.inf
            self.script(replace(base, **item))

    def _choose(self, body: dict[str, Any]) -> Behaviour:
        if self._queue:
            return self._queue.popleft()
        users = [m for m in body.get("messages", []) if m.get("role") == "user"]
        if users:
            mark = _PRESET_MARK.search(str(users[-1].get("content", "")))
            if mark and mark.group(1) in PRESETS:
                return PRESETS[mark.group(1)]
        return self.default

    async def _chat(self, body: dict[str, Any], headers: dict[str, str],
                    reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    connection: int) -> bool:
        behaviour = self._choose(body)
        record = RecordedRequest(body, headers, behaviour, connection)
        async with self._arrived:
            self.requests.append(record)
            self._arrived.notify_all()
        if behaviour.header_delay:
            if math.isinf(behaviour.header_delay):
                await _until_closed(reader, record)
                return False
            await asyncio.sleep(behaviour.header_delay)
        if behaviour.status != 200:
            extra = {} if behaviour.retry_after is None else {
                "retry-after": f"{behaviour.retry_after:g}"}
            await _respond(writer, behaviour.status, {"error": {
                "message": behaviour.error_message, "code": None, "param": None,
                "type": _ERROR_TYPES.get(behaviour.status, "server_error")}}, extra)
            record.completed = True
            return False
        model = str(body.get("model", "scripted"))
        tokens = tokens_of(behaviour.text)
        finish = behaviour.finish_reason
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int) and len(tokens) > limit:
            tokens, finish = tokens[:limit], "length"
        if not body.get("stream"):
            await _respond(writer, 200, _completion(model, "".join(tokens), finish, body, tokens))
            record.completed = True
            return False
        return await self._stream(writer, reader, record, model, tokens, finish)

    async def _stream(self, writer: asyncio.StreamWriter, reader: asyncio.StreamReader,
                      record: RecordedRequest, model: str, tokens: list[str],
                      finish: str) -> bool:
        """Stream the answer; True when it ended normally and the connection stays open."""
        behaviour, body = record.behaviour, record.body
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")
        # Watches for the client closing mid-answer. It reads the connection, so it is stopped
        # before the last bytes: only then may the client send its next request on it.
        closed = asyncio.ensure_future(_until_closed(reader, record))
        chunk_id = f"chatcmpl-{len(self.requests)}"
        try:
            await _send_event(writer, _chunk(chunk_id, model, {"role": "assistant",
                                                              "content": ""}, None))
            started = time.monotonic()
            per_chunk = max(1, behaviour.tokens_per_chunk)
            for start in range(0, len(tokens), per_chunk):
                if behaviour.break_after is not None and start >= behaviour.break_after:
                    writer.transport.abort()
                    return False
                if behaviour.error_after is not None and start >= behaviour.error_after:
                    await _send_event(writer, {"error": {
                        "message": behaviour.error_message, "type": "server_error"}})
                    writer.write(_http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
                    await writer.drain()
                    record.completed = True
                    return False
                if behaviour.hang_after is not None and start >= behaviour.hang_after:
                    await closed
                    return False
                if behaviour.tokens_per_second:
                    delay = started + start / behaviour.tokens_per_second - time.monotonic()
                    if delay > 0:
                        await asyncio.wait([closed], timeout=delay)
                if closed.done():
                    return False
                piece = "".join(tokens[start:start + per_chunk])
                await _send_event(writer, _chunk(chunk_id, model, {"content": piece}, None))
                record.token_times.extend([time.monotonic()] * len(tokens[start:start + per_chunk]))
            await _send_event(writer, _chunk(chunk_id, model, {}, finish))
            if (body.get("stream_options") or {}).get("include_usage"):
                usage_chunk = _chunk(chunk_id, model, None, None)
                usage_chunk["usage"] = _usage(body, tokens)
                await _send_event(writer, usage_chunk)
            closed.cancel()
            await asyncio.wait([closed])
            if record.closed_by_client_at is not None:
                return False
            writer.write(_http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            await writer.drain()
            record.completed = True
            return True
        finally:
            closed.cancel()


async def _until_closed(reader: asyncio.StreamReader, record: RecordedRequest) -> None:
    """Return when the client closes its side (the request body was read already)."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(4096):
            pass
    if not record.completed:
        record.closed_by_client_at = time.monotonic()


def _chunk(chunk_id: str, model: str, delta: dict[str, Any] | None,
           finish: str | None) -> dict[str, Any]:
    choices = [] if delta is None else [
        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    return {"id": chunk_id, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "system_fingerprint": "scripted", "choices": choices}


def _usage(body: dict[str, Any], tokens: list[str]) -> dict[str, int]:
    prompt = sum(len(tokens_of(str(m.get("content", "")))) for m in body.get("messages", []))
    return {"prompt_tokens": prompt, "completion_tokens": len(tokens),
            "total_tokens": prompt + len(tokens)}


def _completion(model: str, text: str, finish: str, body: dict[str, Any],
                tokens: list[str]) -> dict[str, Any]:
    return {"id": "chatcmpl-0", "object": "chat.completion", "created": int(time.time()),
            "model": model, "usage": _usage(body, tokens), "choices": [{
                "index": 0, "finish_reason": finish, "logprobs": None,
                "message": {"role": "assistant", "content": text}}]}


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def _send_event(writer: asyncio.StreamWriter, payload: dict[str, Any]) -> None:
    writer.write(_http_chunk(b"data: " + json.dumps(payload).encode() + b"\n\n"))
    await writer.drain()


async def _respond(writer: asyncio.StreamWriter, status: int, payload: Any,
                   extra: dict[str, str] | None = None) -> None:
    body = json.dumps(payload).encode()
    head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
            "content-type: application/json", f"content-length: {len(body)}",
            "connection: close", *(f"{k}: {v}" for k, v in (extra or {}).items())]
    writer.write("\r\n".join(head).encode() + b"\r\n\r\n" + body)
    await writer.drain()


@contextlib.contextmanager
def unanswered_port() -> Any:
    """A listening port nobody accepts on, its queue already full: new connections hang in
    SYN until the client's connect timeout. Yields the port; closes everything after."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.05)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Scripted OpenAI-compatible chat server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--preset", default="normal", choices=sorted(PRESETS))
    parser.add_argument("--text", help="answer text (default: the preset's)")
    parser.add_argument("--tokens-per-second", type=float, help="speed (default: the preset's)")
    args = parser.parse_args()
    default = PRESETS[args.preset]
    if args.text is not None:
        default = replace(default, text=args.text)
    if args.tokens_per_second is not None:
        default = replace(default, tokens_per_second=args.tokens_per_second)

    async def run() -> None:
        server = LLMServer(args.host, args.port, default)
        await server.start()
        print(f"scripted chat server on {server.base_url} (default: {args.preset})", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
