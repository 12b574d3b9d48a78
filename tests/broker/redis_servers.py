"""Private Redis servers for tests: one on a free port, several for sharding, or a cluster.

Each server is a `redis-server` child process with its files in a directory of its own, stopped
by its PID. A server can be killed (SIGKILL, as a crash) and started again on the same port, so
tests can watch a broker survive Redis dying. Usable as context managers, or through the
fixtures in tests/broker/conftest.py.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

START_TIMEOUT = 15.0
"""Seconds a server (or a cluster) has to become usable; generous for a busy machine."""


def _ephemeral_ports() -> range:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A free port below the ephemeral range, whose cluster bus port (+10000) is below it and
    free too. Ports that `bind(0)` hands out (every other test's servers) never collide with
    it, even while a killed server is down waiting to be started again on the same port."""
    ceiling = _ephemeral_ports().start - 10000
    while True:
        port = random.randint(10000, max(10001, ceiling - 1))
        if _is_free(port) and _is_free(port + 10000):
            return port


def _wait_until(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            if condition():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up within {START_TIMEOUT} s")
        time.sleep(0.05)


class RedisServer:
    """One private redis-server on 127.0.0.1; `url` stays the same across restarts."""

    def __init__(self, directory: Path, *extra_args: str, port: int | None = None) -> None:
        self.port = port if port is not None else free_port()
        self.directory = directory
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> None:
        """Start the server (again, on the same port) and wait until it answers."""
        assert self.process is None, "already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.directory),
                "--logfile", str(self.directory / "redis.log"),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with self.client() as client:
            _wait_until(client.ping, f"redis-server on port {self.port}")

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown, every connection cut at once."""
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None

    def pause(self) -> None:
        """SIGSTOP: the server still accepts connections but answers nothing (a hung host)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None:
            self.resume()
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
            self.process = None

    def cluster_ok(self) -> bool:
        with self.client() as client:
            info = client.cluster("INFO")
        return isinstance(info, dict) and info.get("cluster_state") == "ok"

    def restart(self) -> None:
        self.kill()
        self.start()


@contextmanager
def redis_server(*extra_args: str) -> Iterator[RedisServer]:
    """A private Redis on a free port, stopped (and its files removed) on exit."""
    with tempfile.TemporaryDirectory(prefix="fitsync-redis-") as directory:
        server = RedisServer(Path(directory), *extra_args)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@contextmanager
def redis_servers(count: int) -> Iterator[list[RedisServer]]:
    """`count` private Redis servers (shards)."""
    with tempfile.TemporaryDirectory(prefix="fitsync-redis-") as directory:
        servers = [RedisServer(Path(directory) / str(n)) for n in range(count)]
        try:
            for server in servers:
                server.start()
            yield servers
        finally:
            for server in servers:
                server.stop()


@contextmanager
def redis_cluster(masters: int = 3) -> Iterator[list[RedisServer]]:
    """A Redis Cluster of `masters` masters (no replicas), created with `redis-cli --cluster
    create`, yielded once every node reports `cluster_state:ok`."""
    with tempfile.TemporaryDirectory(prefix="fitsync-redis-cluster-") as directory:
        servers = [
            RedisServer(
                Path(directory) / str(n),
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "5000",
            )
            for n in range(masters)
        ]
        try:
            for server in servers:
                server.start()
            subprocess.run(
                [
                    shutil.which("redis-cli") or "redis-cli",
                    "--cluster", "create",
                    *(f"127.0.0.1:{server.port}" for server in servers),
                    "--cluster-replicas", "0",
                    "--cluster-yes",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=START_TIMEOUT * 2,
            )
            for server in servers:
                _wait_until(server.cluster_ok, f"cluster node on port {server.port}")
            yield servers
        finally:
            for server in servers:
                server.stop()
