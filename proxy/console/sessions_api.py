"""``/v1/sessions``: create, list, read (messages paged, newest last) and delete conversations.

A gateway key sees only the sessions it created; the admin key reads and deletes any (the console).
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy.auth import hash_key, presented_key
from proxy.console.sessions import MAX_PAGE, SessionStore
from proxy.errors import GatewayError, bad_request
from proxy.requests import read_json
from proxy.runtime import Runtime

log = logging.getLogger("gateway.sessions")
_ADMIN = object()


def _owner(request: Request) -> Any:
    """The key name whose sessions the caller sees, or _ADMIN for the admin key. 401 otherwise."""
    rt: Runtime = request.app.state.runtime
    authorization = presented_key(request.headers)
    admin = rt.config.server.admin_key
    scheme, _, secret = (authorization or "").partition(" ")
    if admin and secret.strip() and hmac.compare_digest(hash_key(secret.strip()), hash_key(admin)):
        return _ADMIN
    try:
        key = rt.authenticate(authorization)
    except GatewayError:
        rt.obs.auth_failed("invalid_api_key")
        raise
    return key.name if key is not None else ""


def _store(request: Request) -> SessionStore:
    return request.app.state.console.sessions


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status, media_type="application/json")


def _limit(value: str | None, default: int) -> int:
    if value is None:
        return default
    if not value.isdigit() or not 1 <= int(value) <= MAX_PAGE:
        raise bad_request(f"'limit' must be an integer from 1 to {MAX_PAGE}", param="limit", code="invalid_value")
    return int(value)


def _unavailable(exc: Exception) -> GatewayError:
    log.warning("sessions unavailable: %s", type(exc).__name__)
    return GatewayError(503, "The sessions database is unavailable.", "service_unavailable_error",
                        "sessions_unavailable")


async def create_session(request: Request) -> Response:
    try:
        owner = _owner(request)
        if owner is _ADMIN:
            raise GatewayError(403, "Sessions belong to a gateway key: create one with that key.",
                               "permission_error", "gateway_key_required")
        rt: Runtime = request.app.state.runtime
        body = await read_json(request, rt.config.server.max_body_bytes) if await _has_body(request) else {}
        unknown = set(body) - {"title", "metadata"}
        if unknown:
            name = sorted(unknown)[0]
            raise bad_request(f"Unrecognized request argument supplied: {name}", param=name,
                              code="unknown_parameter")
        title = body.get("title")
        metadata = {} if body.get("metadata") is None else body["metadata"]
        if title is not None and (not isinstance(title, str) or len(title) > 200):
            raise bad_request("'title' must be a string of at most 200 characters", param="title")
        if not isinstance(metadata, dict) or len(orjson.dumps(metadata)) > 16384:
            raise bad_request("'metadata' must be an object of at most 16 KiB", param="metadata")
        try:
            session = await _store(request).create(owner, title, metadata)
        except Exception as exc:
            raise _unavailable(exc) from None
    except GatewayError as e:
        return e.response()
    return _json(session.public(), 201)


async def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    return length != "0" and (length is not None or "transfer-encoding" in request.headers)


async def list_sessions(request: Request) -> Response:
    """``?limit=&before=<updated_at>``: most recently used first."""
    try:
        owner = _owner(request)
        limit = _limit(request.query_params.get("limit"), 50)
        try:
            rows = await _store(request).list(None if owner is _ADMIN else owner, limit + 1,
                                              request.query_params.get("before"))
        except Exception as exc:
            raise _unavailable(exc) from None
    except GatewayError as e:
        return e.response()
    data = [{**s.public(), **({"key": s.key_name} if owner is _ADMIN else {})} for s in rows[:limit]]
    return _json({"object": "list", "data": data, "has_more": len(rows) > limit})


async def _session_of(request: Request) -> Any:
    owner = _owner(request)
    session_id = request.path_params["session_id"]
    try:
        session = await _store(request).get(session_id, None if owner is _ADMIN else owner)
    except Exception as exc:
        raise _unavailable(exc) from None
    if session is None:
        raise GatewayError(404, f"No session found with id '{session_id}'.", code="session_not_found",
                           param="session_id")
    return session


async def get_session(request: Request) -> Response:
    """``?limit=&before=<message id>``: the latest messages before ``before``, oldest first (newest last)."""
    try:
        session = await _session_of(request)
        limit = _limit(request.query_params.get("limit"), 50)
        before_text = request.query_params.get("before")
        if before_text is not None and not before_text.isdigit():
            raise bad_request("'before' must be a message id", param="before", code="invalid_value")
        try:
            rows = await _store(request).messages(session.id, limit + 1,
                                                  int(before_text) if before_text is not None else None)
        except Exception as exc:
            raise _unavailable(exc) from None
    except GatewayError as e:
        return e.response()
    has_more = len(rows) > limit
    messages = rows[1:] if has_more else rows
    data = [{**m["message"], "id": m["id"], "object": "session.message", "created_at": m["created_at"],
             **({"meta": m["meta"]} if m["meta"] else {})} for m in messages]
    return _json({**session.public(), "messages": data, "has_more": has_more,
                  "first_id": data[0]["id"] if data else None})


async def delete_session(request: Request) -> Response:
    try:
        session = await _session_of(request)
        try:
            await _store(request).delete(session.id)
        except Exception as exc:
            raise _unavailable(exc) from None
    except GatewayError as e:
        return e.response()
    return _json({"id": session.id, "object": "session.deleted", "deleted": True})
