"""Publishers for both servers and the pacing loop that drives a phase.

Both publishers return only once the server has taken the message (the hub's HTTP response,
the baseline's one-byte acknowledgement), so a window of in-flight publishes bounds the load
in the same way on both sides.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass

import httpx
from loadgen import make_payload
from wsclient import WebSocketClient, open_websocket


class HubPublisher:
    """`POST /api/publish` over kept-alive HTTP/1.1 connections, one per in-flight request."""

    def __init__(self, base_url: str, api_key: str, channel: str, window: int) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"apikey {api_key}", "Content-Type": "application/json"},
            limits=httpx.Limits(max_connections=window, max_keepalive_connections=window),
            timeout=30.0,
        )
        self._prefix = b'{"channel":"%s","data":' % channel.encode()

    async def warm_up(self) -> None:
        """Open a connection before memory is sampled, so its cost is not charged to subscribers."""
        response = await self._client.get("/healthz")
        response.raise_for_status()

    async def publish(self, payload: bytes) -> bool:
        response = await self._client.post("/api/publish", content=self._prefix + payload + b"}")
        return response.status_code == 200

    async def aclose(self) -> None:
        await self._client.aclose()


class BaselinePublisher:
    """One WebSocket on `/publish`; the server acknowledges each broadcast in order."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._client: WebSocketClient | None = None
        self._pending: deque[asyncio.Future[None]] = deque()

    async def warm_up(self) -> None:
        self._client = await open_websocket(self._host, self._port, "/publish", self._on_ack)
        self._client.closed.add_done_callback(self._on_closed)

    async def publish(self, payload: bytes) -> bool:
        assert self._client is not None
        ack = asyncio.get_running_loop().create_future()
        self._pending.append(ack)
        self._client.send_text(payload)
        await ack
        return True

    async def aclose(self) -> None:
        if self._client is not None:
            self._client.close()
            await asyncio.wait([self._client.closed], timeout=5)
            self._client.abort()

    def _on_ack(self, message: bytes, now_ns: int) -> None:
        self._pending.popleft().set_result(None)

    def _on_closed(self, closed: asyncio.Future[int]) -> None:
        while self._pending:
            self._pending.popleft().set_exception(ConnectionError("publisher connection closed"))


Publisher = HubPublisher | BaselinePublisher


@dataclass
class PublishLog:
    """What a phase published; `accepted` publishes are the ones subscribers must receive."""

    first_ns: int = 0
    last_ns: int = 0
    accepted: int = 0
    rejected: int = 0

    @property
    def seconds(self) -> float:
        return (self.last_ns - self.first_ns) / 1e9


async def publish_phase(
    publisher: Publisher,
    phase: int,
    payload_bytes: int,
    window: int,
    *,
    count: int | None = None,
    rate: float | None = None,
    seconds: float | None = None,
) -> PublishLog:
    """Publish `count` messages at `rate`/s, or as many as possible for `seconds`.

    At most `window` publishes are in flight; a paced phase that falls behind sends late
    messages at once rather than skipping them, so the expected total stays `count`.
    """
    log, gate = PublishLog(), asyncio.Semaphore(window)
    tasks: set[asyncio.Task[None]] = set()
    failures: list[BaseException] = []

    def finished(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None:
            failures.append(error)

    start = time.monotonic()
    deadline = start + seconds if seconds is not None else float("inf")
    seq = 0
    while (count is None or seq < count) and time.monotonic() < deadline and not failures:
        if rate is not None:
            await asyncio.sleep(max(0.0, start + seq / rate - time.monotonic()))
        await gate.acquire()
        payload = make_payload(phase, seq, payload_bytes)
        log.first_ns = log.first_ns or time.time_ns()
        task = asyncio.create_task(_publish_one(publisher, payload, log, gate))
        tasks.add(task)
        task.add_done_callback(finished)
        seq += 1
    await asyncio.gather(*tasks, return_exceptions=True)
    if failures:
        raise failures[0]
    return log


async def _publish_one(
    publisher: Publisher, payload: bytes, log: PublishLog, gate: asyncio.Semaphore
) -> None:
    try:
        if await publisher.publish(payload):
            log.accepted += 1
        else:
            log.rejected += 1
        log.last_ns = time.time_ns()
    finally:
        gate.release()
