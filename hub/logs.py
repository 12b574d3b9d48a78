"""Logging for a node: one line per event, human-readable or JSON, and optional Sentry.

`configure()` runs once, from `fitsync-hub serve`, before anything logs. Every record leaves
through one handler on the root logger, so the hub's own lines, uvicorn's and the libraries'
share one format:

* `text` (the default): `2026-12-01 06:38:02,096 INFO hub.client: message [client=… user=…]`.
* `json`: one JSON object per line with `timestamp` (ISO 8601, UTC), `level`, `logger`,
  `message`, `exc_info` when there is a traceback, and the connection's `client`, `user` and
  `channel` where they apply, ready for a log shipper as they are.

Where they apply: the command being handled binds them (`bind_command`, a context variable, so
they follow the command into everything it awaits and into the tasks it starts, and never leak
into another connection's commands); a call may also pass them as `extra=`, which wins.

With `SENTRY_DSN` set, records at ERROR and above are also sent to Sentry as events (lower ones
ride along as breadcrumbs), tagged with the same connection fields.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from pythonjsonlogger.json import JsonFormatter

from hub import __version__

if TYPE_CHECKING:
    from sentry_sdk.types import Event, Hint

LOG_FORMATS = ("text", "json")

CONTEXT_FIELDS = ("client", "user", "channel")
"""The connection fields a record carries where they apply, in this order."""

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(context)s"

QUIET_LOGGERS = {"alembic": logging.WARNING}
"""Libraries whose INFO lines say nothing an operator needs (alembic announces each of its
plugins and each migration step; the hub logs one line with the schema's revision instead)."""

_STANDARD_ATTRS = (
    "args", "asctime", "created", "exc_info", "exc_text", "filename", "funcName", "levelname",
    "levelno", "lineno", "module", "msecs", "message", "msg", "name", "pathname", "process",
    "processName", "relativeCreated", "stack_info", "thread", "threadName", "taskName",
)
"""LogRecord's own attributes: not copied into a JSON line as extra fields."""

_command: ContextVar[tuple[str, str, str | None] | None] = ContextVar(
    "fitsync_command", default=None
)


def bind_command(client: str, user: str, channel: str | None) -> None:
    """The connection and channel of the command now being handled, for every record logged
    while it runs. One tuple in one context variable: this runs for every command."""
    _command.set((client, user, channel))


def command_context() -> dict[str, str]:
    """The bound connection fields that have a value."""
    bound = _command.get()
    if bound is None:
        return {}
    return {name: value for name, value in zip(CONTEXT_FIELDS, bound, strict=True) if value}


class ContextFilter(logging.Filter):
    """Puts the bound connection fields on each record (unless `extra=` set them), as
    attributes for JSON and as a ` [client=… user=…]` suffix for text."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = command_context()
        for name in CONTEXT_FIELDS:
            given = record.__dict__.get(name)
            if given:
                fields[name] = str(given)
            elif name in fields:
                setattr(record, name, fields[name])
        record.context = (
            " [" + " ".join(f"{k}={fields[k]}" for k in CONTEXT_FIELDS if k in fields) + "]"
            if fields else ""
        )
        return True


def formatter(log_format: str) -> logging.Formatter:
    """The formatter for one of `LOG_FORMATS`."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}: {log_format!r}")
    if log_format == "json":
        return JsonFormatter(
            ["levelname", "name", "message"],
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp=True,
            # uvicorn adds an ANSI-coloured copy of some messages; `context` is the text suffix.
            reserved_attrs=[*_STANDARD_ATTRS, "color_message", "context"],
        )
    return logging.Formatter(TEXT_FORMAT)


def configure(
    log_format: str = "text", *, level: int = logging.INFO, sentry_dsn: str | None = None
) -> None:
    """Route every record through one stderr handler in `log_format`; replaces any handler set
    before (so calling it again only changes the format). With `sentry_dsn`, start Sentry."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    for name, quiet_level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(quiet_level)
    if sentry_dsn:
        init_sentry(sentry_dsn)


def init_sentry(dsn: str) -> None:
    """Errors logged anywhere in the process become Sentry events. Only the standard
    integrations: WebSockets bypass ASGI here, and uvicorn logs a failing HTTP request at
    ERROR anyway, so the logging integration sees every failure without patching Starlette."""
    import sentry_sdk
    from sentry_sdk.integrations.logging import LoggingIntegration

    sentry_sdk.init(
        dsn=dsn,
        release=f"fitsync-hub@{__version__}",
        integrations=[LoggingIntegration(level=logging.INFO, event_level=logging.ERROR)],
        auto_enabling_integrations=False,
        before_send=_tag_with_command,
    )
    logging.getLogger("hub").info("errors are reported to Sentry")


def _tag_with_command(event: Event, hint: Hint) -> Event | None:
    """Runs where the error was logged, so the command's connection fields are still bound."""
    fields = command_context()
    if fields:
        tags: dict[str, Any] = dict(event.get("tags") or {})
        tags.update(fields)
        event["tags"] = tags
    return event
