"""The product benchmark's clients: open-loop devices, trainers watching sessions, a storm.

* `OpenLoopDevice`: a `LeanDevice` (connect, `session.start`) whose run is open loop. Each
  event has a slot on a fixed schedule (`rate` per second, the first slot at a random phase,
  each send jittered within its period) and leaves at its slot whether or not earlier events
  were acknowledged, as a wearable's firmware sends on its own clock. Several publishes are
  in flight at once, told apart by command id. A temporary error is retried with the same
  `event_id` after a jittered backoff. How late each send left against its slot is the load
  generator's schedule lag: a saturated load core shows there, not as a slower hub.
* `Watcher`: a trainer's connection subscribed to its clients' `session:` channels, recording
  when each set event arrives.
* `StormClient`: one connect of a storm: socket, handshake, `connect` command, reply; then it
  stays connected and answers pings. Reconnect-advised closes and temporary errors are
  retried with the SDKs' jittered backoff; every failure is counted by its kind.

All of them record into a `Ledger` (per event id) or a `StormTally`, and all of them are
driven by callbacks on `wsclient.WebSocketClient`: no coroutine or future per event.
"""

from __future__ import annotations

import asyncio
import random
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from ingest_devices import LeanDevice, LeanFleet, backoff
from wsclient import HandshakeError, WebSocketClient, open_websocket

from simulator.device import MAX_ATTEMPTS, OPEN_TIMEOUT_S, PING, REPLY_TIMEOUT_S, set_event
from simulator.fleet import percentile

Reply = dict[str, Any]


def quantiles_ms(values: list[float] | array[float]) -> dict[str, float]:
    """p50/p99/max in ms of values in seconds (empty: {})."""
    ordered = sorted(values)
    if not ordered:
        return {}
    return {
        "p50": round(1000 * percentile(ordered, 0.50), 2),
        "p99": round(1000 * percentile(ordered, 0.99), 2),
        "max": round(1000 * ordered[-1], 2),
    }


@dataclass
class Ledger:
    """Every event of a run by id: its slot, first send, acknowledgement, trainer delivery.

    Times are `time.perf_counter()` seconds of this process, so the device → trainer latency
    is a difference of two readings of one clock.
    """

    slot: dict[str, float] = field(default_factory=dict)
    sent: dict[str, float] = field(default_factory=dict)
    acked: dict[str, float] = field(default_factory=dict)
    delivered: dict[str, float] = field(default_factory=dict)
    duplicate_acks: int = 0
    duplicate_deliveries: int = 0
    retries: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    """Events given up, by why: `error <code>`, `gave up` (temporary errors every attempt)."""
    closed: Counter[int] = field(default_factory=Counter)
    """Device connections closed during the run, by close code."""

    def record_send(self, event_id: str, slot: float, now: float) -> None:
        self.slot[event_id] = slot
        self.sent[event_id] = now

    def record_ack(self, event_id: str, now: float) -> None:
        if event_id in self.acked:
            self.duplicate_acks += 1
        else:
            self.acked[event_id] = now

    def record_delivery(self, event_id: str, now: float) -> None:
        if event_id in self.delivered:
            self.duplicate_deliveries += 1
        else:
            self.delivered[event_id] = now

    def settled(self) -> bool:
        """Every sent event acknowledged (or failed) and every acknowledged one delivered."""
        failed = sum(self.failed.values())
        return len(self.acked) + failed >= len(self.sent) and len(self.delivered) >= len(
            self.acked
        )

    def window(self, start: float, end: float) -> dict[str, Any]:
        """Figures for the events whose slot falls in [start, end)."""
        ids = [e for e, s in self.slot.items() if start <= s < end]
        seconds = end - start
        lag = [self.sent[e] - self.slot[e] for e in ids]
        acked = [e for e in ids if e in self.acked]
        ack = [self.acked[e] - self.sent[e] for e in acked]
        delivered = [e for e in ids if e in self.delivered]
        to_trainer = [self.delivered[e] - self.sent[e] for e in delivered]
        return {
            "seconds": round(seconds, 3),
            "sent": len(ids),
            "offered_per_s": round(len(ids) / seconds, 1) if seconds > 0 else 0.0,
            "acked": len(acked),
            "acked_per_s": round(len(acked) / seconds, 1) if seconds > 0 else 0.0,
            "delivered": len(delivered),
            "not_acked": len(ids) - len(acked),
            "acked_not_delivered": sum(1 for e in acked if e not in self.delivered),
            "ack_ms": quantiles_ms(ack),
            "device_to_trainer_ms": quantiles_ms(to_trainer),
            "schedule_lag_ms": quantiles_ms(lag),
        }


