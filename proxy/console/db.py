"""The console's tables (audit_log, sessions, session_messages, session_images) in the ledger's database.

They are created here, with ``IF NOT EXISTS``, rather than as steps of the usage_log migrations
(proxy.storage.base): they share nothing with usage_log, and a table of their own can be added without
renumbering anyone's migration. SQLite runs on one worker thread (its connection must stay on the
thread that made it); Postgres through a small asyncpg pool. Queries use ``?`` placeholders for both.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from proxy.storage import sqlite_path

T = TypeVar("T")

_SQLITE = (
    """CREATE TABLE IF NOT EXISTS audit_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at TEXT NOT NULL,
        principal TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT,
        change TEXT NOT NULL,
        client TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS audit_log_created_at ON audit_log (created_at)",
    # Append-only: the database itself refuses to change or delete a recorded action.
    """CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
       BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
       BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END""",
    """CREATE TABLE IF NOT EXISTS sessions (
        id TEXT PRIMARY KEY,
        key_name TEXT NOT NULL,
        title TEXT,
        metadata TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS sessions_key_updated ON sessions (key_name, updated_at)",
    """CREATE TABLE IF NOT EXISTS session_messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL,
        created_at TEXT NOT NULL,
        role TEXT NOT NULL,
        message TEXT NOT NULL,
        meta TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS session_messages_session ON session_messages (session_id, id)",
    """CREATE TABLE IF NOT EXISTS session_images (
        sha256 TEXT PRIMARY KEY,
        media_type TEXT NOT NULL,
        data TEXT NOT NULL,
        created_at TEXT NOT NULL
    )""",
)

_POSTGRES = (
    """CREATE TABLE IF NOT EXISTS audit_log (
        id bigserial PRIMARY KEY,
        created_at text NOT NULL,
        principal text NOT NULL,
        action text NOT NULL,
        target text,
        change text NOT NULL,
        client text
    )""",
    "CREATE INDEX IF NOT EXISTS audit_log_created_at ON audit_log (created_at)",
    """CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS
       $$ BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$""",
    "DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log",
    """CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
       FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()""",
    """CREATE TABLE IF NOT EXISTS sessions (
        id text PRIMARY KEY,
        key_name text NOT NULL,
        title text,
        metadata text NOT NULL,
        created_at text NOT NULL,
        updated_at text NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS sessions_key_updated ON sessions (key_name, updated_at)",
    """CREATE TABLE IF NOT EXISTS session_messages (
        id bigserial PRIMARY KEY,
        session_id text NOT NULL,
        created_at text NOT NULL,
        role text NOT NULL,
        message text NOT NULL,
        meta text
    )""",
    "CREATE INDEX IF NOT EXISTS session_messages_session ON session_messages (session_id, id)",
    """CREATE TABLE IF NOT EXISTS session_images (
        sha256 text PRIMARY KEY,
        media_type text NOT NULL,
        data text NOT NULL,
        created_at text NOT NULL
    )""",
)
_PG_LOCK = 0x6761746577617902  # one creator at a time across replicas starting together


class ConsoleDB:
    """``run(query, *args)`` for statements, ``fetch`` for rows, ``batch`` for several in one transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_pg = url.startswith(("postgresql://", "postgres://"))
        self._pool: Any = None
        self._lock = asyncio.Lock()
        self._sqlite: sqlite3.Connection | None = None
        self._thread = None if self.is_pg else ThreadPoolExecutor(1, thread_name_prefix="console-sqlite")

    async def _pg(self) -> Any:
        async with self._lock:
            if self._pool is None:
                import asyncpg

                pool = await asyncpg.create_pool(self.url, min_size=0, max_size=3, timeout=5)
                try:
                    async with pool.acquire() as conn, conn.transaction():
                        await conn.execute("SELECT pg_advisory_xact_lock($1)", _PG_LOCK)
                        for statement in _POSTGRES:
                            await conn.execute(statement)
                except BaseException:
                    await pool.close()
                    raise
                self._pool = pool
        return self._pool

    def _conn(self) -> sqlite3.Connection:
        if self._sqlite is None:
            conn = sqlite3.connect(sqlite_path(self.url), timeout=10, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA busy_timeout=5000")
                conn.execute("BEGIN IMMEDIATE")
                for statement in _SQLITE:
                    conn.execute(statement)
                conn.execute("COMMIT")
            except BaseException:
                conn.close()
                raise
            self._sqlite = conn
        return self._sqlite

    async def _on_thread(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result

        return await asyncio.get_running_loop().run_in_executor(self._thread, call)

    async def fetch(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        if self.is_pg:
            async with (await self._pg()).acquire() as conn:
                return [tuple(r) for r in await conn.fetch(to_pg(query), *args)]
        return await self._on_thread(lambda conn: conn.execute(query, args).fetchall())

    async def run(self, query: str, *args: Any) -> int:
        """Rows changed."""
        return (await self.batch([(query, args)]))[0]

    async def batch(self, statements: list[tuple[str, tuple[Any, ...]]]) -> list[int]:
        """Statements in one transaction; rows changed by each."""
        if self.is_pg:
            async with (await self._pg()).acquire() as conn, conn.transaction():
                out = []
                for query, args in statements:
                    status = await conn.execute(to_pg(query), *args)
                    tail = status.rsplit(" ", 1)[-1]
                    out.append(int(tail) if tail.isdigit() else 0)
                return out
        return await self._on_thread(lambda conn: [conn.execute(q, a).rowcount for q, a in statements])

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
        if self._thread is not None:
            if self._sqlite is not None:
                conn, self._sqlite = self._sqlite, None
                await asyncio.get_running_loop().run_in_executor(self._thread, conn.close)
            self._thread.shutdown(wait=False)


def to_pg(query: str) -> str:
    """``?`` placeholders as Postgres' ``$1, $2, ...``."""
    parts = query.split("?")
    return "".join(p + (f"${i + 1}" if i < len(parts) - 1 else "") for i, p in enumerate(parts))
