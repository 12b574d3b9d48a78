"""The compose topology, run for real with processes: `fitsync-hub serve` nodes sharing a
private Redis and a fresh PostgreSQL database, behind a real nginx running deploy/nginx/
fitsync.conf with only its addresses changed, and the official SDK connecting through it.

nginx comes from Debian's package (scripts/test installs it when absent); it missing is a
failure, never a skip."""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import centrifuge
import httpx
import pytest

from tests.broker.redis_servers import redis_server
from tests.db_fixtures import create_postgres_database, drop_postgres_database
from tests.harness import API_KEY, SECRET, Recorder, eventually, free_port
from tests.serve_process import ServedHub, serve
from tests.test_deploy import HUB_PORT, nginx_conf, upstream_servers

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def render_for_local_ports(conf: str, ports: dict[str, int], listen: int) -> str:
    """deploy/nginx/fitsync.conf with each upstream `hubN:8000` pointed at a local port (the
    servers with no local node dropped) and the listen port changed; nothing else."""
    for server in upstream_servers(conf):
        name = server.removesuffix(f":{HUB_PORT}")
        line = re.compile(rf"^(\s*server\s+){re.escape(server)}\b(.*)$\n", re.MULTILINE)
        local = rf"\g<1>127.0.0.1:{ports[name]}\g<2>\n" if name in ports else ""
        conf = line.sub(local, conf)
    conf, count = re.subn(r"^(\s*)listen\s+80;", rf"\g<1>listen 127.0.0.1:{listen};", conf,
                          flags=re.MULTILINE)
    assert count == 1
    return conf


