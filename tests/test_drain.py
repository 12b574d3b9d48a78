"""Graceful shutdown, against real `fitsync-hub serve` processes stopped with a real SIGTERM.

What a rolling deploy needs: `/readyz` fails at once, new connections are refused only after
the configured delay, a command in flight is finished and acknowledged before the shutdown
disconnect, the disconnects are spread over `HUB_DRAIN_SECONDS`, and the process is gone within
`HUB_SHUTDOWN_TIMEOUT` even when the database is stuck and a client never answers.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import centrifuge
import httpx
import pytest
import redis.asyncio
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.frames import Frame, Opcode

from hub import auth
from hub.protocol.codes import DisconnectCode, ErrorCode
from simulator import Fleet
from tests.harness import API_KEY, SECRET, Recorder, eventually, free_port
from tests.raw import RawClient

SHUTDOWN = DisconnectCode.SHUTDOWN.code
HUB_COMMAND = [str(Path(sys.executable).with_name("fitsync-hub")), "serve"]
SHARED_REDIS = "redis://127.0.0.1:6379"
STARTUP_TIMEOUT_S = 60.0
"""A loaded machine may take a while to import, migrate and listen."""


@dataclass
class HubProcess:
    """One `fitsync-hub serve` child process; its output goes to `log`."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/websocket"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, user: str, role: str = "athlete", device: str | None = None) -> str:
        return auth.mint(SECRET, user, role, device=device, ttl=3600)

    def terminate(self) -> float:
        """Send SIGTERM; returns the moment (time.monotonic()) it was sent."""
        self.process.send_signal(signal.SIGTERM)
        return time.monotonic()

    async def exited(self, timeout: float = 30.0) -> int:
        """Wait for the process to end; its return code."""
        await eventually(lambda: self.process.poll() is not None, timeout)
        return self.process.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def readyz(self) -> int:
        async with httpx.AsyncClient(base_url=self.http_url, timeout=5) as http:
            return (await http.get("/readyz")).status_code

    def listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0


StartHub = Callable[..., Awaitable[HubProcess]]


@pytest.fixture
async def start_hub_process(tmp_path: Path) -> AsyncIterator[StartHub]:
    """Start `fitsync-hub serve` with `HUB_*` settings given as keyword arguments; every process
    still running at the end is killed by its PID."""
    started: list[HubProcess] = []

    async def start(database_url: str | None = None, port: int | None = None,
                    **settings: Any) -> HubProcess:
        port = port or free_port()
        env = {
            **os.environ,
            "HUB_HOST": "127.0.0.1",
            "HUB_PORT": str(port),
            "HUB_JWT_SECRET": SECRET,
            "HUB_API_KEY": API_KEY,
            "HUB_DATABASE_URL": database_url or f"sqlite:///{tmp_path / 'hub.db'}",
            **{f"HUB_{name.upper()}": str(value) for name, value in settings.items()},
        }
        log = tmp_path / f"hub-{len(started)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(HUB_COMMAND, env=env, cwd=tmp_path, stdout=out,
                                       stderr=subprocess.STDOUT)
        hub = HubProcess(process, port, log)
        started.append(hub)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not hub.listening():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the hub did not start:\n{hub.output()}")
            await asyncio.sleep(0.05)
        return hub

    yield start
    for hub in started:
        if hub.process.poll() is None:
            hub.process.kill()
            hub.process.wait(10)


async def connected_client(hub: HubProcess, user: str, role: str = "athlete",
                           device: str | None = None) -> RawClient:
    client = await RawClient.open(hub.ws_url)
    await client.connect(hub.token(user, role, device))
    return client


async def handshake_refused(hub: HubProcess) -> bool:
    """Whether a new WebSocket connection is refused (not listening, or answered 503)."""
    try:
        async with connect(hub.ws_url, open_timeout=5, proxy=None):
            return False
    except OSError:
        return True
    except InvalidStatus as exc:
        return exc.response.status_code == 503


async def test_readyz_fails_at_once_and_new_connections_are_refused_after_the_delay(
        start_hub_process: StartHub) -> None:
    # A long delay, so that a loaded machine still connects the late client within it.
    hub = await start_hub_process(drain_refuse_delay=6, drain_seconds=1, shutdown_timeout=12)
    early = await connected_client(hub, "ann")
    assert await hub.readyz() == 200

    hub.terminate()
    assert await eventually(_async_check(lambda: hub.readyz(), 503), timeout=3)
    # /readyz has failed, yet the delay is not over: a new client still gets in.
    late = await connected_client(hub, "bob")
    await eventually(_async_check(lambda: handshake_refused(hub), True), timeout=10)

    assert await early.close_code(timeout=10) == SHUTDOWN
    assert await late.close_code(timeout=10) == SHUTDOWN
    assert await hub.exited() == -signal.SIGTERM, hub.output()