class OpenLoopDevice(LeanDevice):
    """A wearable that sends on its own schedule; see the module docstring."""

    def __init__(self, device_id: str, token: str) -> None:
        super().__init__(device_id, token)
        self._ledger = Ledger()
        self._in_flight: dict[int, tuple[str, dict[str, Any], int]] = {}
        """command id → (event id, event, attempt)."""
        self._period = 0.0
        self._jitter = 0.0
        self._next_slot = 0.0
        self._end = 0.0
        self._schedule: asyncio.TimerHandle | None = None

    def start_schedule(
        self, ledger: Ledger, *, rate: float, jitter: float, start: float, end: float
    ) -> None:
        """Send events with slots in [start, end): `rate` per second, the first at a random
        phase, each up to `jitter` of a period late on purpose."""
        self._ledger = ledger
        self._period = 1.0 / rate
        self._jitter = jitter
        self._next_slot = start + self._rng.uniform(0.0, self._period)
        self._end = end
        self._arm()

    def stop_schedule(self) -> None:
        if self._schedule is not None:
            self._schedule.cancel()
            self._schedule = None

    def _arm(self) -> None:
        if self._next_slot >= self._end or self._lost:
            self._schedule = None
            return
        slot = self._next_slot + self._rng.uniform(0.0, self._jitter * self._period)
        delay = max(0.0, slot - time.perf_counter())
        self._schedule = asyncio.get_running_loop().call_later(delay, self._fire, slot)

    def _fire(self, slot: float) -> None:
        self._next_slot += self._period
        self._event_seq += 1
        event_id = f"{self.device_id}-{self._event_seq}"
        event = set_event(event_id, self._rng, int(time.time() * 1000))
        self._ledger.record_send(event_id, slot, time.perf_counter())
        self._publish(event_id, event, 1)
        self._arm()

    def _publish(self, event_id: str, event: dict[str, Any], attempt: int) -> None:
        if self._lost:
            return
        self._send_command("publish", {"channel": self._channel, "data": event})
        self._in_flight[self._command_id] = (event_id, event, attempt)

    def _on_message(self, message: bytes, _received_ns: int) -> None:
        for line in message.split(b"\n"):
            line = line.strip()
            if line == PING:
                assert self._client is not None
                self._client.send_text(PING)
            elif line:
                reply = orjson.loads(line)
                pending = self._in_flight.pop(reply.get("id"), None)
                if pending is not None:
                    self._on_event_reply(reply, *pending)
                elif reply.get("id") == self._command_id:
                    self._on_reply(reply)

    def _on_event_reply(
        self, reply: Reply, event_id: str, event: dict[str, Any], attempt: int
    ) -> None:
        error = reply.get("error")
        if error is None:
            self._ledger.record_ack(event_id, time.perf_counter())
        elif error.get("temporary") and attempt < MAX_ATTEMPTS:
            self._ledger.retries += 1
            delay = backoff(attempt, self._rng)
            asyncio.get_running_loop().call_later(
                delay, self._publish, event_id, event, attempt + 1
            )
        else:
            why = "gave up" if error.get("temporary") else f"error {error.get('code')}"
            self._ledger.failed[why] += 1

    def _on_closed(self, closed: asyncio.Future[int]) -> None:
        super()._on_closed(closed)
        self._ledger.closed[closed.result()] += 1
        self.stop_schedule()

    def use_channel(self, session_id: str) -> None:
        self._channel = f"session:{session_id}"


