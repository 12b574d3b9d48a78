"""Subscriber side of the fan-out benchmark: worker processes holding many connections each.

A worker is a separate process (one interpreter tops out well below the deliveries a server
can push) driven by the orchestrator over a multiprocessing pipe. Every subscriber keeps, per
phase, a bitmap of the sequence numbers it received, so losses and duplicates are exact and do
not depend on arrival order; latencies (receive − publisher's `time.time_ns()`) are pooled per
worker and phase and shipped back as raw arrays so percentiles are computed over every sample.

Payload format, shared with the publisher: `{"p":phase,"s":seq,"t":sent_ns,"x":"pad…"}`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import orjson
import uvloop
from wsclient import WebSocketClient, open_websocket

HUB_PATH = "/connection/websocket"
BASELINE_PATH = "/"
_BITMAP_STEP = 4096
_HUB_PING = b"{}"
PHASES = ("fixed", "max")
"""Phase names by the index carried in each payload's `p`."""


def make_payload(phase: int, seq: int, size: int) -> bytes:
    """A JSON object of exactly `size` bytes (at least its fixed fields) stamped with now."""
    head = b'{"p":%d,"s":%d,"t":%d,"x":"' % (phase, seq, time.time_ns())
    return head + b"x" * max(0, size - len(head) - 2) + b'"}'


@dataclass
class PhaseStats:
    """What one worker saw during one phase, over all its subscribers."""

    latencies_us: array = field(default_factory=lambda: array("q"))
    last_ns: int = 0