def _async_check(probe: Callable[[], Awaitable[Any]], expected: Any) -> Callable[[], Any]:
    """An `eventually` check that runs an async probe, one at a time, and compares its result."""
    state: dict[str, Any] = {"task": None, "hit": False}

    def check() -> bool:
        task = state["task"]
        if task is not None and task.done():
            state["hit"] = state["hit"] or (not task.exception() and task.result() == expected)
            state["task"] = task = None
        if state["hit"]:
            return True
        if task is None:
            state["task"] = asyncio.get_running_loop().create_task(_swallow(probe))
        return False

    return check


async def _swallow(probe: Callable[[], Awaitable[Any]]) -> Any:
    try:
        return await probe()
    except (OSError, httpx.HTTPError):
        return None


async def test_shutdown_disconnects_are_spread_over_the_drain_window(
        start_hub_process: StartHub) -> None:
    window, count = 6.0, 12
    hub = await start_hub_process(drain_refuse_delay=0, drain_seconds=window,
                                  shutdown_timeout=20)
    clients = [await connected_client(hub, f"user{i}") for i in range(count)]

    async def closed_at(client: RawClient) -> tuple[float, int | None]:
        code = await client.close_code(timeout=30)
        return time.monotonic(), code

    waiting = asyncio.gather(*(closed_at(c) for c in clients))
    hub.terminate()
    closes = sorted(await waiting)

    assert {code for _, code in closes} == {SHUTDOWN}
    first, last = closes[0][0], closes[-1][0]
    # The i-th of n closes no earlier than window * i / n after the first: a busy machine can
    # only delay closes, so the spread is at least what the schedule gives, give or take the
    # first one's lateness. Not all in the window's first quarter, and the last past its half.
    assert sum(1 for at, _ in closes if at > first + window / 4) >= count // 2
    assert last - first >= window / 2
    assert await hub.exited() == -signal.SIGTERM, hub.output()


async def test_ctrl_c_drains_too_and_a_second_ctrl_c_skips_the_rest(
        start_hub_process: StartHub) -> None:
    hub = await start_hub_process(drain_refuse_delay=0, drain_seconds=120, shutdown_timeout=180)
    clients = [await connected_client(hub, f"user{i}") for i in range(6)]
    closes = [asyncio.get_running_loop().create_task(c.close_code(timeout=60)) for c in clients]
    hub.process.send_signal(signal.SIGINT)
    # The first close of a two-minute window, then a second Ctrl-C: the rest come at once.
    _, waiting = await asyncio.wait(closes, return_when=asyncio.FIRST_COMPLETED)
    hub.process.send_signal(signal.SIGINT)
    _, late = await asyncio.wait(waiting, timeout=30)
    assert not late, "a second Ctrl-C left clients to their turns in the window"
    assert [task.result() for task in closes] == [SHUTDOWN] * len(clients)
    await hub.exited(timeout=30)


async def lock_session_events(url: str) -> asyncpg.Connection:
    """Hold a lock that makes every insert into session_events wait: a stalled database."""
    conn = await asyncpg.connect(url)
    await conn.execute("BEGIN")
    await conn.execute("LOCK TABLE session_events IN EXCLUSIVE MODE")
    return conn


async def waiting_on_lock(url: str) -> bool:
    conn = await asyncpg.connect(url)
    try:
        waiting = await conn.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted")
        return bool(waiting)
    finally:
        await conn.close()


async def start_session(device: RawClient) -> str:
    result = await device.call("rpc", {"method": "session.start", "data": {"title": "drain"}})
    return str(result["data"]["session_id"])


def publish(command_id: int, session_id: str, event_id: str) -> dict[str, Any]:
    event = {"type": "set", "event_id": event_id, "exercise": "squat", "reps": 5,
             "weight_kg": 100.0, "ts": int(time.time() * 1000)}
    return {"id": command_id, "publish": {"channel": f"session:{session_id}", "data": event}}


