"""The model API behind the coach: the `openai` client, one answer's stream read from it, and
what each way of failing means for the athlete.

The client is the official `openai` async client on aiohttp (`openai.DefaultAioHttpClient`, the
`aiohttp` extra): it makes the request, authenticates, applies the timeouts and raises its
typed errors for 401, 429 and 5xx, as with its default HTTP stack, but its C parser and plain
stream reader cost far less per chunk than httpx's default transport (httpcore, h11 and an anyio
cancel scope per read), and 50 answers at 200 tokens a second are 10,000 chunks a second.

The conversation is sent as it is, in `extra_body` (merged into the request's JSON after the
client's transform of its typed parameters): it is plain role and content strings already, and
the transform walks every message against every type of the message union, about 2 ms of CPU
for ten messages, on every ask. `tests/test_coach_model.py` checks the transform would send the
same.

The stream is read through the raw streaming response (`with_streaming_response`): its bytes
are split into server-sent-events lines here and each `data:` line is parsed with orjson (the
client's own chunk objects cost about 90 us of CPU per chunk against about 10).

Reads are paced by the coalescing window: after a read that brought text, and its publication,
the reader sleeps one window, and its next read takes everything the model sent meanwhile (the
HTTP client buffers it), so a fast model costs one pass through the client, one publication and
one wake-up per window, not one per token.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import openai
import orjson

from hub.config import Settings

log = logging.getLogger("channels.coach")


def model_client(settings: Settings) -> openai.AsyncOpenAI | None:
    """The client for `settings`' model API; None when no API key is configured."""
    if not settings.coach_api_key:
        return None
    # No retries by the client: it would retry only before the stream starts, holding the
    # user's one answer slot through backoff (and a 429's retry-after) while nothing streams;
    # the athlete is told at once, with `retryable` and the hint, and re-asks.
    return openai.AsyncOpenAI(
        api_key=settings.coach_api_key, base_url=settings.coach_base_url, max_retries=0,
        # Only connects are timed by the client: the answer's own stall timeout covers the
        # rest, one timer per answer (a read timeout is re-armed on every read received).
        timeout=openai.Timeout(None, connect=settings.coach_connect_timeout),
        http_client=openai.DefaultAioHttpClient(),
    )


@dataclass(frozen=True, slots=True)
class Done:
    finish_reason: str | None
    usage: dict[str, Any] | None


FailureKind = Literal["unauthorized", "rate_limited", "model_error", "refused", "no_answer",
                      "stalled", "stream_error", "broken", "unreachable", "stopping",
                      "internal"]
"""What failed, as a bounded metric label (`fitsync_coach_failures_total{kind}`)."""
FAILURE_KINDS: tuple[FailureKind, ...] = get_args(FailureKind)


@dataclass(frozen=True, slots=True)
class Failed:
    reason: str
    """For the athlete: short, and says what to do when something can be done."""
    retryable: bool
    kind: FailureKind
    """For the operator."""
    retry_after: float | None = None


class ModelStreamError(Exception):
    """The model's stream said it failed (an `error` event), sent what is not a chunk, or
    ended before the answer did."""


async def read_answer(client: openai.AsyncOpenAI, settings: Settings,
                      messages: list[dict[str, str]],
                      put: Callable[[str], Awaitable[None]]) -> Done:
    """Stream the model's answer to `messages`, handing its text to `put` as it comes: the text
    of each read as one piece when coalescing (`HUB_COACH_COALESCE_MS` > 0), then one window of
    sleep before the next read (so pieces are at least a window apart); else each chunk's.

    Returns how the answer finished; raises what the model API raised (see `failure_of`),
    `TimeoutError` when nothing came for a stall timeout, `ModelStreamError` for a stream that
    failed, broke its format or ended early."""
    window = settings.coach_coalesce_ms / 1000
    loop = asyncio.get_running_loop()
    stream = CompletionStream()
    # Fires between one and one and a half stall timeouts after the last read: moved to 1.5
    # timeouts ahead whenever less than one is left, so at most twice per timeout.
    patience = settings.coach_stall_timeout
    async with asyncio.timeout(patience) as stall:
        async with client.chat.completions.with_streaming_response.create(
            model=settings.coach_model,
            messages=[],  # sent as they are, in `extra_body` (see the module doc)
            extra_body={"messages": messages},
            max_tokens=settings.coach_max_tokens, stream=True,
            stream_options={"include_usage": True},
        ) as response:
            async for data in response.iter_bytes():
                now = loop.time()
                if (stall.when() or now) - now < patience:
                    stall.reschedule(now + patience * 1.5)
                pieces = stream.feed(data)
                await _hand_over(pieces, put, joined=window > 0)
                if stream.failure is not None:
                    raise stream.failure
                if stream.ended:
                    break
                if pieces and window > 0:
                    await asyncio.sleep(window)
            else:
                await _hand_over(stream.end(), put, joined=False)
                if stream.failure is not None:
                    raise stream.failure
    if stream.finish_reason is None:
        raise ModelStreamError("the model's stream ended before the answer did")
    return Done(stream.finish_reason, stream.usage)


async def _hand_over(pieces: list[str], put: Callable[[str], Awaitable[None]], *,
                     joined: bool) -> None:
    if joined and len(pieces) > 1:
        await put("".join(pieces))
    else:
        for piece in pieces:
            await put(piece)