class Subscriber:
    """One connection's bookkeeping; subclasses decode their server's framing.

    `record` runs once per delivery on a saturated core, so it is kept to a few indexing
    operations: unique counts are taken from the bitmaps only when asked for.
    """

    def __init__(self, worker: Worker) -> None:
        self.phases = worker.phases
        self.client: WebSocketClient | None = None
        self.seen = [bytearray() for _ in PHASES]
        self.duplicates = 0

    async def start(self, host: str, port: int, token: str, channel: str) -> None:
        raise NotImplementedError

    def record(self, data: dict[str, Any], now_ns: int) -> None:
        phase, seq = data["p"], data["s"]
        seen = self.seen[phase]
        if seq >= len(seen):
            seen.extend(bytes(seq - len(seen) + _BITMAP_STEP))
        if seen[seq]:
            self.duplicates += 1
            return
        seen[seq] = 1
        stats = self.phases[phase]
        stats.latencies_us.append((now_ns - data["t"]) // 1000)
        stats.last_ns = now_ns

    def received(self, phase: int) -> int:
        return self.seen[phase].count(1)


class BaselineSubscriber(Subscriber):
    """Every frame from the baseline is one bare payload.

    The baseline has a single implicit channel and no authentication, so `token` and
    `channel` are not sent.
    """

    async def start(self, host: str, port: int, token: str, channel: str) -> None:
        self.client = await open_websocket(host, port, BASELINE_PATH, self.on_message)

    def on_message(self, message: bytes, now_ns: int) -> None:
        self.record(orjson.loads(message), now_ns)


class HubSubscriber(Subscriber):
    """Centrifuge JSON: connect, subscribe, answer `{}` pings, unwrap `push.pub.data`."""

    def __init__(self, worker: Worker) -> None:
        super().__init__(worker)
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def start(self, host: str, port: int, token: str, channel: str) -> None:
        self.client = await open_websocket(host, port, HUB_PATH, self.on_message)
        connect = orjson.dumps({"id": 1, "connect": {"token": token, "name": "bench"}})
        subscribe = orjson.dumps({"id": 2, "subscribe": {"channel": channel}})
        self.client.send_text(connect + b"\n" + subscribe)
        closed = self.client.closed
        done, _ = await asyncio.wait(
            {self.subscribed, closed}, timeout=15, return_when=asyncio.FIRST_COMPLETED
        )
        if self.subscribed not in done:
            reason = f"closed with code {closed.result()}" if closed in done else "timed out"
            raise RuntimeError(f"hub subscribe {reason}")
        self.subscribed.result()

    def on_message(self, message: bytes, now_ns: int) -> None:
        for line in message.split(b"\n"):
            line = line.strip()
            if line == _HUB_PING:
                assert self.client is not None
                self.client.send_text(_HUB_PING)
            elif line:
                self._on_reply(orjson.loads(line), now_ns)

    def _on_reply(self, reply: dict[str, Any], now_ns: int) -> None:
        push = reply.get("push")
        if push is not None:
            pub = push.get("pub")
            if pub is not None:
                self.record(pub["data"], now_ns)
        elif "error" in reply and not self.subscribed.done():
            self.subscribed.set_exception(RuntimeError(f"hub replied {reply}"))
        elif reply.get("id") == 2 and not self.subscribed.done():
            self.subscribed.set_result(None)


class Worker:
    """Holds a slice of the subscribers and answers the orchestrator's commands."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.subscribers: list[Subscriber] = []
        self.phases = [PhaseStats() for _ in PHASES]
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.conn.fileno(), self.on_command)
        # add_reader made the pipe non-blocking; replies of several MB must not fail halfway.
        os.set_blocking(self.conn.fileno(), True)
        try:
            await self.done
        finally:
            loop.remove_reader(self.conn.fileno())
            self.close_all()

    def on_command(self) -> None:
        try:
            command, *args = self.conn.recv()
        except EOFError:
            self._finish()
            return
        if command == "open":
            asyncio.create_task(self.open_all(*args))
        elif command == "progress":
            self.conn.send(sum(s.received(args[0]) for s in self.subscribers))
        elif command == "collect":
            self.conn.send(self.collect(args[0]))
        elif command == "close":
            self.conn.send(self.disconnects())
            self._finish()

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    async def open_all(self, spec: dict[str, Any]) -> None:
        """Open `spec["count"]` subscribers, `spec["concurrency"]` handshakes at a time."""
        gate = asyncio.Semaphore(spec["concurrency"])
        results = await asyncio.gather(
            *(self._open_one(spec, i, gate) for i in range(spec["count"])), return_exceptions=True
        )
        errors = [repr(r) for r in results if isinstance(r, BaseException)]
        self.conn.send(
            {
                "opened": len(results) - len(errors),
                "errors": errors[:3],
                "affinity": sorted(os.sched_getaffinity(0)),
            }
        )

    async def _open_one(self, spec: dict[str, Any], index: int, gate: asyncio.Semaphore) -> None:
        """Only subscribers that are fully set up count, so a failed one is not a "loss"."""
        kind = HubSubscriber if spec["kind"] == "hub" else BaselineSubscriber
        subscriber = kind(self)
        async with gate:
            try:
                await subscriber.start(
                    spec["host"], spec["port"], spec["tokens"][index], spec["channel"]
                )
            except BaseException:
                if subscriber.client is not None:
                    subscriber.client.abort()
                raise
        self.subscribers.append(subscriber)

    def collect(self, phase: int) -> dict[str, Any]:
        stats = self.phases[phase]
        return {
            "unique": [s.received(phase) for s in self.subscribers],
            "duplicates": sum(s.duplicates for s in self.subscribers),
            "latencies_us": stats.latencies_us.tobytes(),
            "last_ns": stats.last_ns,
            **self.disconnects(),
        }

    def disconnects(self) -> dict[str, Any]:
        """Subscribers whose connection ended on its own, by close code."""
        codes = Counter(
            s.client.closed.result()
            for s in self.subscribers
            if s.client is not None and s.client.closed.done()
        )
        return {"disconnected": sum(codes.values()), "close_codes": dict(codes)}

    def close_all(self) -> None:
        for subscriber in self.subscribers:
            if subscriber.client is not None:
                subscriber.client.abort()


def worker_main(conn: Connection) -> None:
    """Process entry point: serve commands on `conn` until told to close.

    Ctrl-C is left to the orchestrator, which closes the workers in order.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    async def run() -> None:
        await Worker(conn).serve()

    uvloop.run(run())