async def stored_event_ids(url: str, user: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT event_id FROM session_events WHERE user_id = $1", user)
        return sorted(row["event_id"] for row in rows)
    finally:
        await conn.close()


async def test_a_publish_in_flight_is_acknowledged_before_the_shutdown_disconnect(
        start_hub_process: StartHub, postgres_url: str) -> None:
    hub = await start_hub_process(postgres_url, drain_refuse_delay=0.2, drain_seconds=0.5,
                                  shutdown_timeout=20)
    device = await connected_client(hub, "ann", "device", "watch")
    session_id = await start_session(device)
    lock = await lock_session_events(postgres_url)
    try:
        # Two publishes in one frame: the first waits on the database, the second is queued.
        await device.send(publish(100, session_id, "e1"), publish(101, session_id, "e2"))
        await eventually(_async_check(lambda: waiting_on_lock(postgres_url), True), timeout=10)
        hub.terminate()
        queued = await device.reply(101, timeout=15)
        assert queued["error"]["code"] == ErrorCode.INTERNAL.code
        assert queued["error"]["temporary"] is True
    finally:
        await lock.execute("COMMIT")
        await lock.close()
    assert await device.reply(100, timeout=15) == {"id": 100, "publish": {}}
    assert await device.close_code(timeout=15) == SHUTDOWN
    assert await hub.exited() == -signal.SIGTERM, hub.output()
    assert await stored_event_ids(postgres_url, "ann") == ["e1"]


async def test_the_process_exits_within_the_timeout_with_a_stuck_database_and_a_mute_client(
        start_hub_process: StartHub, postgres_url: str) -> None:
    timeout = 5.0
    hub = await start_hub_process(postgres_url, drain_refuse_delay=0.2, drain_seconds=0.5,
                                  shutdown_timeout=timeout)
    device = await connected_client(hub, "ann", "device", "watch")
    session_id = await start_session(device)
    mute = await mute_client(hub)
    lock = await lock_session_events(postgres_url)
    try:
        await device.send(publish(100, session_id, "e1"))
        await eventually(_async_check(lambda: waiting_on_lock(postgres_url), True), timeout=10)
        signalled = hub.terminate()
        # Without the timeout the commit would wait for the lock, held for a minute below.
        code = await hub.exited(timeout=60)
        elapsed = time.monotonic() - signalled
    finally:
        mute.close()
        await lock.execute("ROLLBACK")
        await lock.close()
    assert code == 128 + signal.SIGTERM, hub.output()
    assert "shutdown overran HUB_SHUTDOWN_TIMEOUT" in hub.output()
    # The watchdog fires at the timeout; the margin is for the signal and the reaping.
    assert elapsed < timeout + 5, elapsed


async def mute_client(hub: HubProcess) -> asyncio.StreamWriter:
    """A client that opens a WebSocket, sends `connect`, and then never reads nor answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    writer.write((
        f"GET /connection/websocket HTTP/1.1\r\nHost: 127.0.0.1:{hub.port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode())
    assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
    command = json.dumps({"id": 1, "connect": {"token": hub.token("mute")}}).encode()
    writer.write(Frame(Opcode.TEXT, command).serialize(mask=True))
    await writer.drain()
    return writer


async def stored_events(url: str, users: list[str]) -> list[tuple[str, str]]:
    """(user, event id) of every stored event of these users, with repeats if any."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT user_id, event_id FROM session_events WHERE user_id = ANY($1)", users)
        return [(row["user_id"], row["event_id"]) for row in rows]
    finally:
        await conn.close()