class OpenLoopFleet(LeanFleet):
    """`LeanFleet` of `OpenLoopDevice`s: one device and one session per athlete."""

    device_type = OpenLoopDevice

    def schedule(
        self, ledger: Ledger, *, rate: float, jitter: float, start: float, end: float
    ) -> None:
        """Every device sends `rate` events/s with slots in [start, end)."""
        for i, device in enumerate(self.devices):
            assert isinstance(device, OpenLoopDevice)
            device.use_channel(self.session_of(i))
            device.start_schedule(ledger, rate=rate, jitter=jitter, start=start, end=end)

    def stop(self) -> None:
        for device in self.devices:
            assert isinstance(device, OpenLoopDevice)
            device.stop_schedule()


class Watcher:
    """A trainer's connection: `connect()`, `subscribe()` to sessions, then deliveries are
    recorded into the ledger as they arrive."""

    def __init__(self, trainer_id: str, token: str, ledger: Ledger) -> None:
        self.trainer_id = trainer_id
        self._token = token
        self.ledger = ledger
        self._client: WebSocketClient | None = None
        self._command_id = 0
        self._waiting: dict[int, asyncio.Future[Reply]] = {}
        self.closed_with: int | None = None

    async def connect(self, host: str, port: int, path: str) -> None:
        self._client = await open_websocket(host, port, path, self._on_message, OPEN_TIMEOUT_S)
        self._client.closed.add_done_callback(self._on_closed)
        await self._command("connect", {"token": self._token, "name": "fitsync-bench-trainer"})

    async def subscribe(self, channels: list[str]) -> None:
        await asyncio.gather(*(self._command("subscribe", {"channel": c}) for c in channels))

    def abort(self) -> None:
        if self._client is not None:
            self._client.abort()

    async def _command(self, method: str, body: dict[str, Any]) -> Reply:
        assert self._client is not None
        self._command_id += 1
        replied: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[self._command_id] = replied
        self._client.send_text(orjson.dumps({"id": self._command_id, method: body}))
        reply = await asyncio.wait_for(replied, REPLY_TIMEOUT_S)
        if "error" in reply:
            raise RuntimeError(f"{self.trainer_id}: {method} {body}: {reply['error']}")
        return reply

    def _on_message(self, message: bytes, _received_ns: int) -> None:
        now = time.perf_counter()
        for line in message.split(b"\n"):
            line = line.strip()
            if line == PING:
                assert self._client is not None
                self._client.send_text(PING)
            elif line:
                reply = orjson.loads(line)
                push = reply.get("push")
                if push is not None:
                    event_id = push.get("pub", {}).get("data", {}).get("event_id")
                    if event_id is not None:
                        self.ledger.record_delivery(event_id, now)
                    continue
                waiting = self._waiting.pop(reply.get("id"), None)
                if waiting is not None and not waiting.done():
                    waiting.set_result(reply)

    def _on_closed(self, closed: asyncio.Future[int]) -> None:
        self.closed_with = closed.result()


# -- the connection storm -------------------------------------------------------------------


@dataclass
class StormTally:
    """What the storm's connects saw: connect times, and every failure by kind."""

    started: float = 0.0
    connect_s: list[float] = field(default_factory=list)
    """Per client that got connected: storm start → connect reply (retries included)."""
    first_attempt_s: list[float] = field(default_factory=list)
    """Per client connected at its first attempt: that attempt's start → connect reply."""
    errors: Counter[str] = field(default_factory=Counter)
    """`close <code>`, `error <code>`, `client timeout`, `tcp <exception>`, `handshake`."""
    gave_up: int = 0
    last_connect: float = 0.0
    ended: float = 0.0

    def summary(self, clients: int) -> dict[str, Any]:
        connected = len(self.connect_s)
        span = self.last_connect - self.started if connected else 0.0
        return {
            "clients": clients,
            "connected": connected,
            "all_connected_s": round(span, 3) if connected == clients else None,
            "connects_per_s": round(connected / span, 1) if span > 0 else 0.0,
            "connect_ms": quantiles_ms(self.connect_s),
            "first_attempt_ok": len(self.first_attempt_s),
            "errors": dict(sorted(self.errors.items())),
            "gave_up": self.gave_up,
        }


