"""The web app's routes: its pages and assets at `/`, and the session snapshot it reloads from.

Public (outside the API key): the pages are static, and `GET /app/sessions/{id}` authenticates
with the same token the page connects with (`Authorization: Bearer <jwt>`) and applies the
channel rules' permission (the owner, their devices, linked trainers, admins).

Third-party scripts come from `web/node_modules` (installed by `npm ci` in scripts/bootstrap)
and are served from an allow-list under `/vendor/`, so nothing else in node_modules is exposed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from channels.base import Context
from hub import auth
from hub.config import Settings
from hub.http_api import error_response
from hub.rules import Principal
from models import queries
from models.tables import heart_rate_samples, session_events

WEB_ROOT = Path(__file__).resolve().parent.parent / "web"
"""The front end's home in the repository: index.html, src/ (our modules), node_modules/."""

VENDOR = {
    "centrifuge.mjs": "centrifuge/build/index.mjs",
    "uplot.mjs": "uplot/dist/uPlot.esm.js",
    "uplot.css": "uplot/dist/uPlot.min.css",
}
"""URL name under /vendor/ → file in web/node_modules (the versions are in the lockfile)."""

ContextSource = Callable[[], Context]


def routes(settings: Settings, context: ContextSource) -> list[BaseRoute]:
    async def index(request: Request) -> Response:
        return FileResponse(WEB_ROOT / "index.html", headers={"Cache-Control": "no-cache"})

    async def vendor(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in VENDOR:
            return PlainTextResponse("not found", status_code=404)
        path = WEB_ROOT / "node_modules" / VENDOR[name]
        if not path.is_file():
            return PlainTextResponse(
                f"{name} is not installed: run scripts/bootstrap (npm ci in web/)", status_code=503
            )
        return FileResponse(path, headers={"Cache-Control": "no-cache"})

    async def session_snapshot(request: Request) -> Response:
        who = _principal(request, settings)
        if isinstance(who, Response):
            return who
        ctx, session_id = context(), request.path_params["session_id"]
        owner = await ctx.session_owner(session_id)
        if owner is None or not await ctx.may_watch(who, owner):
            return error_response(404, f"no session {session_id} you may watch")
        return JSONResponse(await snapshot(ctx, session_id))

    return [
        Route("/", index, methods=["GET"]),
        Route("/vendor/{name}", vendor, methods=["GET"]),
        Route("/app/sessions/{session_id}", session_snapshot, methods=["GET"]),
        Mount("/static", StaticFiles(directory=WEB_ROOT / "src", check_dir=False)),
    ]


def _principal(request: Request, settings: Settings) -> Principal | Response:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return error_response(401, "send `Authorization: Bearer <connection token>`")
    try:
        identity = auth.verify(token.strip(), settings)
    except auth.TokenExpired:
        return error_response(401, "token expired")
    except auth.InvalidToken as exc:
        return error_response(401, f"invalid token: {exc}")
    return Principal(identity.user, identity.role, identity.device)


async def snapshot(ctx: Context, session_id: str) -> dict[str, Any]:
    """The session as stored: its summary, every set, and every heart-rate event's samples.

    What the page rebuilds its tables and charts from when the hub could not recover the
    events it missed (`recovered: false`); events carry their `event_id`, so the page merges
    this with live publications without counting any twice.
    """
    session = await queries.get_session(ctx.db, session_id)
    sets = await queries.get_session_sets(ctx.db, session_id)
    se, hr = session_events, heart_rate_samples
    stmt = (
        select(se.c.event_id, se.c.server_ts, hr.c.ts_ms, hr.c.bpm)
        .select_from(se.join(hr, hr.c.event_pk == se.c.id))
        .where(se.c.session_id == session_id, se.c.kind == "hr")
        .order_by(se.c.id, hr.c.id)
    )
    async with ctx.db.read() as conn:
        rows = (await conn.execute(stmt)).all()
    hr_events: dict[str, dict[str, Any]] = {}
    for event_id, server_ts, ts_ms, bpm in rows:
        event = hr_events.setdefault(
            event_id, {"type": "hr", "event_id": event_id, "server_ts": server_ts, "samples": []}
        )
        event["samples"].append([ts_ms, bpm])
    return {"session": session, "sets": sets, "hr": list(hr_events.values())}
