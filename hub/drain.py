"""Graceful shutdown: on SIGTERM or Ctrl-C a node leaves without losing a command it accepted
and without sending all its clients to the other nodes in the same instant.

From the signal on:

1. `/readyz` answers 503 at once, so the load balancer stops sending new connections here;
2. for `HUB_DRAIN_REFUSE_DELAY` seconds new connections are still served (the balancer needs a
   moment to notice); then the node stops listening and refuses WebSocket handshakes (503);
3. its WebSocket connections are closed one after another, evenly spread over
   `HUB_DRAIN_SECONDS`, with the shutdown disconnect (3001: reconnect, to another node). Before
   its close, a connection finishes the command it is handling (a publish is committed and
   acknowledged) and answers those it has not started with the temporary error, which the SDKs
   and the devices retry (the event id makes a retried publish safe);
4. uvicorn's own shutdown follows: HTTP requests in flight finish, then the application closes,
   its event writer committing what it holds before the database closes;
5. the process exits within `HUB_SHUTDOWN_TIMEOUT` of the signal whatever clients do: each step
   is bounded by that deadline, and a watchdog thread ends the process if it is still running
   then (a stuck database, say).

A second Ctrl-C skips what is left of the drain, as it does in uvicorn.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, Protocol, runtime_checkable

import uvicorn

from hub.config import Settings

log = logging.getLogger("hub.drain")

_POLL_S = 0.1
"""How often a waiting drain checks for a second Ctrl-C."""


@runtime_checkable
class GracefulClose(Protocol):
    """A connection that can finish its work, then close with the shutdown disconnect
    (`hub.connection.HubWebSocketProtocol`)."""

    async def close_gracefully(self, timeout: float) -> None: ...


@dataclass
class DrainState:
    """Where the node is in its shutdown; read by `/readyz` and by the WebSocket handshake."""

    draining: bool = False
    """Set at the signal: `/readyz` answers 503."""
    refusing: bool = False
    """Set after `HUB_DRAIN_REFUSE_DELAY`: WebSocket handshakes are answered 503."""


class DrainingServer(uvicorn.Server):
    """uvicorn's server with the drain in front of its own shutdown. For `fitsync-hub serve`
    only: its watchdog ends the whole process when the shutdown overruns."""

    def __init__(self, config: uvicorn.Config, settings: Settings) -> None:
        super().__init__(config)
        self.settings = settings
        self._exit_requested_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """The signal handler: readiness fails now, the rest follows on the event loop."""
        super().handle_exit(sig, frame)
        if self._exit_requested_at is None:
            self._exit_requested_at = time.monotonic()
        state = self._drain_state()
        if state is not None:
            state.draining = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        started = self._exit_requested_at or time.monotonic()
        deadline = started + self.settings.shutdown_timeout
        watchdog = _Watchdog(deadline)
        try:
            state = self._drain_state()
            if state is not None:
                await self._drain(state, started, deadline)
            self.config.timeout_graceful_shutdown = max(1, int(deadline - time.monotonic()))
            await super().shutdown(sockets)
        finally:
            watchdog.cancel()

    async def _drain(self, state: DrainState, started: float, deadline: float) -> None:
        settings = self.settings
        state.draining = True
        log.info("draining: /readyz answers 503; new connections refused in %.1f s, clients "
                 "disconnected over %.1f s, exit within %.1f s (Ctrl-C again to skip)",
                 settings.drain_refuse_delay, settings.drain_seconds, settings.shutdown_timeout)
        await _pause_until(started + settings.drain_refuse_delay, self._forced)
        state.refusing = True
        for server in getattr(self, "servers", []):
            server.close()
        connections = [c for c in self.server_state.connections if isinstance(c, GracefulClose)]
        # Half of what the timeout leaves beyond the delay and the window is for the commands
        # still running at the window's end, the other half for closing the application.
        slack = deadline - time.monotonic() - settings.drain_seconds
        finish_by = deadline - max(slack, 0) / 2
        log.info("disconnecting %d clients", len(connections))
        await disconnect_spread(connections, settings.drain_seconds, finish_by, self._forced)

    def _forced(self) -> bool:
        return self.force_exit

    def _drain_state(self) -> DrainState | None:
        lifespan: Any = getattr(self, "lifespan", None)
        state = getattr(lifespan, "state", None) or {}
        drain = state.get("drain")
        return drain if isinstance(drain, DrainState) else None


async def disconnect_spread(
    connections: Sequence[GracefulClose],
    window: float,
    finish_by: float,
    forced: Callable[[], bool],
) -> None:
    """Start each connection's graceful close at its own moment: the i-th of n at `window * i /
    n` from now. Returns once every close is done, or at `finish_by` (time.monotonic())."""
    start = time.monotonic()
    closing: list[asyncio.Task[None]] = []
    count = len(connections)
    for i, connection in enumerate(connections):
        await _pause_until(start + window * i / count, forced)
        timeout = 0.0 if forced() else finish_by - time.monotonic()
        closing.append(asyncio.get_running_loop().create_task(
            connection.close_gracefully(timeout)))
    if closing:
        await asyncio.wait(closing, timeout=max(finish_by - time.monotonic(), 0))


async def _pause_until(moment: float, forced: Callable[[], bool]) -> None:
    """Sleep until `moment` (time.monotonic()), or until `forced()` turns true."""
    while not forced():
        left = moment - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(min(left, _POLL_S))


class _Watchdog:
    """Ends the process at `deadline` unless cancelled first: the guarantee that a shutdown
    never outlives `HUB_SHUTDOWN_TIMEOUT`, even with the event loop stuck."""

    def __init__(self, deadline: float) -> None:
        self._timer = threading.Timer(max(deadline - time.monotonic(), 0), self._expire)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        self._timer.cancel()

    @staticmethod
    def _expire() -> None:
        log.error("shutdown overran HUB_SHUTDOWN_TIMEOUT: exiting now")
        logging.shutdown()
        os._exit(128 + signal.SIGTERM)
