"""The usage ledger on SQLite: one dedicated thread holds the connection, in WAL mode."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

from proxy.records import UsageRecord
from proxy.storage.base import (
    BOOL_COLUMNS,
    COLUMNS,
    FILTER_COLUMNS,
    MIGRATIONS,
    ReportRow,
    StorageError,
    Store,
    iso,
    not_newer,
    to_datetime,
)

T = TypeVar("T")

def sqlite_path(url: str) -> str:
    """``sqlite:///rel.db`` is relative to the working directory, ``sqlite:////abs.db`` absolute."""
    path = url.removeprefix("sqlite://")
    if not path.startswith("/"):
        raise StorageError(f"bad database_url {url!r}: expected sqlite:///path/to/file.db")
    path = path[1:]
    path = path.split("?", 1)[0]
    if not path:
        raise StorageError(f"bad database_url {url!r}: no file path")
    return path


_SQLITE_GROUPS = {
    "model": "model",
    "key": "key_name",
    "provider": "provider",
    "end_user": "end_user",
    "day": "substr(created_at, 1, 10)",
    "hour": "substr(created_at, 1, 13) || ':00:00Z'",
    None: "'total'",
}

_SQLITE_REPORT = """
WITH base AS (
    SELECT {group} AS grp, error_type, prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens,
           cost_usd, latency_ms, cache_hit, cost_saved_usd
    FROM usage_log WHERE created_at >= ? AND created_at < ? {key_filter}
),
ranked AS (
    SELECT grp, latency_ms, ROW_NUMBER() OVER (PARTITION BY grp ORDER BY latency_ms) AS rn,
           COUNT(*) OVER (PARTITION BY grp) AS n
    FROM base
),
p95 AS (SELECT grp, MIN(latency_ms) AS p95 FROM ranked WHERE rn * 100 >= n * 95 GROUP BY grp),
p50 AS (SELECT grp, MIN(latency_ms) AS p50 FROM ranked WHERE rn * 100 >= n * 50 GROUP BY grp)
SELECT b.grp, COUNT(*), COUNT(b.error_type), SUM(b.prompt_tokens), SUM(b.completion_tokens),
       SUM(b.cached_tokens), SUM(b.reasoning_tokens), SUM(b.cost_usd),
       SUM(b.cost_usd IS NULL AND b.prompt_tokens + b.completion_tokens > 0),
       AVG(b.latency_ms), MAX(p.p95), AVG(b.cache_hit), SUM(b.cost_saved_usd), MAX(m.p50)
FROM base b LEFT JOIN p95 p ON p.grp IS b.grp LEFT JOIN p50 m ON m.grp IS b.grp
GROUP BY b.grp
"""


def migrate_sqlite(conn: sqlite3.Connection) -> list[int]:
    """Bring a SQLite database to the latest schema; the caller holds a write transaction."""
    conn.execute("CREATE TABLE IF NOT EXISTS gateway_migrations "
                 "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)")
    current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM gateway_migrations").fetchone()[0]
    not_newer(current)
    applied = []
    for m in MIGRATIONS:
        if m.version > current:
            for statement in m.sqlite:
                conn.execute(statement)
            conn.execute("INSERT INTO gateway_migrations VALUES (?, ?, ?)",
                         (m.version, m.name, iso(datetime.now(UTC))))
            applied.append(m.version)
    return applied


class SQLiteStore(Store):
    def __init__(self, url: str) -> None:
        self.url = url
        self.path = sqlite_path(url)
        self._conn: sqlite3.Connection | None = None
        # One thread owns the connection: sqlite3 objects must stay on the thread that made them.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-sqlite")
        insert_cols = ", ".join(COLUMNS)
        marks = ", ".join("?" for _ in COLUMNS)
        self._insert = f"INSERT INTO usage_log ({insert_cols}) VALUES ({marks}) ON CONFLICT (request_id) DO NOTHING"

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)  # explicit BEGIN/COMMIT
            try:
                if self.path != ":memory:":
                    conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA busy_timeout=5000")
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _guarded(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn in a transaction; a broken connection is dropped so the next call reopens it."""
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result
        except sqlite3.OperationalError:
            if self.path != ":memory:":
                self._drop()
            raise

    async def open(self) -> None:
        await self._run(self._connect)

    async def migrate(self) -> list[int]:
        return await self._run(self._guarded, migrate_sqlite)

    async def write(self, rows: list[UsageRecord]) -> int:
        return await self._run(self._guarded, lambda conn: self._write(conn, rows))

    def _write(self, conn: sqlite3.Connection, rows: list[UsageRecord]) -> int:
        before = conn.total_changes
        conn.executemany(self._insert, [_sqlite_row(r) for r in rows])
        return conn.total_changes - before

    async def prune(self, before: datetime) -> int:
        cutoff = iso(before)
        return await self._run(
            self._guarded, lambda conn: conn.execute("DELETE FROM usage_log WHERE created_at < ?", (cutoff,)).rowcount
        )

    async def report(self, start: datetime, end: datetime, group_by: str | None,
                     key_name: str | None = None, filters: dict[str, str] | None = None,
                     bucket: str | None = None) -> list[ReportRow]:
        wanted = {**(filters or {}), **({"key": key_name} if key_name else {})}
        group = _SQLITE_GROUPS[group_by]
        if bucket:
            group = f"{_SQLITE_GROUPS[bucket]} || '|' || COALESCE({group}, '')"
        where = "".join(f" AND {FILTER_COLUMNS[name]} = ?" for name in wanted)
        sql = _SQLITE_REPORT.format(group=group, key_filter=where)
        params: list[Any] = [iso(start), iso(end), *wanted.values()]

        def run() -> list[ReportRow]:
            conn = self._connect()
            return [ReportRow.from_tuple(r) for r in conn.execute(sql, params).fetchall()]

        return await self._run(run)

    async def fetch_all(self) -> list[dict[str, Any]]:
        """Every row as a dict (tests and debugging)."""

        def run() -> list[dict[str, Any]]:
            cur = self._connect().execute(f"SELECT {', '.join(COLUMNS)} FROM usage_log")
            return [dict(zip(COLUMNS, r, strict=True)) for r in cur.fetchall()]

        return await self._run(run)

    async def close(self) -> None:
        try:
            await self._run(self._drop)
        finally:
            self._thread.shutdown(wait=True)

    def is_row_error(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError | sqlite3.ProgrammingError)


def _sqlite_row(r: UsageRecord) -> list[Any]:
    row = [getattr(r, c) for c in COLUMNS]
    row[1] = iso(to_datetime(r.created_at))
    return [int(v) if c in BOOL_COLUMNS else v for c, v in zip(COLUMNS, row, strict=True)]
