"""`fitsync-hub serve --workers N` as an operator runs it: N worker processes on one port, meeting
through a private Redis; which worker holds a connection is read from /proc (the socket's
owner), not from anything the hub says about itself."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import centrifuge
import httpx
import pytest

from hub.protocol.codes import DisconnectCode
from tests.broker.redis_servers import RedisServer, redis_server
from tests.harness import SECRET, Recorder, eventually, free_port
from tests.serve_process import FITSYNC_HUB, ServedHub, wait_healthy

API_KEY = "workers-api-key"
SHUTDOWN = DisconnectCode.SHUTDOWN.code
START_TIMEOUT = 60.0
"""Two workers import the whole hub each, on a machine other test runs keep busy."""


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


def serve_workers(tmp_path: Path, count: int, env: dict[str, str]) -> ServedHub:
    """`fitsync-hub serve --workers count` on a free port (SQLite in `tmp_path`), healthy."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith("HUB_") and k not in ("PORT", "SENTRY_DSN")}
    full_env.update({"HUB_HOST": "127.0.0.1", "HUB_PORT": str(port), "HUB_JWT_SECRET": SECRET,
                     "HUB_API_KEY": API_KEY, "HUB_DRAIN_REFUSE_DELAY": "0.2",
                     "HUB_DRAIN_SECONDS": "0.5", **env})
    log_path = tmp_path / "hub.log"
    with log_path.open("wb") as out:
        process = subprocess.Popen([str(FITSYNC_HUB), "serve", "--workers", str(count)],
                                   env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                   cwd=tmp_path)
    return ServedHub(process, port, log_path)


@pytest.fixture
async def two_workers(tmp_path: Path, redis: RedisServer) -> AsyncIterator[ServedHub]:
    hub = serve_workers(tmp_path, 2, {"HUB_REDIS_URL": redis.url,
                                      "HUB_REDIS_PREFIX": f"workers-{os.getpid()}"})
    try:
        wait_healthy(hub, START_TIMEOUT)
        await eventually(lambda: hub.log().count("Application startup complete") == 2,
                         timeout=START_TIMEOUT)
        assert len(worker_pids(hub)) == 2
        assert all(listening(pid, hub.port) for pid in worker_pids(hub))
        yield hub
    finally:
        workers = worker_pids(hub)
        hub.stop()
        for pid in workers:  # the supervisor stops them; a leftover would be a bug, and a leak
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)


