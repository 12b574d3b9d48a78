"""One simulated wearable speaking the Centrifuge client protocol v2 (JSON) over WebSocket.

A device connects with its own token (role `device`, `sub` = its athlete), starts a session or
joins a given one, and publishes set and heart-rate events into `session:<id>` in a closed
loop: the next event leaves only once the previous one is acknowledged, as firmware that must
not lose a set does. The publish reply is the hub's promise that the event is committed, so
the time from the first send to that reply is the ack latency a wearer lives with.

Lean on purpose, so one process drives hundreds of devices: a device is one coroutine over a
raw `websockets` connection, with no reader task and no future per command. It sends a
command, then reads frames until that command's reply arrives, answering the server's `{}`
pings on the way; while it waits to send (pacing, retry backoff) it keeps reading, so a ping
never goes unanswered.

Delivery contract: after a temporary error (database unreachable, rate limit), a dropped
connection or a reply that never came, the device sends the same event again with the same
`event_id`; the hub acknowledges a repeated id without storing it twice. Any other error is
final for that event and is counted by its code.
"""

from __future__ import annotations

import asyncio
import random
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

PING = b"{}"
"""The server's ping and the client's pong: an empty command (PROTOCOL.md §1.2)."""
EXERCISES = ("squat", "bench press", "deadlift", "overhead press", "barbell row", "pull-up")
HR_SAMPLES_PER_EVENT = 5
"""An hr event carries the last few seconds of one-per-second readings."""
MAX_ATTEMPTS = 10
"""Sends of one event before the device gives up on it."""
MAX_RECONNECT_ATTEMPTS = 30
"""Connects after a drop before the device gives up: at the backoff's ceiling about half a
minute, long enough for a hub that is restarting (a rolling deploy) to come back."""
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 1.0
REPLY_TIMEOUT_S = 10.0
"""No reply by then: the connection is treated as lost, and the event is sent again."""
OPEN_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0
GAVE_UP = 0
"""`DeviceReport.failed` key for events still failing after `MAX_ATTEMPTS` sends."""

_CONNECTION_ERRORS = (OSError, TimeoutError, WebSocketException)


class ReplyError(Exception):
    """An error reply; `temporary` is the hub saying the same command may succeed later."""

    def __init__(self, code: int, message: str, temporary: bool) -> None:
        super().__init__(f"error {code}: {message}")
        self.code = code
        self.message = message
        self.temporary = temporary


@dataclass
class DeviceReport:
    """What one device had acknowledged during one `Device.run`, and what it cost."""

    device: str
    session_id: str
    acked: dict[str, str] = field(default_factory=dict)
    """Acknowledged event ids and their `type`, in acknowledgement order."""
    latencies_ms: array[float] = field(default_factory=lambda: array("d"))
    """Per acknowledged event: first send to acknowledgement, retries included."""
    first_send: float = 0.0
    last_ack: float = 0.0
    """`time.perf_counter()` of the run's first send and last acknowledgement (0: none yet)."""
    sent: int = 0
    """Events sent at least once (read live by the progress display)."""
    retries: int = 0
    reconnects: int = 0
    failed: Counter[int] = field(default_factory=Counter)
    """Events given up, by final error code (`GAVE_UP`: still failing after every attempt)."""
    stopped: str = ""
    """Why the device stopped before the end of the run (a terminal disconnect); "" if not."""

    def record_ack(self, event: dict[str, Any], sent_at: float, acked_at: float) -> None:
        self.acked[event["event_id"]] = event["type"]
        self.latencies_ms.append((acked_at - sent_at) * 1000)
        self.last_ack = acked_at


def set_event(event_id: str, rng: random.Random, now_ms: int) -> dict[str, Any]:
    """A plausible strength set; the bench's baseline stores these same fields."""
    return {
        "type": "set",
        "event_id": event_id,
        "exercise": rng.choice(EXERCISES),
        "reps": rng.randint(3, 12),
        "weight_kg": rng.randint(8, 56) * 2.5,
        "ts": now_ms,
    }


def hr_event(event_id: str, rng: random.Random, now_ms: int) -> dict[str, Any]:
    """Heart rate around a random working level, one sample per second up to now."""
    level = rng.randint(95, 165)
    samples = [
        [now_ms - (HR_SAMPLES_PER_EVENT - 1 - i) * 1000, level + rng.randint(-4, 4)]
        for i in range(HR_SAMPLES_PER_EVENT)
    ]
    return {"type": "hr", "event_id": event_id, "samples": samples}