class StormClient:
    """One client of the storm; `start()` schedules its connect and returns at once."""

    def __init__(
        self,
        host: str,
        port: int,
        path: str,
        token: str,
        tally: StormTally,
        rng: random.Random,
        source: str | None = None,
    ) -> None:
        self._where = (host, port, path)
        self._source = source
        """Local address to connect from (see `wsclient.open_websocket`)."""
        self._opening: asyncio.Future[WebSocketClient] | None = None
        self._token = token
        self._tally = tally
        self._rng = rng
        self._client: WebSocketClient | None = None
        self._attempt = 0
        self._attempt_started = 0.0
        self._connected = False
        self._settled = False
        self._deadline = 0.0
        self._reply_timeout = 0.0
        self._timer: asyncio.TimerHandle | None = None
        """The retry's backoff."""

    def start(self, deadline: float, reply_timeout: float) -> None:
        """Connect (and retry until `deadline`, perf_counter seconds); each attempt waits at
        most `reply_timeout` for its handshake and its connect reply."""
        self._deadline = deadline
        self._reply_timeout = reply_timeout
        self._attempt_now()

    def abort(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._client is not None:
            self._client.abort()

    def _attempt_now(self) -> None:
        self._attempt += 1
        self._settled = False
        self._attempt_started = time.perf_counter()
        asyncio.get_running_loop().create_task(self._open())

    async def _open(self) -> None:
        host, port, path = self._where
        try:
            opening = open_websocket(
                host, port, path, self._on_message, _NO_TIMEOUT, source=self._source
            )
            self._opening = asyncio.ensure_future(opening)
            client = await self._opening
        except asyncio.CancelledError:
            self._fail("client timeout (handshake)", retry=True)
            return
        except HandshakeError as exc:
            self._fail(f"handshake: {exc}", retry=True)
            return
        except OSError as exc:
            self._fail(f"tcp {type(exc).__name__}", retry=True)
            return
        self._client = client
        client.closed.add_done_callback(lambda closed: self._on_closed(client, closed))
        client.send_text(orjson.dumps({"id": 1, "connect": {"token": self._token}}))

    def _on_message(self, message: bytes, _received_ns: int) -> None:
        for line in message.split(b"\n"):
            line = line.strip()
            if line == PING:
                assert self._client is not None
                self._client.send_text(PING)
            elif line and not self._settled:
                reply = orjson.loads(line)
                if reply.get("id") == 1:
                    self._on_connect_reply(reply)

    def _on_connect_reply(self, reply: Reply) -> None:
        error = reply.get("error")
        if error is None:
            self._settled = self._connected = True
            now = time.perf_counter()
            self._tally.connect_s.append(now - self._tally.started)
            if self._attempt == 1:
                self._tally.first_attempt_s.append(now - self._attempt_started)
            self._tally.last_connect = max(self._tally.last_connect, now)
            return
        self._fail(f"error {error.get('code')}", retry=bool(error.get("temporary")))

    def _on_closed(self, client: WebSocketClient, closed: asyncio.Future[int]) -> None:
        if client is not self._client:
            return  # an attempt already counted and dropped
        code = closed.result()
        if self._connected:
            self._tally.errors[f"close {code} after connect"] += 1
            return
        if not self._settled:
            reconnect = code < 3500 or 4000 <= code < 4500
            self._fail(f"close {code}", retry=reconnect)

    def check_overdue(self, now: float) -> None:
        """Fail the attempt whose handshake or connect reply is `reply_timeout` overdue (see
        `run_storm`)."""
        if self._settled or now - self._attempt_started <= self._reply_timeout:
            return
        if self._client is not None:
            self._fail("client timeout (connect reply)", retry=True)
        elif self._opening is not None and not self._opening.done():
            self._opening.cancel()  # `_open` counts it

    def _fail(self, kind: str, *, retry: bool) -> None:
        """Count the failure, drop the attempt's socket, retry after a backoff if allowed."""
        self._settled = True
        self._tally.errors[kind] += 1
        client, self._client = self._client, None
        if client is not None:
            client.abort()
        delay = min(20.0, 0.5 * 2 ** (self._attempt - 1)) * self._rng.uniform(0.5, 1.0)
        if not retry or time.perf_counter() + delay > self._deadline:
            self._tally.gave_up += 1
            return
        self._timer = asyncio.get_running_loop().call_later(delay, self._attempt_now)


SWEEP_S = 0.25
START_SLICE = 100
"""Clients started per loop iteration. On loopback `connect()` runs the TCP handshake inside
the system call; 19,000 in one iteration kept this loop from reading any reply for seconds."""
_NO_TIMEOUT = 3600.0
"""The handshake's own timeout: overdue attempts are found by `run_storm`'s sweep instead."""
CLIENTS_PER_SOURCE = 2000
"""Storm clients per local address: well inside one address's ephemeral port range."""


def storm_source(index: int) -> str:
    """127.0.1.1, 127.0.1.2, …: a fresh loopback address per `CLIENTS_PER_SOURCE` clients."""
    return f"127.0.1.{1 + index // CLIENTS_PER_SOURCE}"


async def run_storm(clients: list[StormClient], tally: StormTally, *, deadline_s: float,
                    reply_timeout: float) -> None:
    """Start every client at once; return when all are connected or gave up, or at the
    deadline. Overdue replies are looked for every `SWEEP_S`, and only after the loop has
    polled its sockets once more: after a long iteration, timers run before the reads, and
    a reply already waiting in a socket would otherwise count as a timeout."""
    tally.started = time.perf_counter()
    deadline = tally.started + deadline_s
    for first in range(0, len(clients), START_SLICE):
        for client in clients[first : first + START_SLICE]:
            client.start(deadline, reply_timeout)
        await asyncio.sleep(0)
    while len(tally.connect_s) + tally.gave_up < len(clients):
        await asyncio.sleep(SWEEP_S)
        for _ in range(2):  # two iterations: the first may run before the poll
            await asyncio.sleep(0)
        now = time.perf_counter()
        if now > deadline:
            break
        for client in clients:
            client.check_overdue(now)
    tally.ended = time.perf_counter()


def storm_worker(pipe: Any, spec: dict[str, Any]) -> None:
    """A process of its own for the storm's clients, so their work does not delay the live
    sessions' callbacks in the load generator's loop (both share the load core).

    Protocol on `pipe`: sends "ready"; on "go" runs the storm and sends the tally's summary
    with `started`/`ended` (perf_counter seconds, one clock for all processes); on "close"
    drops every connection and exits."""
    import resource

    import uvloop

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        tally = StormTally()
        rng = random.Random(spec["seed"])
        clients = [
            StormClient(spec["host"], spec["port"], spec["path"], token, tally, rng,
                        source=storm_source(i))
            for i, token in enumerate(spec["tokens"])
        ]
        pipe.send("ready")
        assert await loop.run_in_executor(None, pipe.recv) == "go"
        await run_storm(clients, tally, deadline_s=spec["deadline_s"],
                        reply_timeout=spec["reply_timeout"])
        summary = tally.summary(len(clients))
        pipe.send({**summary, "started": tally.started, "ended": tally.ended})
        await loop.run_in_executor(None, pipe.recv)
        for client in clients:
            client.abort()
        await asyncio.sleep(0.1)

    uvloop.run(main())