def worker_pids(hub: ServedHub) -> list[int]:
    """The supervisor's children that run a node (not multiprocessing's resource tracker)."""
    pids = []
    for task in Path(f"/proc/{hub.process.pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in command:
                pids.append(child)
    return sorted(pids)


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def _tcp_sockets(pid: int) -> list[tuple[int, int, str]]:
    """(local port, remote port, state) of each TCP socket `pid` holds."""
    inodes = _socket_inodes(pid)
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                found.append((int(fields[1].rsplit(":", 1)[1], 16),
                              int(fields[2].rsplit(":", 1)[1], 16), fields[3]))
    return found


LISTEN, ESTABLISHED = "0A", "01"


def listening(pid: int, port: int) -> bool:
    return any(local == port and state == LISTEN for local, _, state in _tcp_sockets(pid))


def my_ports_to(port: int) -> set[int]:
    """Local ports of this process's established connections to `port`."""
    return {local for local, remote, state in _tcp_sockets(os.getpid())
            if remote == port and state == ESTABLISHED}


def worker_holding(hub: ServedHub, client_port: int) -> int | None:
    """The worker whose end of the connection from `client_port` is established."""
    for pid in worker_pids(hub):
        if any(local == hub.port and remote == client_port and state == ESTABLISHED
               for local, remote, state in _tcp_sockets(pid)):
            return pid
    return None


class Landed:
    """An SDK client and where it landed: its local port and the worker holding the other end."""

    def __init__(self, client: centrifuge.Client, events: Recorder, port: int,
                 worker: int) -> None:
        self.client, self.events, self.port, self.worker = client, events, port, worker


async def connect_on_new_worker(hub: ServedHub, user: str, taken: set[int],
                                attempts: int = 40) -> Landed:
    """An SDK client of `user` connected to a worker not in `taken`; the kernel picks the worker
    by the connection's addresses, so reconnect until one lands there."""
    from hub import auth

    token = auth.mint(SECRET, user, "athlete")
    for _ in range(attempts):
        landed = await _connect(hub, token)
        if landed.worker not in taken:
            return landed
        await landed.client.disconnect()
    raise AssertionError(f"no connection of {attempts} landed outside workers {taken}")


async def _connect(hub: ServedHub, token: str) -> Landed:
    before = my_ports_to(hub.port)
    events = Recorder()
    client = centrifuge.Client(f"ws://127.0.0.1:{hub.port}/connection/websocket",
                               events=events, token=token)
    await client.connect()
    await client.ready(timeout=10)
    port = min(await eventually(lambda: my_ports_to(hub.port) - before, timeout=10))
    worker = await eventually(lambda: worker_holding(hub, port), timeout=10)
    await eventually(lambda: events.named("subscribed"), timeout=10)
    return Landed(client, events, port, worker)


def shut_down(landed: Landed) -> bool:
    """Whether the client was sent the shutdown disconnect (its SDK is reconnecting)."""
    return any(ctx.code == SHUTDOWN for ctx in landed.events.named("connecting"))


async def test_two_workers_share_the_port_and_a_publication_crosses_them(
        two_workers: ServedHub) -> None:
    hub = two_workers
    ann = await connect_on_new_worker(hub, "ann", set())
    bob = await connect_on_new_worker(hub, "bob", {ann.worker})
    assert {ann.worker, bob.worker} == set(worker_pids(hub))

    async with httpx.AsyncClient(base_url=hub.http_url,
                                 headers={"Authorization": f"apikey {API_KEY}"}) as api:
        assert (await api.get("/healthz")).status_code == 200
        http_port = min(my_ports_to(hub.port) - {ann.port, bob.port})
        api_worker = await eventually(lambda: worker_holding(hub, http_port), timeout=10)
        # Publish through one worker's API to the client held by the other worker.
        far, near = (bob, ann) if api_worker == ann.worker else (ann, bob)
        far_user = "bob" if far is bob else "ann"
        response = await api.post("/api/publish", json={
            "channel": f"user:{far_user}", "data": {"type": "notification", "text": "across"}})
        assert response.status_code == 200, response.text
        assert worker_holding(hub, http_port) == api_worker != far.worker

    await eventually(lambda: far.events.publications(), timeout=10)
    assert far.events.publications() == [{"type": "notification", "text": "across"}]
    assert near.events.publications() == []
    await ann.client.disconnect()
    await bob.client.disconnect()


async def test_sigterm_to_the_supervisor_drains_every_worker(two_workers: ServedHub) -> None:
    hub = two_workers
    ann = await connect_on_new_worker(hub, "ann", set())
    bob = await connect_on_new_worker(hub, "bob", {ann.worker})
    workers = worker_pids(hub)

    hub.process.send_signal(signal.SIGTERM)
    # Each worker sent its client the shutdown disconnect.
    await eventually(lambda: shut_down(ann) and shut_down(bob), timeout=20)
    await ann.client.disconnect()
    await bob.client.disconnect()
    assert hub.process.wait(30) == -signal.SIGTERM, hub.log()
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    assert hub.log().count("draining: /readyz answers 503") == 2, hub.log()


async def test_the_schema_is_migrated_once_before_the_workers_start(
        two_workers: ServedHub) -> None:
    log = two_workers.log()
    assert log.count("database schema migrated from empty") == 1, log
    assert log.count("database schema at revision") == 2, log
    assert log.index("schema migrated from empty") < log.index("Started server process")


def test_workers_without_redis_is_refused_with_how_to_fix_it(tmp_path: Path) -> None:
    hub = serve_workers(tmp_path, 2, {})
    assert hub.process.wait(30) != 0
    assert "set HUB_REDIS_URL" in hub.log(), hub.log()
    assert not (tmp_path / "fitsync.db").exists()  # refused before touching anything


async def test_a_worker_that_dies_stops_the_others_and_the_supervisor_fails(
        two_workers: ServedHub) -> None:
    hub = two_workers
    dead, survivor = worker_pids(hub)
    os.kill(dead, signal.SIGKILL)
    assert hub.process.wait(30) == 1, hub.log()
    await eventually(lambda: not Path(f"/proc/{survivor}").exists(), timeout=30)
    assert f"(pid {dead}) exited with -9: stopping the others" in hub.log()


async def test_workers_drain_and_exit_when_the_supervisor_is_killed(
        two_workers: ServedHub) -> None:
    hub = two_workers
    workers = worker_pids(hub)
    hub.process.kill()
    hub.process.wait(10)
    await eventually(lambda: not [pid for pid in workers if Path(f"/proc/{pid}").exists()],
                     timeout=30)
    assert hub.log().count("is gone: stopping") == 2, hub.log()
