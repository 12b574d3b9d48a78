"""Start and stop the servers under test, pinned to their own core.

Each server runs in its own session (process group) so that stopping it also stops anything
it forked, and its output goes to a log file in its temporary working directory rather than a
pipe that nobody drains and that would stall it once full.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import redis

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
HEALTH_TIMEOUT = 30.0
REDIS_START_TIMEOUT = 15.0


@dataclass
class ServerProcess:
    """A running server: its pid, where it listens, and the secrets it was started with."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path
    jwt_secret: str = ""
    api_key: str = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        text = (self.workdir / "server.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def mint_token(self, user: str) -> str:
        """An HS256 connection token that may subscribe anywhere (role admin), valid 1 h."""
        claims = {"sub": user, "role": "admin", "exp": int(time.time()) + 3600}
        return jwt.encode(claims, self.jwt_secret, algorithm="HS256")

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it if it is still there after 10 s."""
        if self.process.poll() is None:
            _signal_group(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _signal_group(self.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pinned(command: list[str], core: int) -> list[str]:
    """Prefix `command` with `taskset` so the server and every thread it starts stay on `core`."""
    taskset = shutil.which("taskset")
    if taskset is None:
        raise RuntimeError("taskset (util-linux) is needed to pin the server to a core")
    return [taskset, "-c", str(core), *command]


def start_baseline(core: int) -> ServerProcess:
    port = free_port()
    command = [sys.executable, str(BENCH_DIR / "baseline_server.py"), "--port", str(port)]
    return _launch("baseline", pinned(command, core), port, dict(os.environ))


def start_storm_baseline(core: int) -> ServerProcess:
    """`storm_baseline_server.py`: a `websockets` server that only answers connects."""
    port = free_port()
    command = [sys.executable, str(BENCH_DIR / "storm_baseline_server.py"), "--port", str(port)]
    return _launch("storm-baseline", pinned(command, core), port, dict(os.environ))


def start_coach_baseline(core: int, database_url: str | None,
                         settings: dict[str, str]) -> ServerProcess:
    """`coach_baseline_server.py`: the coach bench's traffic on plain `websockets`, with the
    hub's model reader and `settings` (`HUB_COACH_*`), events stored in `database_url`."""
    port = free_port()
    command = [sys.executable, str(BENCH_DIR / "coach_baseline_server.py"), "--port", str(port)]
    if database_url:
        command += ["--database-url", database_url]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env.update(settings)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    server = _launch("coach-baseline", pinned(command, core), port, env)
    server.jwt_secret = secrets.token_urlsafe(32)  # the bench mints tokens; nobody checks them
    return server


WS_BASELINE_DIR = BENCH_DIR / "ws_baseline"


def install_ws_baseline() -> None:
    """`npm ci` in bench/ws_baseline once (its lockfile pins `ws`); nothing is committed."""
    if (WS_BASELINE_DIR / "node_modules" / "ws" / "package.json").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm (Node.js 18 or later) is needed for the ws baseline")
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=WS_BASELINE_DIR, check=True)


def start_ws_baseline(core: int) -> ServerProcess:
    """node's `ws` server (bench/ws_baseline/server.js), installed first if needed."""
    install_ws_baseline()
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node (Node.js 18 or later) is needed for the ws baseline")
    port = free_port()
    command = [node, str(WS_BASELINE_DIR / "server.js"), "--port", str(port)]
    return _launch("ws", pinned(command, core), port, dict(os.environ))


def start_hub(
    core: int, database_url: str | None = None, settings: dict[str, str] | None = None
) -> ServerProcess:
    """The hub with fresh secrets and no Redis; storage is `database_url`, by default SQLite
    in a temp dir. `settings` are further `HUB_*` variables."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    secret, api_key = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
    env.update(HUB_JWT_SECRET=secret, HUB_API_KEY=api_key)
    if database_url:
        env["HUB_DATABASE_URL"] = database_url
    env.update(settings or {})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "hub", "serve", "--host", "127.0.0.1", "--port", str(port)]
    server = _launch("hub", pinned(command, core), port, env)
    server.jwt_secret, server.api_key = secret, api_key
    return server


def start_redis(core: int) -> tuple[ServerProcess, redis.Redis]:
    """A private redis-server on a free port, no persistence, pinned to `core`."""
    executable = shutil.which("redis-server")
    if executable is None:
        raise RuntimeError("redis-server (Redis 7) is needed for the Redis deployments")
    port = free_port()
    command = [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no"]
    server = _launch("redis", pinned(command, core), port, dict(os.environ))
    client = redis.Redis(port=port)
    deadline = time.monotonic() + REDIS_START_TIMEOUT
    while True:
        try:
            client.ping()
            return server, client
        except redis.ConnectionError:
            if server.process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"redis-server did not start:\n{server.log_tail()}") from None
            time.sleep(0.05)


def _launch(name: str, command: list[str], port: int, env: dict[str, str]) -> ServerProcess:
    workdir = Path(tempfile.mkdtemp(prefix=f"fanout-{name}-"))
    with open(workdir / "server.log", "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return ServerProcess(name, port, process, workdir)


def wait_healthy(server: ServerProcess) -> None:
    """Poll `GET /healthz` until 200; fail early with the log if the process exits."""
    deadline = time.monotonic() + HEALTH_TIMEOUT
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"{server.name} exited early:\n{server.log_tail()}")
            try:
                if client.get(f"{server.base_url}/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    raise RuntimeError(
        f"{server.name} not healthy after {HEALTH_TIMEOUT:.0f} s:\n{server.log_tail()}"
    )
