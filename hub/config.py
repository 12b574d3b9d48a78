"""Every setting of a node in one typed object, read from `HUB_*` environment variables.

Limits are named settings with defaults here and nowhere else, so the README's table of
settings and the code cannot drift apart (tests/test_config.py checks the README lists each).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field, fields, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    listen_backlog: int = 4096
    """Connections the kernel queues until the node accepts them (at most `net.core.somaxconn`).
    A reconnect storm overflows a short queue, and each SYN dropped costs its client a
    retransmission 1 s, then 3 s, then 7 s later."""
    redis_url: str | None = None
    """Unset: the in-process broker, one node. One URL, or several comma-separated: channels are
    sharded over them by a stable hash of their name. With `redis_cluster`, a cluster's seeds."""
    redis_cluster: bool = False
    """`redis_url` names seed nodes of one Redis Cluster (hash slots, sharded pub/sub)."""
    redis_prefix: str = "fitsync"
    """Starts every Redis key and pub/sub channel, so deployments and tests can share a Redis."""
    redis_timeout: float = 2.0
    """Seconds to connect, read or write before a Redis call fails as unavailable."""
    database_url: str | None = None
    """Unset: a SQLite file `fitsync.db` in the working directory."""
    jwt_secret: str | None = None
    """HS256 secret. Unset (and no public key): development mode with a generated secret."""
    jwt_public_key: str | None = None
    """PEM public key for RS256/ES256 tokens."""
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    api_key: str | None = None
    """Unset: the HTTP API answers 401 to everything."""

    ping_interval: float = 25.0
    pong_timeout: float = 10.0
    connect_timeout: float = 15.0
    """A socket that has not sent `connect` by then is closed as stale (3502)."""
    max_connecting: int = 4000
    """Connections accepted but not yet answered their `connect`, beyond which new WebSocket
    handshakes are refused at once with 503 (the SDKs reconnect with jittered backoff): in a
    reconnect storm, the work a node has queued stays what it can answer within a few seconds
    (about 3 s at this machine's 1,000-1,500 connects/s), instead of every client waiting out
    its timeout. Lower refuses sooner but makes a storm last longer: at 1,000, a storm of
    19,000 here was refused 12,000-20,000 times and took 24-28 s instead of 13-18."""
    expired_close_delay: float = 25.0
    """Grace after a connection token's `exp` for the client's refresh to arrive."""

    max_frame_bytes: int = 65536
    max_subscriptions: int = 128
    max_channel_length: int = 255
    commands_per_second: float = 100.0
    """Sustained command rate per connection; bursts up to the same number are allowed."""
    write_buffer_bytes: int = 1 << 20
    """Outbound bytes a connection may have waiting before it is cut as slow (3008)."""
    presence_ttl: float = 60.0

    drain_refuse_delay: float = 1.0
    """After SIGTERM, seconds of `/readyz` 503 before new connections are refused: the time the
    load balancer needs to notice."""
    drain_seconds: float = 5.0
    """Window over which a stopping node sends its clients the shutdown disconnect (3001), so
    they do not all reconnect to the other nodes in the same instant."""
    shutdown_timeout: float = 9.0
    """Seconds from SIGTERM to exit, whatever clients do; below `docker stop`'s default 10."""
    allowed_origins: tuple[str, ...] = ()
    """Browser origins allowed to open a WebSocket (comma-separated, `*` wildcards); requests
    without an `Origin` header are always allowed."""

    coach_model: str = "gpt-4o-mini"
    dev_login: bool = False
    """Serve the web app's dev-only token endpoint even with a configured secret (HS256 only).
    In development mode it is always served; otherwise, unset, it does not exist."""
    log_format: str = "text"
    """`text`: human-readable lines; `json`: one JSON object per line, for log shippers."""
    coach_api_key: str | None = None
    """Unset: `OPENAI_API_KEY`. Neither set: `coach.ask` answers 108 saying how to set one."""
    coach_base_url: str | None = None
    """Unset: `OPENAI_BASE_URL`, else OpenAI's API; any OpenAI-compatible server works."""
    coach_system_prompt: str = (
        "You are FitSync's strength coach. Answer the athlete briefly and concretely, using "
        "their workout data below when it helps. Be encouraging; never give medical advice."
    )
    coach_system_prompt_file: str | None = None
    """A file whose text replaces `coach_system_prompt`, read at start."""
    coach_prompt_budget: int = 12000
    """Characters of prompt (system, athlete context, conversation, question); the oldest
    turns of the conversation are left out first."""
    coach_max_tokens: int = 1024
    """Longest answer asked of the model; the `coach:` history is sized to hold one whole."""
    coach_coalesce_ms: float = 10.0
    """Deltas arriving within this window go out as one publication; 0 sends each chunk."""
    coach_save_interval: float = 2.0
    """How often a streaming answer's text is saved (and its lease renewed)."""
    coach_lease: float = 15.0
    """An answer not saved for this long is taken for dead (its node stopped) and failed."""
    coach_asks_per_minute: int = 10
    coach_connect_timeout: float = 5.0
    coach_stall_timeout: float = 30.0
    """No response or no chunk from the model for this long fails the answer (retryable)."""
    coach_history_ttl: float = 3600.0
    """How long `coach:` publications stay in channel history for recovery."""
    dev_mode: bool = field(default=False)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from `HUB_<NAME>` variables (and `PORT`), then explicit overrides."""
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"HUB_{f.name.upper()}")
            if raw is None or raw == "" or f.name == "dev_mode":
                continue
            values[f.name] = _parse(f.type, raw, f.name)
        if "port" not in values and env.get("PORT"):
            values["port"] = _parse("int", env["PORT"], "port")
        if env.get("HUB_COACH_MODEL"):
            values["coach_model"] = env["HUB_COACH_MODEL"]
        for name, variable in (("coach_api_key", "OPENAI_API_KEY"),
                               ("coach_base_url", "OPENAI_BASE_URL")):
            if name not in values and env.get(variable):
                values[name] = env[variable]
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        if settings.pong_timeout >= settings.ping_interval:
            raise ValueError("HUB_PONG_TIMEOUT must be shorter than HUB_PING_INTERVAL")
        if settings.log_format not in ("text", "json"):
            raise ValueError(f"HUB_LOG_FORMAT must be text or json, got {settings.log_format!r}")
        if settings.drain_refuse_delay + settings.drain_seconds >= settings.shutdown_timeout:
            raise ValueError("HUB_DRAIN_REFUSE_DELAY + HUB_DRAIN_SECONDS must be shorter than "
                             "HUB_SHUTDOWN_TIMEOUT")
        if settings.coach_save_interval * 2 > settings.coach_lease:
            raise ValueError("HUB_COACH_LEASE must be at least twice HUB_COACH_SAVE_INTERVAL")
        if settings.jwt_secret is None and settings.jwt_public_key is None:
            settings = replace(settings, jwt_secret=secrets.token_urlsafe(32), dev_mode=True)
        if settings.dev_login and settings.jwt_secret is None:
            raise ValueError("HUB_DEV_LOGIN needs HUB_JWT_SECRET: the dev login mints HS256 tokens")
        return settings

    @property
    def dev_login_enabled(self) -> bool:
        """Whether the dev-only token endpoint exists: development mode or HUB_DEV_LOGIN=1."""
        return self.dev_mode or self.dev_login


def _parse(kind: Any, raw: str, name: str) -> Any:
    kind = str(kind)
    if kind.startswith("bool"):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"HUB_{name.upper()} must be 1 or 0, got {raw!r}")
    if kind.startswith("tuple"):
        return tuple(item.strip() for item in raw.split(",") if item.strip())
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
    except ValueError:
        raise ValueError(f"HUB_{name.upper()} must be a number, got {raw!r}") from None
    return raw
