"""The `usage_log` table: SQLite and Postgres writers, versioned migrations and the usage report.

Both stores insert with ``ON CONFLICT (request_id) DO NOTHING``, so writing the same row twice (a
retried batch, a replayed spill file) is harmless. SQLite runs on one dedicated thread (the
connection never leaves it) in WAL mode; Postgres goes through asyncpg, one statement per batch.

SQLite keeps ``created_at`` as fixed-width ISO-8601 UTC text (``2024-05-01T12:00:00.000000Z``), which
sorts chronologically, so range filters and day/hour grouping work on the text itself.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson

from proxy.records import UsageRecord

T = TypeVar("T")

# The table's columns, in the order. A field added to UsageRecord reaches the database only
# through a new migration that adds its column here.
COLUMNS: tuple[str, ...] = (
    "request_id", "created_at", "key_name", "model", "provider", "upstream_model", "endpoint", "stream", "status",
    "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "usage_estimated", "cost_usd",
    "latency_ms", "ttft_ms", "attempts", "cache_hit", "error_type",
)
_BOOLS = frozenset({"stream", "usage_estimated", "cache_hit"})
GROUPS = ("model", "key", "provider", "day", "hour")
CONNECT_TIMEOUT_S = 5.0


class RowRejected(Exception):
    """A row this gateway cannot send to the database as it is."""


class StorageError(Exception):
    """A store problem worth a clear one-line message (bad URL, schema newer than this build)."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


_API_KEYS = """CREATE TABLE IF NOT EXISTS api_keys (
    name TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    key_prefix TEXT NOT NULL,
    settings TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    revoked_at TEXT
)"""

# Append only: a released migration is never edited, the next change is a new version.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "create usage_log",
        sqlite=(
            """CREATE TABLE usage_log (
                request_id TEXT PRIMARY KEY,
                created_at TEXT NOT NULL,
                key_name TEXT,
                model TEXT NOT NULL,
                provider TEXT,
                upstream_model TEXT,
                endpoint TEXT NOT NULL,
                stream INTEGER NOT NULL,
                status INTEGER NOT NULL,
                prompt_tokens INTEGER NOT NULL,
                completion_tokens INTEGER NOT NULL,
                cached_tokens INTEGER NOT NULL,
                reasoning_tokens INTEGER NOT NULL,
                usage_estimated INTEGER NOT NULL,
                cost_usd REAL,
                latency_ms REAL NOT NULL,
                ttft_ms REAL,
                attempts INTEGER NOT NULL,
                cache_hit INTEGER NOT NULL,
                error_type TEXT
            )""",
            "CREATE INDEX usage_log_created_at ON usage_log (created_at)",
            "CREATE INDEX usage_log_key_created_at ON usage_log (key_name, created_at)",
        ),
        postgres=(
            """CREATE TABLE usage_log (
                request_id text PRIMARY KEY,
                created_at timestamptz NOT NULL,
                key_name text,
                model text NOT NULL,
                provider text,
                upstream_model text,
                endpoint text NOT NULL,
                stream boolean NOT NULL,
                status integer NOT NULL,
                prompt_tokens bigint NOT NULL,
                completion_tokens bigint NOT NULL,
                cached_tokens bigint NOT NULL,
                reasoning_tokens bigint NOT NULL,
                usage_estimated boolean NOT NULL,
                cost_usd double precision,
                latency_ms double precision NOT NULL,
                ttft_ms double precision,
                attempts integer NOT NULL,
                cache_hit boolean NOT NULL,
                error_type text
            )""",
            "CREATE INDEX usage_log_created_at ON usage_log (created_at)",
            "CREATE INDEX usage_log_key_created_at ON usage_log (key_name, created_at)",
        ),
    ),
    # Gateway keys managed at run time (proxy.keystore). IF NOT EXISTS: gateways before this
    # migration created the table themselves.
    Migration(2, "create api_keys", sqlite=(_API_KEYS,), postgres=(_API_KEYS,)),
)
LATEST = MIGRATIONS[-1].version


