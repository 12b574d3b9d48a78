"""`fitsync-hub serve` as a real process, for tests of what an operator runs: logs on stderr,
several nodes behind a load balancer. Every process is stopped by its PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.harness import free_port

FITSYNC_HUB = Path(sys.executable).parent / "fitsync-hub"


@dataclass
class ServedHub:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


BIND_ATTEMPTS = 3
"""Other test runs share this machine: a free port can be taken before the hub binds it."""


def serve(env: dict[str, str], log_path: Path, *, wait_ready: bool = True,
          timeout: float = 30.0) -> ServedHub:
    """Start `fitsync-hub serve` on a free port with `env` added to this environment (HUB_* of
    the test run removed), stderr and stdout into `log_path`; wait until /healthz answers.
    A port taken meanwhile is retried with another."""
    attempt = 1
    while True:
        try:
            return _serve(env, log_path, free_port(), wait_ready, timeout)
        except PortTakenError:
            if attempt == BIND_ATTEMPTS:
                raise
            attempt += 1


class PortTakenError(AssertionError):
    """The hub exited because its port was taken."""


def _serve(env: dict[str, str], log_path: Path, port: int, wait_ready: bool,
           timeout: float) -> ServedHub:
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith("HUB_") and k not in ("PORT", "SENTRY_DSN")}
    full_env.update({"HUB_HOST": "127.0.0.1", "HUB_PORT": str(port), **env})
    with log_path.open("wb") as out:
        process = subprocess.Popen([str(FITSYNC_HUB), "serve"], env=full_env, stdout=out,
                                   stderr=subprocess.STDOUT, cwd=log_path.parent)
    hub = ServedHub(process, port, log_path)
    if wait_ready:
        try:
            wait_healthy(hub, timeout)
        except BaseException:
            hub.stop()
            raise
    return hub


def wait_healthy(hub: ServedHub, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if hub.process.poll() is not None:
            failed = PortTakenError if "address already in use" in hub.log() else AssertionError
            raise failed(f"hub exited with {hub.process.returncode}:\n{hub.log()}")
        try:
            if httpx.get(f"{hub.http_url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"hub on port {hub.port} not healthy within {timeout}s:\n{hub.log()}")
