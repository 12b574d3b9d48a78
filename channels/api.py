"""FitSync's HTTP API routes: users, trainer-client links and sessions, for the app's backend.

Served by the hub behind its API key; errors use the hub's `ApiError` (400, 404).
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from channels import trainer
from channels.base import Context
from hub.auth import ROLES
from hub.http_api import ApiError, json_body
from models import queries

ContextSource = Callable[[], Context]


def routes(context: ContextSource) -> list[BaseRoute]:
    async def put_user(request: Request) -> Response:
        body = await json_body(request)
        name, role = body.get("name", ""), body.get("role", "athlete")
        if not isinstance(name, str) or len(name) > 200:
            raise ApiError(400, "`name` must be a string of at most 200 characters")
        if role not in ROLES:
            raise ApiError(400, f"`role` must be one of {', '.join(ROLES)}")
        user_id = request.path_params["user_id"]
        await queries.upsert_user(context().db, user_id, name, role)
        return JSONResponse({"user_id": user_id, "name": name, "role": role})

    async def link(request: Request) -> Response:
        trainer_id, client_id = request.path_params["trainer_id"], request.path_params["client_id"]
        db = context().db
        if request.method == "PUT":
            await queries.link(db, trainer_id, client_id)
            return JSONResponse({"trainer_id": trainer_id, "client_id": client_id})
        if not await queries.unlink(db, trainer_id, client_id):
            raise ApiError(404, f"trainer {trainer_id} has no client {client_id}")
        await trainer.unlinked(context(), trainer_id, client_id)
        return JSONResponse({"trainer_id": trainer_id, "client_id": client_id, "removed": True})

    async def get_session(request: Request) -> Response:
        session_id = request.path_params["session_id"]
        db = context().db
        found = await queries.get_session(db, session_id)
        if found is None:
            raise ApiError(404, f"no session {session_id}")
        found["sets"] = await queries.get_session_sets(db, session_id)
        return JSONResponse(found)

    async def user_sessions(request: Request) -> Response:
        try:
            limit = int(request.query_params.get("limit", "20"))
        except ValueError:
            raise ApiError(400, "`limit` must be an integer") from None
        if not 1 <= limit <= 100:
            raise ApiError(400, "`limit` must be from 1 to 100")
        db, user_id = context().db, request.path_params["user_id"]
        sessions = await queries.recent_sessions(db, user_id, limit)
        # An empty list would hide a mistyped id: an unknown user is a 404, like a session.
        if not sessions and await queries.get_user(db, user_id) is None:
            raise ApiError(404, f"no user {user_id}")
        return JSONResponse({"sessions": sessions})

    return [
        Route("/api/users/{user_id}", put_user, methods=["PUT"]),
        Route("/api/trainers/{trainer_id}/clients/{client_id}", link, methods=["PUT", "DELETE"]),
        Route("/api/sessions/{session_id}", get_session, methods=["GET"]),
        Route("/api/users/{user_id}/sessions", user_sessions, methods=["GET"]),
    ]