def iso(ts: datetime) -> str:
    """The fixed-width UTC text form used for SQLite rows and for API output."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def to_datetime(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


@dataclass(slots=True)
class ReportRow:
    group: str | None
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float | None = None
    unpriced_requests: int = 0  # rows with tokens but no price: their cost is missing from cost_usd
    avg_latency_ms: float = 0.0
    p95_latency_ms: float = 0.0
    cache_hit_rate: float = 0.0

    @classmethod
    def from_tuple(cls, row: tuple[Any, ...] | Any) -> ReportRow:
        (group, requests, errors, prompt, completion, cached, reasoning, cost, unpriced, avg, p95, hits) = tuple(row)
        return cls(
            group=group, requests=int(requests), errors=int(errors or 0), prompt_tokens=int(prompt or 0),
            completion_tokens=int(completion or 0), cached_tokens=int(cached or 0),
            reasoning_tokens=int(reasoning or 0), cost_usd=None if cost is None else round(float(cost), 10),
            unpriced_requests=int(unpriced or 0), avg_latency_ms=round(float(avg or 0), 3),
            p95_latency_ms=round(float(p95 or 0), 3), cache_hit_rate=round(float(hits or 0), 6),
        )


class Store:
    """What the ledger, the usage API and the CLI need from a database."""

    url: str

    async def open(self) -> None:
        raise NotImplementedError

    async def migrate(self) -> list[int]:
        """Apply pending migrations; return the versions applied now."""
        raise NotImplementedError

    async def write(self, rows: list[UsageRecord]) -> int:
        """Insert rows in one transaction; return how many were new (the others were already there)."""
        raise NotImplementedError

    async def prune(self, before: datetime) -> int:
        raise NotImplementedError

    async def report(self, start: datetime, end: datetime, group_by: str | None,
                     key_name: str | None = None) -> list[ReportRow]:
        """Totals per group over [start, end); group_by None = one total row. key_name filters to one key."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def is_row_error(self, exc: BaseException) -> bool:
        """True when the database rejected the rows themselves (bad data), not when it was unreachable."""
        raise NotImplementedError


def open_store(url: str) -> Store:
    if url.startswith("sqlite://"):
        return SQLiteStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    raise StorageError(f"unsupported database_url {redact(url)!r}: expected sqlite:/// or postgresql://")


def redact(url: str) -> str:
    """The URL without its password, for log lines and errors."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def total_of(rows: list[ReportRow]) -> ReportRow:
    """Zero totals when the range has no rows (a grouped query returns no group at all)."""
    return rows[0] if rows else ReportRow(group=None)


# --- SQLite --------------------------------------------------------------------------------------------------------


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
    "day": "substr(created_at, 1, 10)",
    "hour": "substr(created_at, 1, 13) || ':00:00Z'",
    None: "'total'",
}

_SQLITE_REPORT = """
WITH base AS (
    SELECT {group} AS grp, error_type, prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens,
           cost_usd, latency_ms, cache_hit
    FROM usage_log WHERE created_at >= ? AND created_at < ? {key_filter}
),
ranked AS (
    SELECT grp, latency_ms, ROW_NUMBER() OVER (PARTITION BY grp ORDER BY latency_ms) AS rn,
           COUNT(*) OVER (PARTITION BY grp) AS n
    FROM base
),
p95 AS (SELECT grp, MIN(latency_ms) AS p95 FROM ranked WHERE rn * 100 >= n * 95 GROUP BY grp)
SELECT b.grp, COUNT(*), COUNT(b.error_type), SUM(b.prompt_tokens), SUM(b.completion_tokens),
       SUM(b.cached_tokens), SUM(b.reasoning_tokens), SUM(b.cost_usd),
       SUM(b.cost_usd IS NULL AND b.prompt_tokens + b.completion_tokens > 0),
       AVG(b.latency_ms), MAX(p.p95), AVG(b.cache_hit)
