"""Read-only views for the console: live health per target (``GET /admin/health``) and the request log
(``GET /admin/requests``, ``GET /admin/requests/{id}``) read from the usage ledger.

Health describes every alias as /v1/models does (prices, context window, capabilities) plus its routing
strategy and targets, and joins this process's router state (circuit, in-flight, first-byte EWMA) with the ledger's last
``?window_s=`` seconds (default 900) per provider and upstream model: requests, p50 latency and error
rate. Both are computed when asked, off the request path.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy.admin import require_admin
from proxy.console.db import ConsoleDB
from proxy.errors import GatewayError, bad_request
from proxy.models_api import model_object
from proxy.runtime import Runtime
from proxy.storage import COLUMNS, iso
from proxy.usage_api import parse_time, viewer

_BOOLS = ("stream", "usage_estimated", "cache_hit")
MAX_ROWS = 500


def _json(data: Any) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")


def _db(request: Request) -> ConsoleDB:
    return request.app.state.console.db


def _since(db: ConsoleDB, at: datetime) -> Any:
    return at if db.is_pg else iso(at)


def _unavailable() -> GatewayError:
    return GatewayError(503, "The usage database is unavailable.", "service_unavailable_error", "usage_unavailable")


async def health(request: Request) -> Response:
    try:
        rt: Runtime = require_admin(request)
        window_text = request.query_params.get("window_s") or "900"
        if not window_text.isdigit() or not 1 <= int(window_text) <= 86400:
            raise bad_request("'window_s' must be an integer from 1 to 86400", param="window_s",
                              code="invalid_value")
        db = _db(request)
        since = datetime.now(UTC) - timedelta(seconds=int(window_text))
        try:
            rows = await db.fetch("SELECT provider, upstream_model, latency_ms, error_type FROM usage_log "
                                  "WHERE created_at >= ?", _since(db, since))
        except Exception:
            raise _unavailable() from None
    except GatewayError as e:
        return e.response()
    recent: dict[tuple[str, str], list[tuple[float, bool]]] = {}
    for provider, model, latency, error in rows:
        recent.setdefault((provider or "", model or ""), []).append((float(latency or 0), error is not None))
    now = time.monotonic()
    data = []
    for alias in rt.config.models.values():
        targets = []
        for state in rt.router.states.get(alias.name, []):
            t = state.target
            seen = recent.get((t.provider, t.model or ""), [])
            latencies = sorted(lat for lat, _ in seen)
            circuit = "closed" if not state.circuit_open else ("half_open" if now >= state.open_until else "open")
            targets.append({
                "provider": t.provider, "model": t.model, "kind": rt.config.providers[t.provider].kind,
                "input_per_mtok": t.input_per_mtok, "output_per_mtok": t.output_per_mtok,
                "circuit": circuit, "inflight": state.inflight, "consecutive_failures": state.failures,
                "ttfb_ewma_ms": round(state.ewma_ttfb * 1000, 3) if state.ewma_ttfb is not None else None,
                "requests": len(seen), "p50_latency_ms": latencies[(len(latencies) - 1) // 2] if latencies else None,
                "error_rate": round(sum(err for _, err in seen) / len(seen), 6) if seen else None,
            })
        described = model_object(alias, rt.config.providers, rt.created)
        data.append({"alias": alias.name, "strategy": alias.strategy, "context_window": described["context_window"],
                     "pricing": described["pricing"], "capabilities": described["capabilities"],
                     "targets": targets})
    return _json({"object": "health", "window_s": int(window_text), "data": data})


def _row(r: tuple[Any, ...]) -> dict[str, Any]:
    out = dict(zip(COLUMNS, r, strict=True))
    if isinstance(out["created_at"], datetime):
        out["created_at"] = iso(out["created_at"])
    for name in _BOOLS:
        out[name] = bool(out[name])
    return out


async def requests_log(request: Request) -> Response:
    """``?key=&model=&status=&start=&end=&before=<created_at>&limit=``: newest first. A gateway key
    sees only its own rows (as in /v1/usage)."""
    rt: Runtime = request.app.state.runtime
    params = request.query_params
    try:
        sees_all, own = viewer(rt, request.headers.get("authorization"))
        db = _db(request)
        where, args = [], []
        key = params.get("key") if sees_all else own
        if key:
            where.append("key_name = ?")
            args.append(key)
        if params.get("model"):
            where.append("model = ?")
            args.append(params["model"])
        status = params.get("status")
        if status:
            if status == "error":
                where.append("error_type IS NOT NULL")
            elif status.isdigit():
                where.append("status = ?")
                args.append(int(status))
            else:
                raise bad_request("'status' must be an HTTP status or 'error'", param="status", code="invalid_value")
        for name, op in (("start", ">="), ("end", "<"), ("before", "<")):
            if params.get(name):
                where.append(f"created_at {op} ?")
                args.append(_since(db, parse_time(params[name], name)))
        limit_text = params.get("limit") or "100"
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_ROWS:
            raise bad_request(f"'limit' must be an integer from 1 to {MAX_ROWS}", param="limit",
                              code="invalid_value")
        sql = (f"SELECT {', '.join(COLUMNS)} FROM usage_log" + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY created_at DESC LIMIT ?")
        try:
            rows = await db.fetch(sql, *args, int(limit_text) + 1)
        except Exception:
            raise _unavailable() from None
    except GatewayError as e:
        return e.response()
    limit = int(limit_text)
    return _json({"object": "list", "data": [_row(r) for r in rows[:limit]], "has_more": len(rows) > limit})


async def request_detail(request: Request) -> Response:
    """One usage row. The ledger keeps no prompt text; a request made on a session shows its turn there."""
    rt: Runtime = request.app.state.runtime
    try:
        sees_all, own = viewer(rt, request.headers.get("authorization"))
        rid = request.path_params["request_id"]
        try:
            rows = await _db(request).fetch(f"SELECT {', '.join(COLUMNS)} FROM usage_log WHERE request_id = ?", rid)
        except Exception:
            raise _unavailable() from None
        if not rows or (not sees_all and rows[0][COLUMNS.index("key_name")] != own):
            raise GatewayError(404, f"No request found with id '{rid}'.", code="not_found", param="request_id")
    except GatewayError as e:
        return e.response()
    return _json({"object": "usage.row", **_row(rows[0])})
