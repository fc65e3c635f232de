"""Test helpers for the usage ledger: real Postgres (a fresh schema per test, or a throwaway
server started with pg_ctl), gateway configs with a chosen database, and waiting for rows.

Postgres is found at $GATEWAY_TEST_PG_URL, else postgresql://{postgres,root}@127.0.0.1:5432/test.
Without it the Postgres tests skip, except under CI=true, where a skip would hide a gap: they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.storage import open_store, sqlite_path
from tests.conftest import base_config
from tests.servers import free_port

_CANDIDATES = [os.environ["GATEWAY_TEST_PG_URL"]] if os.environ.get("GATEWAY_TEST_PG_URL") else [
    "postgresql://postgres@127.0.0.1:5432/test", "postgresql://root@127.0.0.1:5432/test"]
_found: list[str | None] = []


def unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: Postgres tests must run, not skip)")
    pytest.skip(reason)


async def _execute(url: str, *statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=3)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def shared_pg_url() -> str:
    """The shared test server's URL, or skip (fail under CI)."""
    if not _found:
        for url in _CANDIDATES:
            try:
                asyncio.run(_execute(url, "SELECT 1"))
            except Exception:
                continue
            _found.append(url)
            break
        else:
            _found.append(None)
    if _found[0] is None:
        unavailable(f"no Postgres reachable at {' or '.join(_CANDIDATES)}")
    assert _found[0] is not None
    return _found[0]


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A database URL whose search_path is a fresh schema, dropped afterwards."""
    base = shared_pg_url()
    schema = f"gw_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_execute(base, f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}search_path={schema}"
    asyncio.run(_execute(base, f"DROP SCHEMA {schema} CASCADE"))


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs twice: on a SQLite file and on a fresh Postgres schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'usage.db'}"
    return request.getfixturevalue("pg_url")


# --- a Postgres server of our own, for outages ---------------------------------------------------------------------


class ThrowawayPostgres:
    """initdb + pg_ctl on a temp dir and a free port. Runs as the `postgres` user when we are root
    (initdb refuses root), so the directory is created in the system temp dir and handed over."""

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
        found = shutil.which("pg_ctl")
        pg_ctl = bins[-1] if bins else found
        if not pg_ctl:
            unavailable("pg_ctl not found (install the PostgreSQL server binaries)")
        assert pg_ctl is not None
        self.bin = Path(pg_ctl).parent
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="gw-pg-"))
        self.data = self.root / "data"
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                unavailable("running as root and there is no `postgres` user to run initdb as")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        proc = subprocess.run([*self.prefix, *args], capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")

    def init(self) -> ThrowawayPostgres:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync",
                  "-E", "UTF8")
        return self

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "log"),
                  "-w", "-t", "30", "start")

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def throwaway_pg() -> Iterator[ThrowawayPostgres]:
    server = ThrowawayPostgres()
    try:
        server.init().start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        server.destroy()
        unavailable(f"cannot start a throwaway Postgres: {e}")
    yield server
    server.destroy()


# --- gateway configs and waiting -----------------------------------------------------------------------------------


def ledger_config(fake_url: str, database_url: str, storage: str = "", extra: str = "", server: str = "") -> str:
    """conftest's base_config with our own [storage] table (and extra [server] lines). Without a spill_dir
    in ``storage``, a SQLite ledger's spill dir sits beside its file; a Postgres URL needs one given."""
    if "spill_dir" not in storage:
        if not database_url.startswith("sqlite:///"):
            raise ValueError("ledger_config: give spill_dir (in the test's tmp_path) with a Postgres database_url")
        storage += f'\nspill_dir = "{Path(sqlite_path(database_url)).parent / "spill"}"'
    text = base_config(fake_url, None, extra, storage=f'database_url = "{database_url}"\n{storage}')
    return text.replace("[server]\n", f"[server]\n{server}\n", 1)


def fetch_rows(database_url: str) -> list[dict[str, Any]]:
    """Every usage_log row, read through a separate connection."""

    async def run() -> list[dict[str, Any]]:
        store: Any = open_store(database_url)
        try:
            return await store.fetch_all()
        finally:
            await store.close()

    return asyncio.run(run())


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        time.sleep(interval)


def rows_by_id(database_url: str, expected: int, timeout: float = 10.0) -> dict[str, dict[str, Any]]:
    """Wait until the table holds `expected` rows, then return them by request_id (asserting no more)."""

    def ready() -> list[dict[str, Any]] | None:
        try:
            rows = fetch_rows(database_url)
        except Exception:
            return None
        return rows if len(rows) >= expected else None

    rows = wait_for(ready, timeout)
    assert len(rows) == expected, f"{len(rows)} rows, expected {expected}"
    # A client-supplied x-request-id is the row id's prefix: the gateway adds ".<random>" for uniqueness.
    return {r["request_id"].rsplit(".", 1)[0]: r for r in rows}
