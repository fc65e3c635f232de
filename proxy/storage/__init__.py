"""The `usage_log` table: SQLite and Postgres writers, versioned migrations and the usage report.

Both stores insert with ``ON CONFLICT (request_id) DO NOTHING``, so writing the same row twice (a
retried batch, a replayed spill file) is harmless. SQLite keeps ``created_at`` as fixed-width ISO-8601
UTC text (``2024-05-01T12:00:00.000000Z``), which sorts chronologically, so range filters and day/hour
grouping work on the text itself.
"""

from __future__ import annotations

from proxy.storage.base import (
    COLUMNS,
    FILTER_COLUMNS,
    GROUPS,
    LATEST,
    MIGRATIONS,
    ReportRow,
    RowRejected,
    StorageError,
    Store,
    iso,
    redact,
    total_of,
)
from proxy.storage.postgres import PostgresStore, migrate_postgres
from proxy.storage.sqlite import SQLiteStore, migrate_sqlite, sqlite_path

__all__ = ["COLUMNS", "FILTER_COLUMNS", "GROUPS", "LATEST", "MIGRATIONS", "PostgresStore", "ReportRow", "RowRejected",
           "SQLiteStore",
           "StorageError", "Store", "iso", "migrate_postgres", "migrate_sqlite", "open_store", "redact",
           "sqlite_path", "total_of"]


def open_store(url: str) -> Store:
    if url.startswith("sqlite://"):
        return SQLiteStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    raise StorageError(f"unsupported database_url {redact(url)!r}: expected sqlite:/// or postgresql://")
