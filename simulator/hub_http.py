"""The simulator's HTTP calls to a hub: the dev-only demo set-up and tokens, and trainer links
through the server-to-server API. Plain `urllib` in a thread: a handful of calls at start."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

TIMEOUT_S = 10.0


class HubHttpError(Exception):
    pass


def http_base(ws_url: str) -> str:
    """`ws://host:port/connection/websocket` → `http://host:port`."""
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "", "", ""))


class HubHttp:
    def __init__(self, ws_url: str, api_key: str | None = None) -> None:
        self.base = http_base(ws_url)
        self.api_key = api_key

    async def demo(self, athletes: int, trainers: int) -> dict[str, Any]:
        """The demo's users and links (`POST /dev/demo`); a hub without dev login refuses."""
        return await self._call("POST", "/dev/demo", {"athletes": athletes, "trainers": trainers},
                                missing="the hub has no dev login: run it on its embedded "
                                        "defaults or with HUB_DEV_LOGIN=1")

    async def dev_token(self, user: str, role: str, device: str | None = None,
                        ttl: int = 24 * 3600) -> str:
        body: dict[str, Any] = {"user": user, "role": role, "ttl": ttl}
        if device:
            body["device"] = device
        minted = await self._call("POST", "/dev/token", body)
        return str(minted["token"])

    async def link(self, trainer: str, client: str) -> None:
        """`PUT /api/trainers/{trainer}/clients/{client}` with the API key."""
        await self._call("PUT", f"/api/trainers/{quote(trainer)}/clients/{quote(client)}", None)

    async def _call(self, method: str, path: str, body: dict[str, Any] | None,
                    missing: str = "") -> dict[str, Any]:
        return await asyncio.to_thread(self._request, method, path, body, missing)

    def _request(self, method: str, path: str, body: dict[str, Any] | None,
                 missing: str) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.api_key and path.startswith("/api/"):
            headers["Authorization"] = f"apikey {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                result: dict[str, Any] = json.loads(response.read() or b"{}")
                return result
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and missing:
                raise HubHttpError(missing) from None
            raise HubHttpError(f"{method} {path}: HTTP {exc.code} {exc.read()[:200]!r}") from None
        except OSError as exc:
            raise HubHttpError(f"{method} {self.base}{path}: {exc}") from None