FROM base b LEFT JOIN p95 p ON p.grp IS b.grp
GROUP BY b.grp
"""


def _not_newer(current: int) -> None:
    if current > LATEST:
        raise StorageError(f"the usage database is at schema version {current}, newer than this gateway "
                           f"({LATEST}); upgrade the gateway")


def migrate_sqlite(conn: sqlite3.Connection) -> list[int]:
    """Bring a SQLite database to the latest schema; the caller holds a write transaction."""
    conn.execute("CREATE TABLE IF NOT EXISTS gateway_migrations "
                 "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)")
    current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM gateway_migrations").fetchone()[0]
    _not_newer(current)
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
                     key_name: str | None = None) -> list[ReportRow]:
        sql = _SQLITE_REPORT.format(group=_SQLITE_GROUPS[group_by], key_filter="AND key_name = ?" if key_name else "")
        params: list[Any] = [iso(start), iso(end)] + ([key_name] if key_name else [])

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
    return [int(v) if c in _BOOLS else v for c, v in zip(COLUMNS, row, strict=True)]


# --- Postgres ------------------------------------------------------------------------------------------------------

_PG_TYPES = {
    "request_id": "text", "created_at": "timestamptz", "key_name": "text", "model": "text", "endpoint": "text",
    "stream": "boolean", "provider": "text", "upstream_model": "text", "status": "integer",
    "prompt_tokens": "bigint", "completion_tokens": "bigint", "cached_tokens": "bigint", "reasoning_tokens": "bigint",
    "usage_estimated": "boolean", "cost_usd": "double precision", "latency_ms": "double precision",
    "ttft_ms": "double precision", "attempts": "integer", "cache_hit": "boolean", "error_type": "text",
}

_PG_GROUPS = {
    "model": "model",
    "key": "key_name",
    "provider": "provider",
    "day": "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    "hour": "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:00:00\"Z\"')",
    None: "'total'",
}

_PG_REPORT = """
SELECT {group} AS grp, count(*), count(error_type), sum(prompt_tokens)::bigint, sum(completion_tokens)::bigint,
       sum(cached_tokens)::bigint, sum(reasoning_tokens)::bigint, sum(cost_usd),
       count(*) FILTER (WHERE cost_usd IS NULL AND prompt_tokens + completion_tokens > 0),
       avg(latency_ms), percentile_disc(0.95) WITHIN GROUP (ORDER BY latency_ms), avg(cache_hit::int)
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
        values = ", ".join("to_timestamp(created_at)" if c == "created_at" else c for c in COLUMNS)
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
            payload = orjson.dumps(rows).decode()  # a dataclass becomes an object with its field names
        except orjson.JSONEncodeError as exc:  # a value JSON cannot carry: the ledger sets the row aside
            raise RowRejected(f"usage row not encodable as JSON: {exc}") from None
        async with await self._conn() as conn:
            status = await conn.execute(self._insert, payload)
        return int(status.rsplit(" ", 1)[-1])  # "INSERT 0 <n>"

    async def prune(self, before: datetime) -> int:
        async with await self._conn() as conn:
            status = await conn.execute("DELETE FROM usage_log WHERE created_at < $1", before)
        return int(status.rsplit(" ", 1)[-1])

    async def report(self, start: datetime, end: datetime, group_by: str | None,
                     key_name: str | None = None) -> list[ReportRow]:
        sql = _PG_REPORT.format(group=_PG_GROUPS[group_by], key_filter="AND key_name = $3" if key_name else "")
        params: list[Any] = [start, end] + ([key_name] if key_name else [])
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


async def migrate_postgres(conn: Any) -> list[int]:
    """Bring a Postgres database to the latest schema, in one transaction under an advisory lock, so
    replicas starting together apply each migration once."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS gateway_migrations "
                           "(version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL)")
        current = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM gateway_migrations")
        _not_newer(current)
        applied = []
        for m in MIGRATIONS:
            if m.version > current:
                for statement in m.postgres:
                    await conn.execute(statement)
                await conn.execute("INSERT INTO gateway_migrations VALUES ($1, $2, now())", m.version, m.name)
                applied.append(m.version)
        return applied
