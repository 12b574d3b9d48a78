"""The ingest benchmark's wearables: `simulator.Device`'s protocol on a callback-driven client.

`simulator.Device` is one coroutine per wearable over the `websockets` client. Driving 200 of
them flat out costs about 47 µs of CPU per acknowledged event in the bench process, half of
the load core at ~11k acks/s. PostgreSQL is not pinned, so what the load takes from core 1
pushes PostgreSQL onto the hub's core 0, and the benchmark measures the load generator as
much as the hub. These devices speak the same JSON commands on `wsclient.WebSocketClient`, as
the fan-out benchmark's subscribers do: server frames are parsed in `data_received`, and the
next publish leaves from the callback that handles the previous reply, with no coroutine, task
or future per event.

Per device, as `simulator.Device` does: `connect` with its own token; for an athlete's first
device, `rpc` `session.start`; then a closed loop of `publish` into `session:<id>` with
`simulator.device.set_event` data, event ids `<device id>-<seq>`. A `{}` line from the server
is a ping, answered with `{}`. A temporary error is retried with the same event (same
`event_id`) after a jittered backoff; any other error is counted by its code and the loop
moves on. Left out, because a benchmark should fail loudly instead: reconnecting. A closed
connection, or a reply that does not come within `REPLY_TIMEOUT_S`, stops the device and is
recorded in `DeviceReport.stopped`.

Setup (connect, `session.start`) awaits one future per command: it happens once per device.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import orjson
from wsclient import WebSocketClient, open_websocket

from simulator import DeviceReport, PhaseResult, ReplyError
from simulator.device import (
    BACKOFF_FIRST_S,
    BACKOFF_MAX_S,
    CLOSE_TIMEOUT_S,
    GAVE_UP,
    MAX_ATTEMPTS,
    OPEN_TIMEOUT_S,
    PING,
    REPLY_TIMEOUT_S,
    set_event,
)
from simulator.fleet import CONNECT_CONCURRENCY, OpenedFleet, TokenSource, bounded

CLIENT_NAME = "fitsync-bench"
STALL_CHECK_S = 1.0
"""How often a run looks for devices whose reply is overdue (`REPLY_TIMEOUT_S`)."""

Reply = dict[str, Any]


def backoff(attempt: int, rng: random.Random) -> float:
    """`simulator.Device`'s backoff: exponential with jitter, so devices that failed together
    do not retry together."""
    ceiling = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (attempt - 1))
    return ceiling * rng.uniform(0.5, 1.0)


class LeanDevice:
    """One wearable on one connection: `connect()`, `start_session()`, `start_run()`, `close()`.

    A run is driven entirely by callbacks; `start_run` returns the report at once and calls
    `on_done` when the run has ended (deadline, count, or the device stopped).
    """

    def __init__(self, device_id: str, token: str) -> None:
        self.device_id = device_id
        self._token = token
        self._rng = random.Random(device_id)
        self._client: WebSocketClient | None = None
        self._command_id = 0
        self._on_reply: Callable[[Reply], None] = _ignore
        """Handler for the reply to the command in flight (`_command_id`)."""
        self._lost = ""
        """Why the connection ended; "" while it is open."""
        self._event_seq = 0
        # One run's state, reset by start_run.
        self._report = DeviceReport(device_id, "")
        self._on_done: Callable[[], None] = _nothing
        self._running = False
        self._channel = ""
        self._count: int | None = None
        self._rate = 0.0
        self._start = self._stop_at = 0.0
        self._sent = 0
        self._event: dict[str, Any] = {}
        self._sent_at = 0.0
        self._attempt = 0
        self._reply_due = float("inf")
        self._timer: asyncio.TimerHandle | None = None

    # -- setup: once per device, so a future per command is fine --------------------------

    async def connect(self, host: str, port: int, path: str) -> None:
        self._client = await open_websocket(host, port, path, self._on_message, OPEN_TIMEOUT_S)
        self._client.closed.add_done_callback(self._on_closed)
        await self._command("connect", {"token": self._token, "name": CLIENT_NAME})

    async def start_session(self, title: str) -> str:
        result = await self._command("rpc", {"method": "session.start", "data": {"title": title}})
        return str(result["data"]["session_id"])

    def close(self) -> asyncio.Future[int] | None:
        """Start the closing handshake; returns the future that resolves once closed."""
        if self._client is None:
            return None
        self._client.close()
        return self._client.closed

    def abort(self) -> None:
        """Drop the TCP connection unless the closing handshake already finished."""
        if self._client is not None and not self._client.closed.done():
            self._client.abort()

    async def _command(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        """Send one command and wait for its reply; an error reply raises `ReplyError`."""
        assert self._client is not None
        replied: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

        def resolve(reply: Reply) -> None:
            if not replied.done():
                replied.set_result(reply)

        self._on_reply = resolve
        self._send_command(method, body)
        closed = self._client.closed
        done, _ = await asyncio.wait(
            {replied, closed}, timeout=REPLY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        if replied not in done:
            why = f"closed with code {closed.result()}" if closed in done else "no reply"
            raise ConnectionError(f"{self.device_id}: {method}: {why}")
        reply = replied.result()
        error = reply.get("error")
        if error is not None:
            code, message = int(error.get("code", 0)), str(error.get("message", ""))
            raise ReplyError(code, message, bool(error.get("temporary")))
        result: dict[str, Any] = reply.get(method) or {}
        return result

    # -- the connection's callbacks -------------------------------------------------------

    def _on_message(self, message: bytes, _received_ns: int) -> None:
        """Every server frame: newline-separated replies, `{}` pings answered at once."""
        for line in message.split(b"\n"):
            line = line.strip()
            if line == PING:
                assert self._client is not None
                self._client.send_text(PING)
            elif line:
                reply = orjson.loads(line)
                if reply.get("id") == self._command_id:
                    self._on_reply(reply)

    def _on_closed(self, closed: asyncio.Future[int]) -> None:
        self._lost = f"connection closed with code {closed.result()}"
        self._finish(self._lost)

    def _send_command(self, method: str, body: dict[str, Any]) -> None:
        assert self._client is not None
        self._command_id += 1
        self._client.send_text(orjson.dumps({"id": self._command_id, method: body}))

    # -- a run: the closed publish loop ---------------------------------------------------

    def start_run(
        self,
        session_id: str,
        on_done: Callable[[], None],
        *,
        count: int | None,
        rate: float,
        seconds: float | None,
    ) -> DeviceReport:
        """Publish events until `count` were sent or `seconds` passed, as `Device.run` does.

        `rate` paces sends in events/s (0: as fast as acks come back); a late event leaves at
        once instead of being skipped. The returned report fills in as the run goes.
        """
        self._report = DeviceReport(self.device_id, session_id)
        self._on_done = on_done
        self._running = True
        self._channel = f"session:{session_id}"
        self._count, self._rate, self._sent = count, rate, 0
        self._start = time.perf_counter()
        self._stop_at = self._start + seconds if seconds is not None else float("inf")
        self._on_reply = self._on_publish_reply
        if self._lost:
            self._finish(self._lost)
        else:
            self._advance(self._start)
        return self._report

    def check_reply(self, now: float) -> None:
        """Stop the device when its reply is overdue; aborting stops late replies too."""
        if self._running and now > self._reply_due:
            self._finish(f"no reply within {REPLY_TIMEOUT_S:g} s")
            self.abort()

    def _advance(self, now: float) -> None:
        """After an event is settled: the next one now, at its paced slot, or the end."""
        if now >= self._stop_at or self._sent == self._count:
            self._finish()
            return
        if self._rate > 0:
            delay = self._start + self._sent / self._rate - now
            if delay > 0:
                self._timer = asyncio.get_running_loop().call_later(delay, self._publish_next)
                return
        self._publish_next()

    def _publish_next(self) -> None:
        """A new event; ids are unique per athlete because the device id is part of them."""
        self._sent += 1
        self._event_seq += 1
        event_id = f"{self.device_id}-{self._event_seq}"
        self._event = set_event(event_id, self._rng, int(time.time() * 1000))
        self._attempt = 0
        self._sent_at = time.perf_counter()
        self._report.first_send = self._report.first_send or self._sent_at
        self._send()

    def _send(self) -> None:
        """(Re)send the current event, with the same `event_id` every time."""
        self._attempt += 1
        self._reply_due = time.perf_counter() + REPLY_TIMEOUT_S
        self._send_command("publish", {"channel": self._channel, "data": self._event})

    def _on_publish_reply(self, reply: Reply) -> None:
        self._reply_due = float("inf")
        error = reply.get("error")
        if error is None:
            now = time.perf_counter()
            self._report.record_ack(self._event, self._sent_at, now)
            self._advance(now)
        elif error.get("temporary") and self._attempt < MAX_ATTEMPTS:
            self._report.retries += 1
            delay = backoff(self._attempt, self._rng)
            self._timer = asyncio.get_running_loop().call_later(delay, self._send)
        else:
            code = GAVE_UP if error.get("temporary") else int(error.get("code", 0))
            self._report.failed[code] += 1
            self._advance(time.perf_counter())

    def _finish(self, stopped: str = "") -> None:
        if not self._running:
            return
        self._running = False
        self._on_reply = _ignore
        if self._timer is not None:
            self._timer.cancel()
        self._report.stopped = stopped
        self._on_done()


class LeanFleet(OpenedFleet):
    """`simulator.Fleet`'s shape on `LeanDevice`s: athletes times devices, one session per
    athlete started by its first device; connects on entry, closes every socket on exit."""

    device_type: type[LeanDevice] = LeanDevice
    """What each device is; the product benchmark's open-loop fleet makes its own."""

    def __init__(
        self,
        url: str,
        tokens: TokenSource,
        *,
        athletes: int,
        devices_per_athlete: int,
        title: str = "bench",
    ) -> None:
        parts = urlsplit(url)
        self._host, self._port, self._path = parts.hostname or "", parts.port or 80, parts.path
        self.run_id = secrets.token_hex(3)
        self.title = title
        self.athletes = [f"lean-{self.run_id}-a{i}" for i in range(athletes)]
        self.devices = [
            self.device_type(device_id, tokens(athlete, device_id))
            for athlete in self.athletes
            for device_id in (f"{athlete}-d{j}" for j in range(devices_per_athlete))
        ]
        self.devices_per_athlete = devices_per_athlete
        self.sessions: list[str] = []
        """One session id per athlete, in `athletes` order."""

    async def open(self) -> None:
        """Connect every device, then have each athlete's first device start the session."""
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        await bounded(gate, (d.connect(self._host, self._port, self._path) for d in self.devices))
        leads = self.devices[:: self.devices_per_athlete]
        self.sessions = await bounded(gate, (lead.start_session(self.title) for lead in leads))

    async def run(
        self, *, count: int | None = None, rate: float = 0.0, seconds: float | None = None
    ) -> PhaseResult:
        """All devices publish at once; see `LeanDevice.start_run`. Waits for every device,
        checking every `STALL_CHECK_S` for one whose reply is overdue."""
        if count is None and seconds is None:
            raise ValueError("give `count`, `seconds` or both")
        finished = asyncio.get_running_loop().create_future()
        remaining = len(self.devices)

        def one_done() -> None:
            nonlocal remaining
            remaining -= 1
            if remaining == 0:
                finished.set_result(None)

        reports = [
            device.start_run(self.session_of(i), one_done, count=count, rate=rate, seconds=seconds)
            for i, device in enumerate(self.devices)
        ]
        while not finished.done():
            await asyncio.wait({finished}, timeout=STALL_CHECK_S)
            now = time.perf_counter()
            for device in self.devices:
                device.check_reply(now)
        return PhaseResult(reports)

    async def close(self) -> None:
        """Close every connection cleanly, aborting those not closed by `CLOSE_TIMEOUT_S`."""
        closing = [f for f in (device.close() for device in self.devices) if f is not None]
        if closing:
            await asyncio.wait(closing, timeout=CLOSE_TIMEOUT_S)
        for device in self.devices:
            device.abort()

    def session_of(self, device_index: int) -> str:
        return self.sessions[device_index // self.devices_per_athlete]


def _ignore(reply: Reply) -> None:
    """No command of interest is in flight (between runs, after a run ended)."""


def _nothing() -> None:
    """No run has started yet."""
