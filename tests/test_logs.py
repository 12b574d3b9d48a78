"""Logs as an operator sees them: `fitsync-hub serve`'s own output, JSON or text, and Sentry."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import centrifuge
import pytest

from hub import logs
from tests.app_helpers import a_set, connection_switch, reply_error, start_session
from tests.db_fixtures import create_postgres_database, drop_postgres_database
from tests.harness import SECRET, eventually
from tests.raw import MakeHub, OpenSdk
from tests.serve_process import serve


def _records(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def test_json_logs_are_one_object_per_line_with_the_connection_of_the_command(
    tmp_path: Path,
) -> None:
    hub = await asyncio.to_thread(serve, {
        "HUB_LOG_FORMAT": "json", "HUB_JWT_SECRET": SECRET,
        "HUB_DATABASE_URL": f"sqlite:///{tmp_path / 'hub.db'}",
    }, tmp_path / "hub.log")
    try:
        client = centrifuge.Client(f"ws://127.0.0.1:{hub.port}/connection/websocket",
                                   token="not-a-jwt")
        await client.connect()
        await eventually(lambda: "refused" in hub.log(), timeout=20)
        await client.disconnect()
    finally:
        await asyncio.to_thread(hub.stop)

    records = _records(hub.log())  # every line parses: nothing but JSON on the output
    for record in records:
        assert {"timestamp", "level", "logger", "message"} <= record.keys()
    refused = [r for r in records if "refused" in str(r["message"])]
    assert refused[0]["logger"] == "hub.client" and refused[0]["level"] == "INFO"
    assert len(str(refused[0]["client"])) == 32  # the connection's id, from the bound command
    started = [r for r in records if r["logger"] == "hub"]
    assert "FitSync Hub" in str(started[0]["message"])


def test_start_up_says_where_the_data_is_and_not_every_migration_step(tmp_path: Path) -> None:
    hub = serve({"HUB_DATABASE_URL": f"sqlite:///{tmp_path / 'hub.db'}"}, tmp_path / "hub.log")
    hub.stop()
    text = hub.log()
    assert "alembic" not in text
    assert "database schema migrated from empty to" in text
    assert f"database SQLite {tmp_path / 'hub.db'}" in text
    assert "development mode" in text  # no secret: the banner with a token
    lines_before_ready = text.split("Uvicorn running on")[0].strip().splitlines()
    assert len(lines_before_ready) <= 15, lines_before_ready


@pytest.fixture
def formatted() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.ContextFilter())
    logger = logging.getLogger("tests.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream, handler
    logger.removeHandler(handler)


async def test_the_bound_command_names_connection_user_and_channel_in_both_formats(
    formatted: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, handler = formatted

    async def command(log_format: str) -> None:
        handler.setFormatter(logs.formatter(log_format))
        logs.bind_command("c0ffee", "athlete-7", "session:s1")
        logger.warning("could not store event %s", "e1")
        logger.info("explicit", extra={"channel": "coach:athlete-7"})

    async def other_connection() -> None:
        logger.info("no command here")

    await asyncio.get_running_loop().create_task(command("json"))
    await asyncio.get_running_loop().create_task(other_connection())
    first, explicit, unrelated = _records(stream.getvalue())
    assert first == {"timestamp": first["timestamp"], "level": "WARNING", "logger": "tests.logs",
                     "message": "could not store event e1", "client": "c0ffee",
                     "user": "athlete-7", "channel": "session:s1"}
    assert str(first["timestamp"]).endswith("+00:00")
    assert explicit["channel"] == "coach:athlete-7" and explicit["client"] == "c0ffee"
    assert "client" not in unrelated  # another task never sees this command's fields

    stream.truncate(0)
    stream.seek(0)
    await asyncio.get_running_loop().create_task(command("text"))
    line = stream.getvalue().splitlines()[0]
    assert line.endswith(
        "WARNING tests.logs: could not store event e1 "
        "[client=c0ffee user=athlete-7 channel=session:s1]"
    )


class _Envelopes(BaseHTTPRequestHandler):
    received: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        type(self).received.append(body)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def sentry_server() -> Iterator[tuple[str, list[bytes]]]:
    _Envelopes.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Envelopes)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://public-key@127.0.0.1:{server.server_port}/42", _Envelopes.received
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_with_sentry_dsn_a_logged_error_reaches_sentry_tagged_with_the_command(
    sentry_server: tuple[str, list[bytes]],
) -> None:
    dsn, received = sentry_server
    program = (
        "import logging\n"
        "from hub import logs\n"
        f"logs.configure('json', sentry_dsn={dsn!r})\n"
        "logs.bind_command('c0ffee', 'athlete-7', 'session:s1')\n"
        "logging.getLogger('hub.client').error('command %s failed', 'publish')\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=60,
                          text=True)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for body in received for line in body.splitlines()[2:3]]
    assert events, f"no envelope arrived; stderr: {done.stderr}"
    event = events[0]
    assert event["logentry"]["message"] == "command %s failed"
    assert event["level"] == "error" and event["logger"] == "hub.client"
    assert event["tags"] == {"client": "c0ffee", "user": "athlete-7", "channel": "session:s1"}
    assert event["release"].startswith("fitsync-hub@")


def test_a_hub_that_cannot_start_reports_it_to_sentry(
    sentry_server: tuple[str, list[bytes]], tmp_path: Path,
) -> None:
    dsn, received = sentry_server
    hub = serve({"SENTRY_DSN": dsn, "HUB_JWT_SECRET": SECRET,
                 "HUB_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nowhere"},
                tmp_path / "hub.log", wait_ready=False)
    try:
        hub.process.wait(60)
    finally:
        hub.stop()
    assert hub.process.returncode != 0
    assert "errors are reported to Sentry" in hub.log()
    assert any(b"Application startup failed" in body for body in received), hub.log()


async def test_what_is_logged_while_a_publish_is_handled_names_its_connection_user_and_channel(
    make_hub: MakeHub, sdk: OpenSdk, formatted: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    _, stream, handler = formatted
    handler.setFormatter(logs.formatter("json"))
    watched = [logging.getLogger(name) for name in ("hub", "channels")]
    database = await create_postgres_database()
    try:
        hub = await make_hub(database)
        device, _ = await sdk(hub, hub.token("ann", "device", device="ann-watch"))
        channel = f"session:{await start_session(device)}"
        [client] = hub.node.clients["ann"]
        for logger in watched:
            logger.addHandler(handler)
        async with connection_switch(database) as allow:
            await allow(False)  # the database is gone: the failed publish is logged
            assert (await reply_error(device.publish(channel, a_set("s1")))).temporary
    finally:
        for logger in watched:
            logger.removeHandler(handler)
        await drop_postgres_database(database)
    failures = [r for r in _records(stream.getvalue()) if r["level"] in ("WARNING", "ERROR")]
    assert failures
    for record in failures:
        assert (record["client"], record["user"], record["channel"]) == (client.id, "ann", channel)
        assert "Traceback" in str(record["exc_info"])