def nginx_main_config(workdir: Path, server_config: str) -> str:
    """What the nginx image's own nginx.conf provides around conf.d/default.conf."""
    temp = workdir / "temp"
    temp.mkdir()
    paths = "\n".join(f"    {kind}_temp_path {temp / kind};"
                      for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (
        f"daemon off;\nworker_processes 1;\npid {workdir / 'nginx.pid'};\n"
        f"error_log {workdir / 'error.log'} info;\n"
        "events { worker_connections 1024; }\n"
        f"http {{\n    access_log {workdir / 'access.log'};\n{paths}\n{server_config}\n}}\n"
    )


@contextmanager
def nginx(workdir: Path, ports: dict[str, int]) -> Iterator[int]:
    """A real nginx in front of `ports` (hub service name → local port); yields its port."""
    assert Path(NGINX).exists(), (
        "nginx is not installed: scripts/test installs it (apt-get install -y nginx)")
    listen = free_port()
    config = workdir / "nginx.conf"
    config.write_text(nginx_main_config(workdir, render_for_local_ports(
        nginx_conf(), ports, listen)))
    check = subprocess.run([NGINX, "-t", "-p", str(workdir), "-e", str(workdir / "error.log"),
                            "-c", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen([NGINX, "-p", str(workdir), "-e", str(workdir / "error.log"),
                                "-c", str(config)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{listen}/", timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None, (workdir / "error.log").read_text()
                assert time.monotonic() < deadline, "nginx did not start listening"
                time.sleep(0.05)
        yield listen
    finally:
        process.send_signal(signal.SIGQUIT)  # graceful: finish open requests, then exit
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@asynccontextmanager
async def cluster(nodes: int, tmp_path: Path) -> AsyncIterator[list[ServedHub]]:
    """`nodes` hub processes on one new PostgreSQL database; with more than one, sharing a
    private Redis under a key prefix of their own."""
    database = await create_postgres_database()
    env = {"HUB_DATABASE_URL": database, "HUB_JWT_SECRET": SECRET, "HUB_API_KEY": API_KEY,
           "HUB_DRAIN_REFUSE_DELAY": "0.2", "HUB_DRAIN_SECONDS": "0.5",
           "HUB_SHUTDOWN_TIMEOUT": "5"}
    hubs: list[ServedHub] = []
    with redis_server() if nodes > 1 else _no_redis() as redis:
        if redis is not None:
            env |= {"HUB_REDIS_URL": redis.url, "HUB_REDIS_PREFIX": f"t{secrets.token_hex(4)}"}
        try:
            for index in range(nodes):
                hubs.append(await asyncio.to_thread(
                    serve, env, tmp_path / f"hub{index + 1}.log"))
            yield hubs
        finally:
            for hub in hubs:
                await asyncio.to_thread(hub.stop)
            await drop_postgres_database(database)


@contextmanager
def _no_redis() -> Iterator[None]:
    yield None


async def publish(hub: ServedHub, channel: str, data: dict[str, Any]) -> None:
    async with httpx.AsyncClient(headers={"Authorization": f"apikey {API_KEY}"}) as http:
        response = await http.post(f"{hub.http_url}/api/publish",
                                   json={"channel": channel, "data": data})
    assert response.status_code == 200, response.text


def connections(hub: ServedHub) -> float:
    text = httpx.get(f"{hub.http_url}/metrics", timeout=5).text
    found = re.search(r"^fitsync_connections (\S+)$", text, re.MULTILINE)
    assert found is not None
    return float(found.group(1))


@pytest.mark.parametrize("nodes", [1, 2], ids=["one-node", "two-nodes-redis"])
async def test_an_sdk_client_through_nginx_receives_what_any_node_publishes(
    nodes: int, tmp_path: Path,
) -> None:
    async with cluster(nodes, tmp_path) as hubs:
        with nginx(tmp_path, {f"hub{i + 1}": hub.port for i, hub in enumerate(hubs)}) as port:
            lb = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient() as http:
                assert (await http.get(f"{lb}/healthz")).status_code == 200
                assert (await http.get(f"{lb}/readyz")).status_code == 200
                assert (await http.get(f"{lb}/metrics")).status_code == 404  # not public

            events = Recorder()
            client = centrifuge.Client(f"ws://127.0.0.1:{port}/connection/websocket",
                                       token=_token("boss", "admin"), events=events)
            sub = client.new_subscription("session:demo", events=events)
            try:
                await client.connect()
                await client.ready(timeout=10)
                await sub.subscribe()
                await sub.ready(timeout=10)
                # One publication from each node: the client's own, and the other through Redis.
                for index, hub in enumerate(hubs):
                    await publish(hub, "session:demo", {"type": "status", "from": index})
                got = await eventually(
                    lambda: len(events.publications()) == nodes and events.publications(),
                    timeout=15)
                assert [p["from"] for p in got] == list(range(nodes))
                assert sum(connections(hub) for hub in hubs) == 1
            finally:
                await client.disconnect()


async def test_a_client_moves_through_nginx_to_the_other_node_when_its_node_stops(
    tmp_path: Path,
) -> None:
    async with cluster(2, tmp_path) as hubs:
        with nginx(tmp_path, {"hub1": hubs[0].port, "hub2": hubs[1].port}) as port:
            events = Recorder()
            client = centrifuge.Client(f"ws://127.0.0.1:{port}/connection/websocket",
                                       token=_token("boss", "admin"), events=events,
                                       min_reconnect_delay=0.1, max_reconnect_delay=0.5)
            sub = client.new_subscription("session:demo", events=events)
            try:
                await client.connect()
                await sub.subscribe()
                await sub.ready(timeout=10)
                [home] = [hub for hub in hubs if connections(hub) == 1]
                [other] = [hub for hub in hubs if hub is not home]
                await publish(other, "session:demo", {"type": "status", "n": 1})
                await eventually(lambda: len(events.publications()) == 1, timeout=15)

                await asyncio.to_thread(home.stop)
                await publish(other, "session:demo", {"type": "status", "n": 2})
                await eventually(lambda: connections(other) == 1, timeout=20)
                await eventually(lambda: len(events.publications()) == 2, timeout=20)
                assert [p["n"] for p in events.publications()] == [1, 2]  # recovered: no gap
                assert len(events.named("connected")) == 2
            finally:
                await client.disconnect()


def _token(user: str, role: str) -> str:
    from hub import auth

    return auth.mint(SECRET, user, role, ttl=3600)