def _is_terminal(closed: ConnectionClosed) -> bool:
    """The SDKs' rule (PROTOCOL.md §6.2): 3500–3999, 4500–4999 and 1009 mean do not reconnect."""
    code = closed.rcvd.code if closed.rcvd is not None else 1006
    return code == 1009 or 3500 <= code < 4000 or 4500 <= code < 5000


EventSource = Callable[[str, int], dict[str, Any]]
"""(event id, now in ms) → the next event to publish; `simulator.workout.Workout` is one."""


class Connection:
    """One Centrifuge JSON connection driven command by command: the plumbing that a wearable
    and a watching trainer (`simulator.watcher`) share. Reads happen only inside a command
    or `_idle`, so there is no reader task; pushes read meanwhile go to `on_push`."""

    def __init__(self, url: str, token: str, name: str) -> None:
        self.url = url
        self.token = token
        self.name = name
        self._ws: ClientConnection | None = None
        self._command_id = 0

    def on_push(self, push: dict[str, Any]) -> None:
        """A push read while waiting for a reply or idling; devices ignore them."""

    async def connect(self) -> dict[str, Any]:
        """Open the socket and send `connect`; returns the ConnectResult."""
        self._ws = await connect(
            self.url,
            compression=None,
            ping_interval=None,
            proxy=None,
            open_timeout=OPEN_TIMEOUT_S,
            close_timeout=CLOSE_TIMEOUT_S,
        )
        return await self._command("connect", {"token": self.token, "name": "fitsync-simulator"})

    async def close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()

    async def rpc(self, method: str, data: dict[str, Any]) -> Any:
        result = await self._command("rpc", {"method": method, "data": data})
        return result.get("data")

    async def _command(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        """Send one command and wait for its reply; an error reply raises `ReplyError`."""
        ws = self._connection()
        self._command_id += 1
        command_id = self._command_id
        await ws.send(orjson.dumps({"id": command_id, method: body}), text=True)
        async with asyncio.timeout(REPLY_TIMEOUT_S):
            reply = await self._reply(command_id)
        error = reply.get("error")
        if error is not None:
            raise ReplyError(
                int(error.get("code", 0)),
                str(error.get("message", "")),
                bool(error.get("temporary")),
            )
        result: dict[str, Any] = reply.get(method) or {}
        return result

    async def _reply(self, command_id: int) -> dict[str, Any]:
        while True:
            for message in await self._read_frame():
                if message.get("id") == command_id:
                    return message

    async def _idle(self, seconds: float) -> None:
        """Wait while still reading, so pings are answered and pushes drained meanwhile.

        A connection lost while idle is left for the next command to find: its send fails
        with the close code, which decides whether to reconnect.
        """
        if seconds <= 0:
            return
        deadline = time.perf_counter() + seconds
        try:
            async with asyncio.timeout(seconds):
                while True:
                    await self._read_frame()
        except TimeoutError:
            return
        except _CONNECTION_ERRORS:
            await asyncio.sleep(max(0.0, deadline - time.perf_counter()))

    async def _read_frame(self) -> list[dict[str, Any]]:
        """One frame's messages (newline-batched), pings answered and left out, pushes handed
        to `on_push`."""
        ws = self._connection()
        frame = await ws.recv(decode=False)
        messages = []
        for line in frame.split(b"\n"):
            line = line.strip()
            if line == PING:
                await ws.send(PING, text=True)
            elif line:
                message = orjson.loads(line)
                if "push" in message:
                    self.on_push(message["push"])
                messages.append(message)
        return messages

    def _connection(self) -> ClientConnection:
        if self._ws is None:
            raise ConnectionError(f"{self.name} is not connected")
        return self._ws


class Device(Connection):
    """One wearable: `connect()`, `start_session()` or a known session id, `run()`, `close()`."""

    def __init__(
        self,
        url: str,
        token: str,
        device_id: str,
        *,
        hr_share: float = 0.0,
        events: EventSource | None = None,
    ) -> None:
        super().__init__(url, token, device_id)
        self.device_id = device_id
        self.hr_share = hr_share
        """Fraction of events that are heart-rate batches; the rest are sets."""
        self.events = events
        """Where events come from; None: random sets and heart rate by `hr_share`."""
        self.report: DeviceReport | None = None
        """The report of the run under way (or the last one), for a live progress display."""
        self._rng = random.Random(device_id)
        self._event_seq = 0

    async def start_session(self, title: str = "") -> str:
        result = await self.rpc("session.start", {"title": title})
        return str(result["session_id"])

    async def end_session(self, session_id: str) -> dict[str, Any]:
        """End the session; returns its summary (sets, reps, volume, heart rate)."""
        result = await self.rpc("session.end", {"session_id": session_id})
        summary: dict[str, Any] = result["summary"]
        return summary

    async def run(
        self,
        session_id: str,
        *,
        count: int | None = None,
        rate: float = 0.0,
        seconds: float | None = None,
        stop: asyncio.Event | None = None,
    ) -> DeviceReport:
        """Publish events into the session, each only after the previous one was acknowledged.

        Stops after `count` events, once `seconds` have passed, or when `stop` is set
        (checked between events), whichever comes first.
        `rate` paces sends in events/s (0: as fast as acks come back); an event that is late
        leaves at once instead of being skipped, so `count` events are always attempted.
        A terminal disconnect ends the run early and is noted in `DeviceReport.stopped`.
        """
        if count is None and seconds is None and stop is None:
            raise ValueError("give `count`, `seconds` or `stop`")
        report = self.report = DeviceReport(self.device_id, session_id)
        channel = f"session:{session_id}"
        start = time.perf_counter()
        stop_at = start + seconds if seconds is not None else float("inf")
        sent = 0
        try:
            while ((count is None or sent < count) and time.perf_counter() < stop_at
                   and not (stop is not None and stop.is_set())):
                if rate > 0:
                    await self._idle(start + sent / rate - time.perf_counter())
                await self._deliver(channel, self._next_event(), report)
                sent += 1
        except (*_CONNECTION_ERRORS, ReplyError) as exc:
            report.stopped = repr(exc)
        return report

    def _next_event(self) -> dict[str, Any]:
        """Event ids are unique per athlete because the device id is part of them."""
        self._event_seq += 1
        event_id = f"{self.device_id}-{self._event_seq}"
        now_ms = int(time.time() * 1000)
        if self.events is not None:
            return self.events(event_id, now_ms)
        if self._rng.random() < self.hr_share:
            return hr_event(event_id, self._rng, now_ms)
        return set_event(event_id, self._rng, now_ms)

    async def _deliver(self, channel: str, event: dict[str, Any], report: DeviceReport) -> None:
        """Send until acknowledged or a final error; always the same `event_id`."""
        body = {"channel": channel, "data": event}
        sent_at = time.perf_counter()
        report.first_send = report.first_send or sent_at
        report.sent += 1
        for attempt in range(MAX_ATTEMPTS):
            try:
                if attempt:
                    report.retries += 1
                    await self._idle(self._backoff(attempt))
                await self._command("publish", body)
            except ReplyError as exc:
                if not exc.temporary:
                    report.failed[exc.code] += 1
                    return
            except _CONNECTION_ERRORS as exc:
                await self._reconnect(exc)
                report.reconnects += 1
            else:
                report.record_ack(event, sent_at, time.perf_counter())
                return
        report.failed[GAVE_UP] += 1

    def _backoff(self, attempt: int) -> float:
        """Exponential with jitter, so devices that failed together do not retry together."""
        ceiling = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2.0 ** (attempt - 1))
        return ceiling * self._rng.uniform(0.5, 1.0)

    async def _reconnect(self, cause: BaseException) -> None:
        """A new connection after `cause` ended the last one, unless the hub said not to."""
        if isinstance(cause, ConnectionClosed) and _is_terminal(cause):
            raise cause
        await self._abandon()
        for attempt in range(1, MAX_RECONNECT_ATTEMPTS + 1):
            await asyncio.sleep(self._backoff(attempt))
            try:
                await self.connect()
                return
            except _CONNECTION_ERRORS:
                await self._abandon()
        raise ConnectionError(
            f"{self.device_id}: no connection after {MAX_RECONNECT_ATTEMPTS} attempts")

    async def _abandon(self) -> None:
        """Drop a connection that failed; closing it cleanly may fail too, and does not matter."""
        try:
            await self.close()
        except _CONNECTION_ERRORS:
            pass