DONE: dict[str, Any] = {}
"""What `chunk_of` returns for `data: [DONE]`."""


def chunk_of(line: bytes) -> dict[str, Any] | None:
    """One server-sent-events line of a chat completion stream: its chunk, `DONE` at
    `data: [DONE]`, or None for what carries no data (blank lines, comments, `event:`)."""
    if not line.startswith(b"data:"):
        return None
    data = line[5:].strip()
    if data == b"[DONE]":
        return DONE
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ModelStreamError("the model API sent a malformed chunk") from None
    if not isinstance(chunk, dict):
        raise ModelStreamError("the model API sent a malformed chunk")
    if chunk.get("error"):
        error = chunk["error"]
        message = error.get("message") if isinstance(error, dict) else None
        raise ModelStreamError(f"the model API failed mid-answer: {message or error}"[:200])
    return chunk


class CompletionStream:
    """What a chat completion's server-sent events have said so far, fed the stream's bytes in
    reads cut anywhere: the text pieces, and at the end `finish_reason` and `usage`.

    Lines end with LF, CRLF or CR; a CRLF split between two reads makes one extra empty line,
    which carries no data. Nothing after `data: [DONE]` is read."""

    def __init__(self) -> None:
        self._rest = b""
        self.ended = False
        """`data: [DONE]` was read, or `failure`."""
        self.failure: ModelStreamError | None = None
        """The stream said it failed, or broke its format: what came before it still counts."""
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    def feed(self, data: bytes) -> list[str]:
        """The text of the chunks whose lines `data` completes."""
        lines = (self._rest + data).splitlines(keepends=True)
        self._rest = lines.pop() if lines and not lines[-1].endswith((b"\n", b"\r")) else b""
        return self._text_of(lines)

    def end(self) -> list[str]:
        """The text of a last line the stream ended without its line end."""
        rest, self._rest = self._rest, b""
        return self._text_of([rest]) if rest else []

    def _text_of(self, lines: list[bytes]) -> list[str]:
        pieces: list[str] = []
        for line in lines:
            if self.ended:
                break
            try:
                chunk = chunk_of(line.rstrip(b"\r\n"))
            except ModelStreamError as exc:
                self.failure, self.ended = exc, True
                break
            if chunk is None:
                continue
            if chunk is DONE:
                self.ended = True
                continue
            if chunk.get("usage"):
                self.usage = chunk["usage"]
            for choice in chunk.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    pieces.append(content)
                if choice.get("finish_reason"):
                    self.finish_reason = choice["finish_reason"]
        return pieces


def failure_of(exc: BaseException, *, started: bool, stall_timeout: float) -> Failed:
    """A short reason for the athlete, whether asking again may help, and the model API's
    retry hint. `started`: some of the answer had arrived."""
    if isinstance(exc, openai.AuthenticationError):
        return Failed("the model API refused the hub's API key (401)", retryable=False,
                      kind="unauthorized")
    if isinstance(exc, openai.RateLimitError):
        retry_after = _retry_after(exc.response.headers.get("retry-after"))
        hint = f"; retry in {retry_after:g} s" if retry_after is not None else ""
        return Failed(f"the model API is rate limited (429){hint}", retryable=True,
                      kind="rate_limited", retry_after=retry_after)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status >= 500:
            return Failed(f"the model API failed ({status})", retryable=True,
                          kind="model_error")
        return Failed(f"the model API refused the request ({status})", retryable=False,
                      kind="refused")
    if isinstance(exc, TimeoutError):
        if started:
            return Failed(f"the model stopped sending (nothing for {stall_timeout:g} s)",
                          retryable=True, kind="stalled")
        return Failed(f"the model API did not answer within {stall_timeout:g} s",
                      retryable=True, kind="no_answer")
    if isinstance(exc, openai.APITimeoutError) and not _refused(exc):
        return Failed("the model API did not answer in time", retryable=True, kind="no_answer")
    if isinstance(exc, ModelStreamError):
        return Failed(str(exc), retryable=True, kind="stream_error")
    if isinstance(exc, openai.APIConnectionError) or _is_transport_error(exc):
        if "Timeout" in type(exc).__name__ and not _refused(exc):
            return Failed("the model API did not answer in time", retryable=True,
                          kind="no_answer")
        if started:
            return Failed("the model's stream broke off", retryable=True, kind="broken")
        return Failed("could not reach the model API", retryable=True, kind="unreachable")
    log.error("coach answer failed", exc_info=exc)
    return Failed("internal error", retryable=True, kind="internal")


def _refused(exc: BaseException) -> bool:
    """The connection failed for another reason than time, whatever the error says: the
    aiohttp transport reports every failed connect, a refused one too, as a timeout."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, TimeoutError):
            return False
        if isinstance(cause, OSError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _is_transport_error(exc: BaseException) -> bool:
    """Errors of the HTTP stack under `openai` (httpx, or httpx2 in openai 3, into which the
    aiohttp transport maps its own), which reach us unwrapped once a stream is being read."""
    return type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "httpcore2")


def _retry_after(raw: str | None) -> float | None:
    try:
        return None if raw is None else max(float(raw), 0.0)
    except ValueError:
        return None  # an HTTP date: rare from model APIs, not worth parsing
