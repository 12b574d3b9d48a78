"""`fitsync-hub serve --workers N`: N nodes in N processes on one machine, sharing one port, so
that one machine's every core serves connections.

Each worker is a whole node: its own event loop, connections and broker subscriptions. Workers
meet only through Redis, exactly as nodes on different machines do, which is why Redis is
required. The port is shared by the kernel: the supervisor binds one listening socket per worker
with `SO_REUSEPORT`, and Linux hands each new connection to one of them by a hash of its
addresses (an even spread, unlike one socket accepted from by every process, where the busiest
process tends to win). Each socket is then owned by exactly one worker, so a worker that stops
listening (its drain, or its death) takes its socket out of the spread at once.

Guarantees:

* the database schema is migrated once, by the supervisor, before any worker starts (each
  worker then finds it at head);
* every worker runs with the same `Settings` (a development-mode secret generated at start is
  the same in all of them, so a token is valid whichever worker a client lands on);
* SIGTERM or SIGINT to the supervisor starts every worker's drain (hub/drain.py) at once; the
  same signal again skips what is left of it, as with one node. Workers run in process groups
  of their own, so a terminal's Ctrl-C reaches them once, through the supervisor. The
  supervisor exits when the last worker has, killed by the same signal, as one node is;
* a worker that exits on its own (a failed start, a crash) stops the others and the supervisor
  exits with status 1, so that the process manager restarts the whole;
* a worker whose supervisor disappears (SIGKILL) drains and exits by itself.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType

from hub import logs
from hub.config import Settings

log = logging.getLogger("hub.workers")

WorkerTarget = Callable[[Settings, socket.socket], None]
"""Runs one node on an open listening socket until it is stopped (`hub.app.serve_worker`)."""

_POLL_S = 0.2
"""How often the supervisor looks for a signal to forward while it waits for its workers."""
_KILL_MARGIN_S = 5.0
"""Beyond `HUB_SHUTDOWN_TIMEOUT`, how long the supervisor waits before it kills a worker whose
own watchdog has not ended it."""
_SUPERVISOR_CHECK_S = 1.0


class BindError(OSError):
    """The shared port could not be bound; its message names the address."""


def listening_sockets(host: str, port: int, count: int, backlog: int) -> list[socket.socket]:
    """`count` sockets listening on the same `host`:`port` with SO_REUSEPORT (port 0: the port
    the first one got). All or none: on failure the ones already bound are closed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]
            sock.listen(backlog)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        reason = (exc.strerror or str(exc)).lower()
        raise BindError(exc.errno, f"cannot listen on {host}:{port}: {reason}") from exc
    return sockets


class Supervisor:
    """Starts the workers, forwards signals to them and waits for them; see the module."""

    def __init__(self, settings: Settings, count: int, target: WorkerTarget) -> None:
        self.settings = settings
        self.count = count
        self.target = target
        self._signals: list[int] = []
        self._stopped_by: int | None = None

    def run(self) -> int:
        """Serve until stopped. The exit status to end with: 0 after a signal (which the
        caller re-raises with `reraise`), 1 when a worker ended on its own."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        sockets = listening_sockets(self.settings.host, self.settings.port, self.count,
                                    self.settings.listen_backlog)
        port = sockets[0].getsockname()[1]
        context = multiprocessing.get_context("spawn")
        workers: list[BaseProcess] = []
        try:
            for index, sock in enumerate(sockets, 1):
                worker = context.Process(target=_worker_main, name=f"worker-{index}",
                                         args=(self.target, self.settings, sock, os.getpid()))
                worker.start()
                workers.append(worker)
        finally:
            for sock in sockets:  # each worker holds its own; none may stay open here
                sock.close()
        log.info("%d workers sharing port %d: pids %s", len(workers), port,
                 ", ".join(str(w.pid) for w in workers))
        return self._wait(workers)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._signals.append(sig)

    def _wait(self, workers: list[BaseProcess]) -> int:
        stopping_since: float | None = None
        failed = False
        while alive := [w for w in workers if w.exitcode is None]:
            wait([w.sentinel for w in alive], timeout=_POLL_S)
            while self._signals:
                sig = self._signals.pop(0)
                if stopping_since is None:
                    stopping_since = time.monotonic()
                    self._stopped_by = sig
                    log.info("%s: stopping %d workers", signal.Signals(sig).name, len(alive))
                _send(alive, sig)
            if stopping_since is None:
                ended = [w for w in workers if w.exitcode is not None]
                if ended:
                    failed = True
                    stopping_since = time.monotonic()
                    log.error("worker %s (pid %s) exited with %s: stopping the others",
                              ended[0].name, ended[0].pid, ended[0].exitcode)
                    _send([w for w in workers if w.exitcode is None], signal.SIGTERM)
            elif time.monotonic() > (stopping_since + self.settings.shutdown_timeout
                                     + _KILL_MARGIN_S):
                log.error("workers %s still running after HUB_SHUTDOWN_TIMEOUT: killing them",
                          ", ".join(str(w.pid) for w in alive))
                _send(alive, signal.SIGKILL)
        return 1 if failed else 0

    def reraise(self) -> None:
        """End this process by the signal that stopped it (as one node ends), if one did."""
        sig = self._stopped_by
        if sig is not None:
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)


def _send(workers: list[BaseProcess], sig: int) -> None:
    for worker in workers:
        if worker.pid is not None:
            try:
                os.kill(worker.pid, sig)
            except ProcessLookupError:
                pass


def _worker_main(target: WorkerTarget, settings: Settings, sock: socket.socket,
                 supervisor: int) -> None:
    """A worker process: a process group of its own (signals come through the supervisor), a
    watch on the supervisor, then the node."""
    os.setpgid(0, 0)
    logs.configure(settings.log_format, sentry_dsn=os.environ.get("SENTRY_DSN") or None)
    threading.Thread(target=_stop_when_orphaned, args=(supervisor,), daemon=True,
                     name="supervisor-watch").start()
    target(settings, sock)


def _stop_when_orphaned(supervisor: int) -> None:
    """SIGTERM this worker (its drain) once the supervisor is gone."""
    while os.getppid() == supervisor:
        time.sleep(_SUPERVISOR_CHECK_S)
    log.error("supervisor %d is gone: stopping", supervisor)
    os.kill(os.getpid(), signal.SIGTERM)
