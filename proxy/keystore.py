"""Gateway keys managed at run time: the `api_keys` table (SQLite or Postgres).

Secrets are generated here (prefix ``sk-gw-``), returned once, and stored only as sha256 digests.
Every replica polls the table's version (max updated_at and row count) once a second, so a created,
updated or revoked key takes effect everywhere within about a second.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from proxy.auth import hash_key
from proxy.errors import GatewayError, bad_request
from proxy.requests import MAX_JSON_DEPTH, too_deep
from proxy.settings import BUDGET_PERIODS, KeyConfig
from proxy.storage import migrate_postgres, migrate_sqlite, sqlite_path

SECRET_PREFIX = "sk-gw-"
FIELDS = ("models", "rpm", "tpm", "max_parallel", "budget_usd", "budget_period", "expires_at", "metadata",
          "guardrails")
_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.@:")

def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def validate_settings(data: dict[str, Any], partial: bool) -> dict[str, Any]:
    """Check the per-key settings of an admin request; 400 naming the field on any mistake."""
    out: dict[str, Any] = {}
    for name, value in data.items():
        if name not in FIELDS:
            raise bad_request(f"unknown field '{name}'", param=name)
        if name == "models":
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise bad_request("'models' must be an array of alias names or glob patterns", param=name)
        elif name == "guardrails":  # names the admin handler checks against the config's [[guardrails]]
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise bad_request("'guardrails' must be an array of [[guardrails]] names", param=name)
        elif name in ("rpm", "tpm", "max_parallel"):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise bad_request(f"'{name}' must be a positive integer or null", param=name)
        elif name == "budget_usd":
            if value is not None and (not isinstance(value, int | float) or isinstance(value, bool) or value < 0):
                raise bad_request("'budget_usd' must be a non-negative number or null", param=name)
        elif name == "budget_period":
            if value not in BUDGET_PERIODS:
                raise bad_request(f"'budget_period' must be one of {', '.join(BUDGET_PERIODS)}", param=name)
        elif name == "expires_at":
            if value is not None:
                try:
                    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
                    # an offset can carry year 1 or 9999 past datetime's range: OverflowError, not a 500
                    value = (parsed.replace(tzinfo=UTC) if parsed.tzinfo is None
                             else parsed.astimezone(UTC)).isoformat()
                except (ValueError, OverflowError):
                    raise bad_request("'expires_at' must be an ISO-8601 date-time (years 1-9999 in UTC) or null",
                                      param=name) from None
        elif name == "metadata":
            if not isinstance(value, dict):
                raise bad_request("'metadata' must be an object", param=name)
            if too_deep({name: value}, MAX_JSON_DEPTH - 2) is not None:  # stored inside the settings object
                raise bad_request(f"'metadata' is nested deeper than {MAX_JSON_DEPTH - 2} levels", param=name)
        out[name] = value
    if not partial:
        out.setdefault("models", ["*"])
        out.setdefault("budget_period", "month")
        out.setdefault("metadata", {})
    return out


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not name or len(name) > 128 or not set(name) <= _NAME_OK:
        raise bad_request("'name' must be 1-128 characters of letters, digits and -_.@:", param="name")
    return name


@dataclass(slots=True)
class StoredKey:
    name: str
    key_hash: str
    key_prefix: str
    settings: dict[str, Any]
    created_at: str
    updated_at: str
    revoked_at: str | None

    def to_config(self) -> KeyConfig:
        s = self.settings
        expires = s.get("expires_at")
        return KeyConfig(
            name=self.name, key_hash=self.key_hash, models=list(s.get("models") or ["*"]), rpm=s.get("rpm"),
            tpm=s.get("tpm"), max_parallel=s.get("max_parallel"), budget_usd=s.get("budget_usd"),
            budget_period=s.get("budget_period") or "month",
            expires_at=datetime.fromisoformat(expires) if expires else None,
            metadata=s.get("metadata") or {}, guardrails=list(s.get("guardrails") or []), source="db",
        )

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "key_prefix": self.key_prefix, "source": "db", **self.settings,
                "created_at": self.created_at, "updated_at": self.updated_at, "revoked_at": self.revoked_at}


def _row(r: Any) -> StoredKey:
    return StoredKey(r[0], r[1], r[2], orjson.loads(r[3]), r[4], r[5], r[6])


_COLUMNS = "name, key_hash, key_prefix, settings, created_at, updated_at, revoked_at"


class KeyStore:
    """The same operations over SQLite (one worker thread) or Postgres (asyncpg)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_pg = url.startswith(("postgresql://", "postgres://"))
        self._pool: Any = None
        self._sqlite: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="keystore") if not self.is_pg else None

    # plumbing -----------------------------------------------------------------------------------------

    async def _sql(self, query: str, *args: Any, fetch: bool = False) -> list[Any]:
        if self.is_pg:
            if self._pool is None:
                import asyncpg

                pool = await asyncpg.create_pool(self.url, min_size=1, max_size=2, timeout=5)
                try:
                    async with pool.acquire() as conn:
                        await migrate_postgres(conn)  # the table is part of the versioned schema
                except BaseException:
                    await pool.close()
                    raise
                self._pool = pool
            pg_query = _to_pg(query)
            async with self._pool.acquire() as conn:
                if fetch:
                    return list(await conn.fetch(pg_query, *args))
                await conn.execute(pg_query, *args)
                return []
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._sqlite_run, query, args, fetch)

    def _sqlite_run(self, query: str, args: tuple[Any, ...], fetch: bool) -> list[Any]:
        if self._sqlite is None:
            conn = sqlite3.connect(sqlite_path(self.url), timeout=10, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("BEGIN IMMEDIATE")  # the table is part of the versioned schema
                migrate_sqlite(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.close()
                raise
            self._sqlite = conn
        cur = self._sqlite.execute(query, args)
        return cur.fetchall() if fetch else []

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._thread is not None:
            if self._sqlite is not None:
                conn, self._sqlite = self._sqlite, None
                await asyncio.get_running_loop().run_in_executor(self._thread, conn.close)
            self._thread.shutdown(wait=False)

    # operations ---------------------------------------------------------------------------------------

    async def version(self) -> tuple[str, int]:
        rows = await self._sql("SELECT COALESCE(MAX(updated_at), ''), COUNT(*) FROM api_keys", fetch=True)
        return str(rows[0][0]), int(rows[0][1])

    async def all(self) -> list[StoredKey]:
        return [_row(r) for r in await self._sql(f"SELECT {_COLUMNS} FROM api_keys ORDER BY name", fetch=True)]

    async def get(self, name: str) -> StoredKey | None:
        rows = await self._sql(f"SELECT {_COLUMNS} FROM api_keys WHERE name = ?", name, fetch=True)
        return _row(rows[0]) if rows else None

    async def create(self, name: str, settings: dict[str, Any], taken: set[str]) -> tuple[str, StoredKey]:
        check_name(name)
        if name in taken or await self.get(name) is not None:
            raise GatewayError(409, f"A key named {name!r} already exists.", code="key_exists", param="name")
        secret = new_secret()
        stamp = now_iso()
        key = StoredKey(name, hash_key(secret), secret[:10], settings, stamp, stamp, None)
        await self._sql(f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", key.name, key.key_hash,
                        key.key_prefix, orjson.dumps(settings).decode(), stamp, stamp, None)
        return secret, key

    async def update(self, name: str, changes: dict[str, Any]) -> StoredKey:
        key = await self.get(name)
        if key is None:
            raise GatewayError(404, f"No managed key named {name!r}.", code="key_not_found", param="name")
        key.settings = {**key.settings, **changes}
        key.updated_at = _after(key.updated_at)
        await self._sql("UPDATE api_keys SET settings = ?, updated_at = ? WHERE name = ?",
                        orjson.dumps(key.settings).decode(), key.updated_at, name)
        return key

    async def revoke(self, name: str) -> StoredKey:
        key = await self.get(name)
        if key is None:
            raise GatewayError(404, f"No managed key named {name!r}.", code="key_not_found", param="name")
        if key.revoked_at is None:
            key.revoked_at = key.updated_at = _after(key.updated_at)
            await self._sql("UPDATE api_keys SET revoked_at = ?, updated_at = ? WHERE name = ?", key.revoked_at,
                            key.updated_at, name)
        return key


def _after(previous: str) -> str:
    """A new updated_at that sorts after the old one, so pollers always see the change."""
    stamp = now_iso()
    if stamp > previous:
        return stamp
    later = datetime.strptime(previous, "%Y-%m-%dT%H:%M:%S.%fZ") + timedelta(microseconds=1)
    return later.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _to_pg(query: str) -> str:
    out, n = [], 0
    for ch in query:
        if ch == "?":
            n += 1
            out.append(f"${n}")
        else:
            out.append(ch)
    return "".join(out)
