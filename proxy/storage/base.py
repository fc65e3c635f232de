"""What both stores share: the columns, the migrations, the report row and the Store interface."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from proxy.records import UsageRecord

# The table's columns, in the order. A field added to UsageRecord reaches the database only
# through a new migration that adds its column here.
COLUMNS: tuple[str, ...] = (
    "request_id", "created_at", "key_name", "model", "provider", "upstream_model", "endpoint", "stream", "status",
    "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "usage_estimated", "cost_usd",
    "latency_ms", "ttft_ms", "attempts", "cache_hit", "error_type", "cost_saved_usd",
    "guardrail_actions", "end_user",
)
BOOL_COLUMNS = frozenset({"stream", "usage_estimated", "cache_hit"})
GROUPS = ("model", "key", "provider", "day", "hour", "end_user")
FILTER_COLUMNS = {"model": "model", "provider": "provider", "key": "key_name"}  # usage report filters
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
    # The response cache: what a hit saved (the cost of the answer it repeated); null on other rows.
    Migration(3, "add usage_log.cost_saved_usd",
              sqlite=("ALTER TABLE usage_log ADD COLUMN cost_saved_usd REAL",),
              postgres=("ALTER TABLE usage_log ADD COLUMN IF NOT EXISTS cost_saved_usd double precision",)),
    # Guardrails: which acted and how (JSON names, sides, actions, counts; never a matched value); null if none.
    Migration(4, "add usage_log.guardrail_actions",
              sqlite=("ALTER TABLE usage_log ADD COLUMN guardrail_actions TEXT",),
              postgres=("ALTER TABLE usage_log ADD COLUMN IF NOT EXISTS guardrail_actions jsonb",)),
    # End users (proxy.end_users): whom a key's request was for; null when it named none.
    Migration(5, "add usage_log.end_user",
              sqlite=("ALTER TABLE usage_log ADD COLUMN end_user TEXT",),
              postgres=("ALTER TABLE usage_log ADD COLUMN IF NOT EXISTS end_user text",)),
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
    cost_saved_usd: float = 0.0  # what cache hits saved
    p50_latency_ms: float = 0.0

    @classmethod
    def from_tuple(cls, row: tuple[Any, ...] | Any) -> ReportRow:
        (group, requests, errors, prompt, completion, cached, reasoning, cost, unpriced, avg, p95, hits,
         saved, p50) = tuple(row)
        return cls(
            group=group, requests=int(requests), errors=int(errors or 0), prompt_tokens=int(prompt or 0),
            completion_tokens=int(completion or 0), cached_tokens=int(cached or 0),
            reasoning_tokens=int(reasoning or 0), cost_usd=None if cost is None else round(float(cost), 10),
            unpriced_requests=int(unpriced or 0), avg_latency_ms=round(float(avg or 0), 3),
            p95_latency_ms=round(float(p95 or 0), 3), cache_hit_rate=round(float(hits or 0), 6),
            cost_saved_usd=round(float(saved or 0), 10), p50_latency_ms=round(float(p50 or 0), 3),
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
                     key_name: str | None = None, filters: dict[str, str] | None = None,
                     bucket: str | None = None) -> list[ReportRow]:
        """Totals per group over [start, end); group_by None = one total row. key_name filters to one key,
        ``filters`` to rows whose FILTER_COLUMNS equal the values; with ``bucket`` (day or hour) each group
        is ``"<bucket start>|<group>"``."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def is_row_error(self, exc: BaseException) -> bool:
        """True when the database rejected the rows themselves (bad data), not when it was unreachable."""
        raise NotImplementedError


def redact(url: str) -> str:
    """The URL without its password, for log lines and errors."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def total_of(rows: list[ReportRow]) -> ReportRow:
    """Zero totals when the range has no rows (a grouped query returns no group at all)."""
    return rows[0] if rows else ReportRow(group=None)


def not_newer(current: int) -> None:
    if current > LATEST:
        raise StorageError(f"the usage database is at schema version {current}, newer than this gateway "
                           f"({LATEST}); upgrade the gateway")
