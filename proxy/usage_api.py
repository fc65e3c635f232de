"""GET /v1/usage: totals per group from the usage ledger.

``?start=ISO&end=ISO&group_by=model|key|provider|day|hour``, with optional filters ``model=``,
``provider=``, ``key=`` (a gateway key's own rows only, whatever it asks), ``bucket=hour|day`` (then
each row of ``data`` is one group in one time bucket, with ``bucket`` set: the dashboard's series) and
``format=csv`` (the data rows as CSV). ``start``/``end`` take ISO-8601 (a
date alone means midnight UTC, a time without offset is UTC) or epoch seconds, and default to the
last 24 hours; the range is ``[start, end)``. The admin key (``[server] admin_key``) sees every
row; a gateway key sees only its own. Either may come in any header proxy.auth.presented_key reads
(Authorization, x-api-key, api-key). Rows reach the database within about one flush interval.

Per group: requests, errors (rows with an ``error_type``, client disconnects included), prompt,
completion, cached and reasoning tokens, ``cost_usd`` (null when no row in the group had a price),
``unpriced_requests`` (rows with tokens but no price), average, p50 and p95 latency (nearest rank, the
same definition on SQLite and Postgres) and the cache hit rate.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy.auth import presented_key
from proxy.errors import GatewayError, bad_request
from proxy.runtime import Runtime
from proxy.storage import FILTER_COLUMNS, GROUPS, ReportRow, Store, iso, total_of

DEFAULT_WINDOW = timedelta(days=1)
_TIME_GROUPS = ("day", "hour")


def parse_time(value: str, param: str) -> datetime:
    text = value.strip()
    try:
        if text.replace(".", "", 1).isdigit():
            return datetime.fromtimestamp(float(text), UTC)
        parsed = datetime.fromisoformat(text)
    except (ValueError, OverflowError, OSError):
        raise bad_request(f"'{param}' must be an ISO-8601 time (e.g. 2024-05-01T00:00:00Z) or epoch seconds",
                          param=param, code="invalid_value") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def time_range(start: str | None, end: str | None, now: datetime | None = None) -> tuple[datetime, datetime]:
    end_at = parse_time(end, "end") if end else (now or datetime.now(UTC))
    start_at = parse_time(start, "start") if start else end_at - DEFAULT_WINDOW
    if start_at >= end_at:
        raise bad_request("'start' must be before 'end'", param="start", code="invalid_value")
    return start_at, end_at


def check_group(group_by: str | None) -> str:
    group = group_by or "model"
    if group not in GROUPS:
        raise bad_request(f"'group_by' must be one of {', '.join(GROUPS)}", param="group_by", code="invalid_value")
    return group


def check_bucket(bucket: str | None) -> str | None:
    if bucket is not None and bucket not in _TIME_GROUPS:
        raise bad_request("'bucket' must be hour or day", param="bucket", code="invalid_value")
    return bucket


async def build_report(store: Store, start: datetime, end: datetime, group_by: str,
                       key_name: str | None = None, filters: dict[str, str] | None = None,
                       bucket: str | None = None) -> dict[str, Any]:
    rows = await store.report(start, end, group_by, key_name, filters, bucket)
    data = [asdict(r) for r in rows]
    if bucket:
        for row in data:
            row["bucket"], _, group = (row["group"] or "").partition("|")
            row["group"] = group or None
        data.sort(key=lambda r: (r["bucket"], -r["requests"], r["group"] or ""))
    elif group_by in _TIME_GROUPS:
        data.sort(key=lambda r: r["group"] or "")
    else:
        data.sort(key=lambda r: (-r["requests"], r["group"] or ""))
    total = total_of(await store.report(start, end, None, key_name, filters))
    return {
        "object": "usage.report",
        "start": iso(start),
        "end": iso(end),
        "group_by": group_by,
        "bucket": bucket,
        "key": key_name,
        "filters": filters or {},
        "data": data,
        "total": _total(total),
    }


def to_csv(report: dict[str, Any]) -> bytes:
    """The report's data rows as CSV, one header line, the columns of the JSON rows."""
    out = io.StringIO()
    fields = (["bucket"] if report["bucket"] else []) + ["group"] + [
        f for f in report["total"] if f != "group"]
    writer = csv.DictWriter(out, fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in report["data"]:
        writer.writerow({k: _csv_cell(v) for k, v in row.items()})
    return out.getvalue().encode()


def _csv_cell(value: Any) -> Any:
    """Text a spreadsheet would run as a formula is quoted with a leading apostrophe."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return value


def _total(row: ReportRow) -> dict[str, Any]:
    out = asdict(row)
    del out["group"]
    return out


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def viewer(rt: Runtime, authorization: str | None) -> tuple[bool, str | None]:
    """(sees everything, key name to filter on). Raises a 401 GatewayError."""
    admin = rt.config.server.admin_key
    scheme, _, secret = (authorization or "").partition(" ")
    secret = secret.strip()
    if admin and scheme.lower() == "bearer" and secret and hmac.compare_digest(_digest(secret), _digest(admin)):
        return True, None
    if not rt.config.server.require_auth:
        if admin:  # with an admin key configured, the ledger is not public even on an open gateway
            raise GatewayError(401, "The usage API needs the admin key when require_auth is false.",
                               code="invalid_api_key")
        return True, None
    key = rt.authenticate(authorization)
    assert key is not None
    return False, key.name


async def usage(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    try:
        sees_all, key_name = viewer(rt, presented_key(request.headers))  # Authorization, x-api-key or api-key
        params = request.query_params
        start, end = time_range(params.get("start"), params.get("end"))
        group_by = check_group(params.get("group_by"))
        bucket = check_bucket(params.get("bucket"))
        filters = {name: params[name] for name in FILTER_COLUMNS if params.get(name) and (sees_all or name != "key")}
        fmt = params.get("format") or "json"
        if fmt not in ("json", "csv"):
            raise bad_request("'format' must be json or csv", param="format", code="invalid_value")
        ledger = getattr(request.app.state, "ledger", None)
        if ledger is None:
            raise GatewayError(503, "Usage accounting is not running.", "service_unavailable_error",
                               "usage_unavailable")
        try:
            report = await build_report(ledger.store, start, end, group_by, None if sees_all else key_name,
                                        filters, bucket)
        except GatewayError:
            raise
        except Exception as exc:
            raise GatewayError(503, f"The usage database is unavailable ({type(exc).__name__}).",
                               "service_unavailable_error", "usage_unavailable") from None
    except GatewayError as e:
        return e.response()
    if fmt == "csv":
        return Response(to_csv(report), media_type="text/csv; charset=utf-8",
                        headers={"content-disposition": 'attachment; filename="usage.csv"'})
    return Response(orjson.dumps(report), media_type="application/json")


# --- the `gateway usage` command -----------------------------------------------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _instant(value: str, param: str, now: datetime) -> datetime:
    """A duration back from now ("30m", "24h", "7d", "2w") or an absolute time."""
    text = value.strip().lower()
    if len(text) > 1 and text[-1] in _UNITS and text[:-1].replace(".", "", 1).isdigit():
        return now - timedelta(seconds=float(text[:-1]) * _UNITS[text[-1]])
    return parse_time(value, param)


def since_range(since: str, until: str | None = None, now: datetime | None = None) -> tuple[datetime, datetime]:
    now = now or datetime.now(UTC)
    start = _instant(since, "since", now)
    end = _instant(until, "until", now) if until else now
    if start >= end:
        raise bad_request("--since must be before --until", param="since", code="invalid_value")
    return start, end


_COLUMNS = (  # header, report field, format
    ("REQUESTS", "requests", "{:d}"),
    ("ERRORS", "errors", "{:d}"),
    ("PROMPT_TOK", "prompt_tokens", "{:d}"),
    ("COMPLETION_TOK", "completion_tokens", "{:d}"),
    ("CACHED_TOK", "cached_tokens", "{:d}"),
    ("COST_USD", "cost_usd", "{:.6f}"),
    ("AVG_MS", "avg_latency_ms", "{:.1f}"),
    ("P95_MS", "p95_latency_ms", "{:.1f}"),
    ("CACHE_HIT", "cache_hit_rate", "{:.1%}"),
    ("SAVED_USD", "cost_saved_usd", "{:.6f}"),
)


def format_table(report: dict[str, Any]) -> str:
    """The report as an aligned text table with a TOTAL line; a null value prints as '-'."""
    rows = [[str(r["group"]) if r["group"] is not None else "-"] + _cells(r) for r in report["data"]]
    rows.append(["TOTAL"] + _cells(report["total"]))
    header = [report["group_by"].upper()] + [c[0] for c in _COLUMNS]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join([cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)])

    title = f"usage {report['start']} .. {report['end']} by {report['group_by']}"
    return "\n".join([title, line(header), *[line(r) for r in rows]])


def _cells(row: dict[str, Any]) -> list[str]:
    return ["-" if row[field] is None else fmt.format(row[field]) for _, field, fmt in _COLUMNS]
