"""The usage ledger on Postgres through asyncpg: one statement per batch."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import datetime
from typing import Any

import orjson

from proxy.records import UsageRecord
from proxy.storage.base import (
    COLUMNS,
    CONNECT_TIMEOUT_S,
    FILTER_COLUMNS,
    MIGRATIONS,
    ReportRow,
    RowRejected,
    Store,
    not_newer,
)

# --- Postgres ------------------------------------------------------------------------------------------------------

_PG_TYPES = {
    "request_id": "text", "created_at": "timestamptz", "key_name": "text", "model": "text", "endpoint": "text",
    "stream": "boolean", "provider": "text", "upstream_model": "text", "status": "integer",
    "prompt_tokens": "bigint", "completion_tokens": "bigint", "cached_tokens": "bigint", "reasoning_tokens": "bigint",
    "usage_estimated": "boolean", "cost_usd": "double precision", "latency_ms": "double precision",
    "ttft_ms": "double precision", "attempts": "integer", "cache_hit": "boolean", "error_type": "text",
    "cost_saved_usd": "double precision", "guardrail_actions": "text", "end_user": "text",
}
_PG_CASTS = {"created_at": "to_timestamp(created_at)", "guardrail_actions": "guardrail_actions::jsonb"}

_PG_GROUPS = {
    "model": "model",
    "key": "key_name",
    "provider": "provider",
    "end_user": "end_user",
    "day": "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    "hour": "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:00:00\"Z\"')",
    None: "'total'",
}

_PG_REPORT = """
SELECT {group} AS grp, count(*), count(error_type), sum(prompt_tokens)::bigint, sum(completion_tokens)::bigint,
       sum(cached_tokens)::bigint, sum(reasoning_tokens)::bigint, sum(cost_usd),
       count(*) FILTER (WHERE cost_usd IS NULL AND prompt_tokens + completion_tokens > 0),
       avg(latency_ms), percentile_disc(0.95) WITHIN GROUP (ORDER BY latency_ms), avg(cache_hit::int),
       sum(cost_saved_usd), percentile_disc(0.5) WITHIN GROUP (ORDER BY latency_ms)
FROM usage_log WHERE created_at >= $1 AND created_at < $2 {key_filter}
GROUP BY 1
"""

# Sqlstate classes that blame the rows (data exception, integrity violation); anything else
# (connection loss, shutdown, a missing table) is the database's problem and worth retrying.
_PG_ROW_CLASSES = ("22", "23")
_MIGRATION_LOCK = 0x6761746577617901  # pg_advisory_xact_lock key: one migrator at a time across workers


class PostgresStore(Store):
    def __init__(self, url: str) -> None:
        self.url = url
        self._pool: Any = None
        # One statement per batch, its rows as one JSON array that orjson writes from the records in C
        # and Postgres unpacks by field name: cheaper for the gateway than typed arrays that asyncpg
        # encodes element by element.
        spec = ", ".join(f"{c} {'double precision' if c == 'created_at' else _PG_TYPES[c]}" for c in COLUMNS)
        values = ", ".join(_PG_CASTS.get(c, c) for c in COLUMNS)
        self._insert = (f"INSERT INTO usage_log ({', '.join(COLUMNS)}) SELECT {values} "
                        f"FROM json_to_recordset($1::json) AS r({spec}) ON CONFLICT (request_id) DO NOTHING")

    async def open(self) -> None:
        if self._pool is None:
            import asyncpg

            # min_size=0: creating the pool does not connect, so a database that is down at start
            # does not stop the gateway; every acquire (re)connects as needed.
            self._pool = await asyncpg.create_pool(self.url, min_size=0, max_size=4, timeout=CONNECT_TIMEOUT_S,
                                                   command_timeout=60, max_inactive_connection_lifetime=60)

    async def _conn(self) -> Any:
        await self.open()
        return self._pool.acquire(timeout=CONNECT_TIMEOUT_S * 2)

    async def migrate(self) -> list[int]:
        async with await self._conn() as conn:
            return await migrate_postgres(conn)

    async def write(self, rows: list[UsageRecord]) -> int:
        try:
            data = orjson.dumps(rows)  # a dataclass becomes an object with its field names
            if b"\\u0000" in data:  # Postgres text cannot hold NUL: replaced, so the row is kept, not refused
                data = orjson.dumps([without_nul(r) for r in rows])
        except orjson.JSONEncodeError as exc:  # a value JSON cannot carry: the ledger sets the row aside
            raise RowRejected(f"usage row not encodable as JSON: {exc}") from None
        payload = data.decode()
        async with await self._conn() as conn:
            status = await conn.execute(self._insert, payload)
        return int(status.rsplit(" ", 1)[-1])  # "INSERT 0 <n>"

    async def prune(self, before: datetime) -> int:
        async with await self._conn() as conn:
            status = await conn.execute("DELETE FROM usage_log WHERE created_at < $1", before)
        return int(status.rsplit(" ", 1)[-1])

    async def report(self, start: datetime, end: datetime, group_by: str | None,
                     key_name: str | None = None, filters: dict[str, str] | None = None,
                     bucket: str | None = None) -> list[ReportRow]:
        wanted = {**(filters or {}), **({"key": key_name} if key_name else {})}
        group = _PG_GROUPS[group_by]
        if bucket:
            group = f"{_PG_GROUPS[bucket]} || '|' || COALESCE({group}, '')"
        where = "".join(f" AND {FILTER_COLUMNS[name]} = ${i + 3}" for i, name in enumerate(wanted))
        sql = _PG_REPORT.format(group=group, key_filter=where)
        params: list[Any] = [start, end, *wanted.values()]
        async with await self._conn() as conn:
            rows = await conn.fetch(sql, *params)
        return [ReportRow.from_tuple(r) for r in rows]

    async def fetch_all(self) -> list[dict[str, Any]]:
        async with await self._conn() as conn:
            rows = await conn.fetch(f"SELECT {', '.join(COLUMNS)} FROM usage_log")
        return [dict(r) for r in rows]

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), timeout=5)
            except (TimeoutError, OSError):
                pool.terminate()

    def is_row_error(self, exc: BaseException) -> bool:
        if isinstance(exc, RowRejected):
            return True
        # asyncpg's own encoder errors (a value of the wrong type) carry sqlstate 22000 as well.
        sqlstate = getattr(exc, "sqlstate", None)
        return isinstance(sqlstate, str) and sqlstate.startswith(_PG_ROW_CLASSES)


def without_nul(row: UsageRecord) -> UsageRecord:
    """The row with every NUL in its text replaced by U+FFFD (what a client may put in a model name)."""
    changed = {f.name: v.replace("\x00", "\ufffd") for f in dataclasses.fields(row)
               if isinstance(v := getattr(row, f.name), str) and "\x00" in v}
    return dataclasses.replace(row, **changed) if changed else row


async def migrate_postgres(conn: Any) -> list[int]:
    """Bring a Postgres database to the latest schema, in one transaction under an advisory lock, so
    replicas starting together apply each migration once."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS gateway_migrations "
                           "(version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL)")
        current = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM gateway_migrations")
        not_newer(current)
        applied = []
        for m in MIGRATIONS:
            if m.version > current:
                for statement in m.postgres:
                    await conn.execute(statement)
                await conn.execute("INSERT INTO gateway_migrations VALUES ($1, $2, now())", m.version, m.name)
                applied.append(m.version)
        return applied
