"""The audit log: every admin action (key created, changed, revoked; config reloaded; cache cleared)
as an append-only row of the ``audit_log`` table, and ``GET /admin/audit`` to read it.

A row holds the time, the principal (``admin`` for the admin key, ``signal`` for a SIGHUP reload),
the action, its target, the change as JSON (settings only: a key's secret never reaches it) and the
client's address. Recording never fails the action it describes: a database outage is logged.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy.admin import require_admin
from proxy.console.db import ConsoleDB
from proxy.errors import GatewayError, bad_request
from proxy.keystore import now_iso
from proxy.storage import iso
from proxy.usage_api import parse_time

log = logging.getLogger("gateway.audit")
ACTIONS = ("key.created", "key.updated", "key.revoked", "config.reloaded", "config.reload_failed", "cache.cleared")
_SECRET_FIELDS = frozenset({"key", "secret", "key_hash", "api_key"})
MAX_LIMIT = 1000


def client_of(request: Request) -> str | None:
    return request.client.host if request.client else None


class AuditLog:
    def __init__(self, db: ConsoleDB) -> None:
        self.db = db

    async def record(self, principal: str, action: str, target: str | None, change: dict[str, Any],
                     client: str | None) -> None:
        clean = {k: v for k, v in change.items() if k not in _SECRET_FIELDS}
        try:
            await self.db.run("INSERT INTO audit_log (created_at, principal, action, target, change, client) "
                              "VALUES (?, ?, ?, ?, ?, ?)", now_iso(), principal, action, target,
                              orjson.dumps(clean).decode(), client)
        except Exception as exc:
            log.error("audit log: could not record %s of %s: %s", action, target, type(exc).__name__)

    async def query(self, filters: dict[str, str], start: str | None, end: str | None, before_id: int | None,
                    limit: int) -> list[dict[str, Any]]:
        where, args = [], []
        for column, value in filters.items():
            where.append(f"{column} = ?")
            args.append(value)
        if start:
            where.append("created_at >= ?")
            args.append(start)
        if end:
            where.append("created_at < ?")
            args.append(end)
        if before_id is not None:
            where.append("id < ?")
            args.append(before_id)
        sql = ("SELECT id, created_at, principal, action, target, change, client FROM audit_log"
               + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?")
        rows = await self.db.fetch(sql, *args, limit)
        return [{"id": int(r[0]), "object": "audit.entry", "created_at": r[1], "principal": r[2], "action": r[3],
                 "target": r[4], "change": orjson.loads(r[5]), "client": r[6]} for r in rows]


def _int_param(value: str | None, name: str, default: int | None, maximum: int) -> int | None:
    if value is None or value == "":
        return default
    if not value.isdigit() or not 1 <= int(value) <= maximum:
        raise bad_request(f"'{name}' must be an integer from 1 to {maximum}", param=name, code="invalid_value")
    return int(value)


def _iso_param(value: str | None, name: str) -> str | None:
    if not value:
        return None
    return iso(parse_time(value, name))


async def audit_endpoint(request: Request) -> Response:
    """``GET /admin/audit?action=&principal=&target=&start=&end=&before=<id>&limit=``: newest first."""
    try:
        require_admin(request)
        params = request.query_params
        action = params.get("action")
        if action and action not in ACTIONS:
            raise bad_request(f"'action' must be one of {', '.join(ACTIONS)}", param="action", code="invalid_value")
        filters = {name: params[name] for name in ("action", "principal", "target") if params.get(name)}
        limit = _int_param(params.get("limit"), "limit", 100, MAX_LIMIT)
        before = _int_param(params.get("before"), "before", None, 2**62)
        assert limit is not None
        audit: AuditLog = request.app.state.console.audit
        start, end = _iso_param(params.get("start"), "start"), _iso_param(params.get("end"), "end")
        try:
            rows = await audit.query(filters, start, end, before, limit + 1)
        except Exception as exc:
            log.warning("audit log unavailable: %s", type(exc).__name__)
            raise GatewayError(503, "The audit log's database is unavailable.", "service_unavailable_error",
                               "audit_unavailable") from None
    except GatewayError as e:
        return e.response()
    body = {"object": "list", "data": rows[:limit], "has_more": len(rows) > limit}
    return Response(orjson.dumps(body), media_type="application/json")
