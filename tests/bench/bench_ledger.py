"""The governed-mode ledger check: one `usage_log` row per request served, read from Postgres."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit, urlunsplit


def _db_parts(url: str) -> tuple[str, str]:
    """(url of the server's maintenance database, name of the bench database)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/postgres")), parts.path.lstrip("/")


async def _prepare_db(url: str) -> str:
    import asyncpg

    admin_url, name = _db_parts(url)
    conn = await asyncpg.connect(admin_url, timeout=5)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    table = await _usage_table(url)
    if table:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            await conn.execute(f"TRUNCATE {table}")
        finally:
            await conn.close()
    return name


async def _usage_table(url: str) -> str | None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=5)
    try:
        row = await conn.fetchrow("SELECT table_schema, table_name FROM information_schema.tables "
                                  "WHERE table_name = 'usage_log' ORDER BY table_schema = 'public' DESC LIMIT 1")
        return f'"{row[0]}"."{row[1]}"' if row else None
    finally:
        await conn.close()


async def _count_rows(url: str) -> tuple[int, int, int] | None:
    """(rows, distinct request ids, rows of requests that reached an upstream: attempts > 0)."""
    import asyncpg

    table = await _usage_table(url)
    if table is None:
        return None
    conn = await asyncpg.connect(url, timeout=5)
    try:
        row = await conn.fetchrow(f"SELECT count(*), count(DISTINCT request_id), "
                                  f"count(*) FILTER (WHERE attempts > 0) FROM {table}")
        return int(row[0]), int(row[1]), int(row[2])
    finally:
        await conn.close()


def prepare_db(url: str) -> str:
    """Create the bench database if missing and empty its usage_log; returns the database name."""
    return asyncio.run(_prepare_db(url))


def count_rows(url: str) -> tuple[int, int, int] | None:
    return asyncio.run(_count_rows(url))


def settle_rows(url: str, expected: int, cap_s: float = 20) -> tuple[int, int, int] | None:
    """Poll until the ledger has written `expected` rows or stopped moving for 3 s."""
    deadline, last, still_since = time.monotonic() + cap_s, None, time.monotonic()
    while time.monotonic() < deadline:
        got = count_rows(url)
        if got is None or got[2] >= expected:
            return got
        if got != last:
            last, still_since = got, time.monotonic()
        elif time.monotonic() - still_since > 3:
            return got
        time.sleep(0.5)
    return last