async def test_devices_streaming_through_a_restart_lose_nothing_and_store_nothing_twice(
        start_hub_process: StartHub, postgres_url: str) -> None:
    port, athletes, per_athlete, events = free_port(), 3, 2, 40
    total = athletes * per_athlete * events
    drain = {"drain_refuse_delay": 0.5, "drain_seconds": 2, "shutdown_timeout": 15}
    first = await start_hub_process(postgres_url, port=port, **drain)

    def tokens(athlete: str, device: str) -> str:
        return first.token(athlete, "device", device)

    async with Fleet(first.ws_url, tokens, athletes=athletes, devices_per_athlete=per_athlete,
                     hr_share=0.2) as fleet:
        running = asyncio.get_running_loop().create_task(fleet.run(count=events, rate=8))

        async def some_stored() -> bool:
            return len(await stored_events(postgres_url, fleet.athletes)) >= total // 5

        await eventually(_async_check(some_stored, True), timeout=30)
        first.terminate()
        stored_before = len(await stored_events(postgres_url, fleet.athletes))
        # The new process takes the port as soon as the old one stops listening, as a
        # restarted container would; the old one is still draining its clients meanwhile.
        await eventually(lambda: not first.listening(), timeout=15)
        second = await start_hub_process(postgres_url, port=port, **drain)
        result = await asyncio.wait_for(running, 120)

    assert await first.exited() == -signal.SIGTERM, first.output()
    summary = result.summary()
    assert stored_before < total, "the stream was over before the SIGTERM"
    assert summary["failed"] == {} and summary["stopped"] == [], summary
    assert summary["acked"] == total, summary
    assert summary["reconnects"] >= athletes * per_athlete, summary
    acked = sorted((fleet.athletes[i // per_athlete], event_id)
                   for i, report in enumerate(result.reports) for event_id in report.acked)
    assert sorted(await stored_events(postgres_url, fleet.athletes)) == acked
    second.terminate()
    assert await second.exited() == -signal.SIGTERM, second.output()


class FailoverProxy:
    """A load balancer in miniature, for the two-node test: each new TCP connection goes to
    the first backend that accepts it, as nginx moves on to the next upstream when one
    refuses. Bytes are copied both ways until either side closes."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/websocket"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for port in self.backends:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                continue
        else:
            writer.close()
            return
        pipes = [asyncio.get_running_loop().create_task(_pipe(a, b))
                 for a, b in ((reader, up_writer), (up_reader, writer))]
        self._pipes.update(pipes)
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        for pipe in pipes:
            pipe.cancel()
        for end in (writer, up_writer):
            end.close()
        self._pipes.difference_update(pipes)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except OSError:
        pass


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A prefix of this test on the shared Redis; its keys are deleted afterwards."""
    prefix = f"fitsync-test-drain-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.asyncio.Redis.from_url(SHARED_REDIS)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def test_draining_one_of_two_nodes_moves_its_clients_to_the_other_with_nothing_lost(
        start_hub_process: StartHub, postgres_url: str, redis_prefix: str) -> None:
    athletes, per_athlete, events = 3, 2, 40
    total = athletes * per_athlete * events
    cluster = {"redis_url": SHARED_REDIS, "redis_prefix": redis_prefix,
               "drain_refuse_delay": 0.5, "drain_seconds": 2, "shutdown_timeout": 15}
    drained = await start_hub_process(postgres_url, **cluster)
    staying = await start_hub_process(postgres_url, **cluster)
    proxy = FailoverProxy([drained.port, staying.port])
    await proxy.start()

    def tokens(athlete: str, device: str) -> str:
        return drained.token(athlete, "device", device)

    watchers: list[tuple[centrifuge.Client, Recorder]] = []
    try:
        async with Fleet(proxy.ws_url, tokens, athletes=athletes,
                         devices_per_athlete=per_athlete) as fleet:
            for athlete, session_id in zip(fleet.athletes, fleet.sessions, strict=True):
                watchers.append(await watch(proxy.ws_url, drained.token(athlete),
                                            f"session:{session_id}"))
            running = asyncio.get_running_loop().create_task(fleet.run(count=events, rate=8))

            async def some_stored() -> bool:
                return len(await stored_events(postgres_url, fleet.athletes)) >= total // 5

            await eventually(_async_check(some_stored, True), timeout=30)
            drained.terminate()
            result = await asyncio.wait_for(running, 120)
            assert await drained.exited() == -signal.SIGTERM, drained.output()

            summary = result.summary()
            assert summary["failed"] == {} and summary["stopped"] == [], summary
            assert summary["acked"] == total, summary
            acked = sorted((fleet.athletes[i // per_athlete], event_id)
                           for i, report in enumerate(result.reports)
                           for event_id in report.acked)
            assert sorted(await stored_events(postgres_url, fleet.athletes)) == acked

            # Every watcher moved to the other node, recovered what it missed from the
            # history in Redis, and saw each of its athlete's events once, in order.
            for athlete, (_, recorder) in zip(fleet.athletes, watchers, strict=True):
                expected = sorted(e for a, e in acked if a == athlete)

                def seen(recorder: Recorder = recorder) -> list[str]:
                    return [p["event_id"] for p in recorder.publications() if "event_id" in p]

                def caught_up(seen: Callable[[], list[str]] = seen, count: int = len(expected),
                              ) -> bool:
                    return len(seen()) >= count

                await eventually(caught_up, timeout=30)
                assert sorted(seen()) == expected
                offsets = [ctx.pub.offset for ctx in recorder.named("publication")]
                assert offsets == sorted(set(offsets))
                subscribed = recorder.named("subscribed")
                assert len(subscribed) >= 2 and subscribed[-1].recovered, subscribed
    finally:
        for client, _ in watchers:
            await client.disconnect()
        await proxy.close()
    staying.terminate()
    assert await staying.exited() == -signal.SIGTERM, staying.output()


async def watch(url: str, token: str, channel: str) -> tuple[centrifuge.Client, Recorder]:
    """An SDK client subscribed to `channel`, recording what it receives."""
    recorder = Recorder()
    client = centrifuge.Client(url, events=recorder, token=token, max_reconnect_delay=1.0)
    subscription = client.new_subscription(channel, events=recorder)
    await client.connect()
    await subscription.subscribe()
    await subscription.ready(timeout=10)
    return client, recorder
