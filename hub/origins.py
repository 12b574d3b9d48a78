"""Which web pages may open a WebSocket to the hub: the handshake's `Origin` header.

A browser always sends `Origin` and a page cannot forge it, so checking it stops another site
from using a visitor's browser (and cookies or stored tokens) to talk to the hub. Devices and
servers send no `Origin` and are always allowed; they authenticate with their token.

Allowed: the origins listed in `HUB_ALLOWED_ORIGINS` (`*` matches any run of characters, as in
Centrifugo's `allowed_origins`: `https://*.fitsync.app`; `*` alone allows every origin), the
hub's own origin (a page it serves itself), and in development mode any page on localhost.
Comparison ignores case.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


class OriginPolicy:
    def __init__(self, patterns: Iterable[str], *, allow_localhost: bool = False) -> None:
        self.patterns = tuple(p.lower() for p in patterns)
        self.allow_localhost = allow_localhost
        self._any = "*" in self.patterns
        self._compiled = [_compile(p) for p in self.patterns]

    def allows(self, origin: str | None, host: str | None = None) -> bool:
        """Whether a handshake with this `Origin` (None: no header) to this `Host` may proceed."""
        if not origin or self._any:
            return True
        origin = origin.strip().lower()
        try:
            url = urlsplit(origin)
        except ValueError:  # a malformed bracket: only a pattern can allow it
            url = None
        if url is not None:
            if host and url.netloc == host.strip().lower():
                return True
            local = url.scheme in ("http", "https") and url.hostname in LOCAL_HOSTS
            if self.allow_localhost and local:
                return True
        return any(pattern.fullmatch(origin) for pattern in self._compiled)


def _compile(pattern: str) -> re.Pattern[str]:
    """`*` matches any run of characters; everything else stands for itself (`[::1]` too)."""
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))

