"""The ledger on its own, against real databases: outages, spill files, replays, bad rows, retention.

A SQLite outage is a database file whose directory does not exist yet: sqlite3 cannot open it
until the directory is created, exactly like a volume that is not mounted yet.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.ledger import Ledger
from proxy.records import UsageRecord
from proxy.storage import open_store
from tests import pg

pg_url, database_url = pg.pg_url, pg.database_url  # fixtures

FAST = {"flush_interval": 0.02, "min_backoff": 0.02, "max_backoff": 0.1}


def record(i: int, created_at: float | None = None, **kw: Any) -> UsageRecord:
    fields: dict[str, Any] = {"request_id": f"r-{i}", "created_at": created_at or time.time(), "key_name": "team",
                              "model": "m", "endpoint": "chat", "stream": False, "provider": "p",
                              "upstream_model": "u", "status": 200, "prompt_tokens": i, "completion_tokens": 2 * i,
                              "cost_usd": i / 1000, "latency_ms": float(i), "attempts": 1}
    fields.update(kw)
    return UsageRecord(**fields)


async def until(predicate: Callable[[], Any], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def rows(url: str) -> dict[str, dict[str, Any]]:
    store: Any = open_store(url)
    try:
        return {r["request_id"]: r for r in await store.fetch_all()}
    finally:
        await store.close()


def spill_lines(directory: Path, prefix: str = "usage-spill-") -> int:
    return sum(len(p.read_bytes().splitlines()) for p in directory.glob(f"{prefix}*.jsonl"))


async def test_outage_keeps_rows_queued_then_spills_past_the_bound_and_replays_once(tmp_path):
    db_dir = tmp_path / "not-mounted-yet"
    url = f"sqlite:///{db_dir / 'usage.db'}"
    spill = tmp_path / "spill"
    ledger = Ledger(open_store(url), spill, queue_max_rows=4, **FAST)
    await ledger.start()  # the database is unreachable: not fatal
    for i in range(25):
        ledger.submit(record(i))
    await until(lambda: ledger.spilled_rows_total == 21)
    assert ledger.queue_depth == 4  # the bound: the rest is on disk
    assert spill_lines(spill) == 21
    assert ledger.write_errors_total >= 1 and ledger.stats()["database_up"] is False

    db_dir.mkdir()  # the database comes back
    await until(lambda: ledger.replayed_rows_total == 21 and ledger.queue_depth == 0)
    got = await rows(url)
    assert sorted(got) == sorted(f"r-{i}" for i in range(25))
    assert sum(r["prompt_tokens"] for r in got.values()) == sum(range(25))
    assert ledger.written_rows_total == 25 and ledger.duplicate_rows_total == 0
    assert spill_lines(spill) == 0  # replayed rows leave the file

    ledger.submit(record(99))  # and the ledger carries on as normal
    await until(lambda: ledger.written_rows_total == 26)
    await ledger.close()
    assert len(await rows(url)) == 26


async def test_with_the_database_and_the_spill_dir_both_failing_rows_wait_in_memory(tmp_path):
    db_dir = tmp_path / "not-mounted-yet"
    url = f"sqlite:///{db_dir / 'usage.db'}"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    ledger = Ledger(open_store(url), blocker / "spill", queue_max_rows=4, **FAST)  # a dir under a file: unwritable
    await ledger.start()
    for i in range(10):
        ledger.submit(record(i))
    await until(lambda: ledger.spill_errors_total >= 2)  # it keeps trying
    assert ledger.queue_depth == 10 and ledger.spilled_rows_total == 0  # past the bound, but nothing dropped

    db_dir.mkdir()  # the database comes back
    await until(lambda: ledger.written_rows_total == 10 and ledger.queue_depth == 0)
    await ledger.close()
    assert sorted(await rows(url)) == sorted(f"r-{i}" for i in range(10))


async def test_stop_while_database_down_spills_and_the_next_start_replays_exactly_once(tmp_path):
    db_dir = tmp_path / "db"
    url = f"sqlite:///{db_dir / 'usage.db'}"
    spill = tmp_path / "spill"
    first = Ledger(open_store(url), spill, **FAST)
    await first.start()
    for i in range(10):
        first.submit(record(i))
    await first.close()  # a graceful stop while the database is down
    assert spill_lines(spill) == 10 and first.spilled_rows_total == 10
    first.submit(record(10))  # a row from a request cancelled after shutdown is not lost either
    assert spill_lines(spill) == 11

    db_dir.mkdir()
    store: Any = open_store(url)
    await store.migrate()
    assert await store.write([record(1), record(2), record(3)]) == 3  # some rows made it before the outage
    await store.close()

    second = Ledger(open_store(url), spill, **FAST)
    await second.start()
    await until(lambda: second.replayed_rows_total == 11)
    await second.close()
    assert sorted(await rows(url)) == sorted(f"r-{i}" for i in range(11))
    assert second.written_rows_total == 8 and second.duplicate_rows_total == 3  # ON CONFLICT DO NOTHING
    assert not list(spill.glob("usage-spill-*"))  # an adopted file is deleted once replayed


async def test_a_live_ledgers_spill_file_is_never_adopted(tmp_path):
    """Workers share the spill directory: a file is replayed only once its owner has stopped."""
    down = f"sqlite:///{tmp_path / 'missing' / 'usage.db'}"
    up = f"sqlite:///{tmp_path / 'usage.db'}"
    spill = tmp_path / "spill"
    owner = Ledger(open_store(down), spill, queue_max_rows=1, **FAST)
    await owner.start()
    for i in range(3):
        owner.submit(record(i))
    await until(lambda: owner.spilled_rows_total == 2)

    other = Ledger(open_store(up), spill, **FAST)
    await other.start()
    await asyncio.sleep(0.2)
    assert other.replayed_rows_total == 0 and spill_lines(spill) == 2  # locked by its live owner

    await owner.close()  # spills its last queued row and lets go of the file
    later = Ledger(open_store(up), spill, **FAST)
    await later.start()
    await until(lambda: later.replayed_rows_total == 3)
    await later.close()
    await other.close()
    assert sorted(await rows(up)) == ["r-0", "r-1", "r-2"]


async def test_unreadable_lines_in_a_spill_file_are_skipped_and_counted(tmp_path):
    spill = tmp_path / "spill"
    spill.mkdir()
    good = [orjson.dumps(record(i)) + b"\n" for i in range(3)]
    (spill / "usage-spill-1-dead.jsonl").write_bytes(
        good[0] + b"not json\n" + good[1] + b'{"request_id": "x"}\n' + good[2] + b'{"request_id": "torn", "crea')
    url = f"sqlite:///{tmp_path / 'usage.db'}"
    ledger = Ledger(open_store(url), spill, **FAST)
    await ledger.start()
    await until(lambda: ledger.replayed_rows_total == 3)
    await ledger.close()
    assert sorted(await rows(url)) == ["r-0", "r-1", "r-2"]
    assert ledger.unreadable_spill_lines_total == 3
    assert not list(spill.glob("usage-spill-*"))


async def test_a_row_the_database_rejects_is_set_aside_and_the_rest_is_written(database_url, tmp_path):
    spill = tmp_path / "spill"
    ledger = Ledger(open_store(database_url), spill, **FAST)
    await ledger.start()
    for i in range(5):
        ledger.submit(record(i, model=None) if i == 2 else record(i))  # model is NOT NULL
    await until(lambda: ledger.written_rows_total == 4 and ledger.rejected_rows_total == 1)
    await ledger.close()
    assert sorted(await rows(database_url)) == ["r-0", "r-1", "r-3", "r-4"]
    assert spill_lines(spill, "usage-rejected-") == 1
    assert spill_lines(spill) == 0  # a rejected row is not retried forever


async def test_retention_prunes_rows_older_than_retention_days(database_url, tmp_path):
    now = time.time()
    store: Any = open_store(database_url)
    await store.migrate()
    await store.write([record(i, created_at=now - (3 + i) * 86400) for i in range(4)]  # 3 to 6 days old
                      + [record(10 + i, created_at=now - i * 3600) for i in range(3)])  # this morning
    await store.close()
    ledger = Ledger(open_store(database_url), tmp_path / "spill", retention_days=2, **FAST)
    await ledger.start()
    await until(lambda: ledger.pruned_rows_total == 4)
    await ledger.close()
    assert sorted(await rows(database_url)) == ["r-10", "r-11", "r-12"]


async def test_retention_zero_keeps_everything(tmp_path):
    url = f"sqlite:///{tmp_path / 'usage.db'}"
    ledger = Ledger(open_store(url), tmp_path / "spill", retention_days=0, **FAST)
    await ledger.start()
    ledger.submit(record(1, created_at=time.time() - 5 * 365 * 86400))
    await until(lambda: ledger.written_rows_total == 1)
    await asyncio.sleep(0.1)
    await ledger.close()
    assert list(await rows(url)) == ["r-1"]


async def test_a_steady_trickle_is_written_once_per_interval_not_row_by_row(database_url, tmp_path):
    """Rows that arrive while a batch is being written wait for the next tick. Before, the flusher went
    on writing whatever had come in meanwhile, so steady traffic became a stream of one- or two-row
    inserts back to back: a database round trip per request instead of one per interval."""
    ledger = Ledger(open_store(database_url), tmp_path / "spill", flush_interval=0.1)
    writes: list[int] = []
    write = ledger.store.write

    async def counted(batch: list[UsageRecord]) -> int:
        writes.append(len(batch))
        return await write(batch)

    ledger.store.write = counted  # type: ignore[method-assign]  # observed, still the real database
    await ledger.start()
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < 1.0:  # about 500 rows/s, one at a time, for a second
        ledger.submit(record(n))
        n += 1
        await asyncio.sleep(0.002)
    await until(lambda: ledger.queue_depth == 0 and sum(writes) == n)
    await ledger.close()
    assert len(writes) <= 1.0 / 0.1 + 3, f"{len(writes)} inserts for {n} rows: {writes[:20]}"
    assert sorted(await rows(database_url)) == sorted(f"r-{i}" for i in range(n))


async def test_submit_does_no_io(tmp_path):
    """The hot path only appends to memory: 50k submits take milliseconds, not disk or network time."""
    ledger = Ledger(open_store(f"sqlite:///{tmp_path / 'missing' / 'x.db'}"), tmp_path / "spill",
                    queue_max_rows=10**6, flush_interval=60)
    for i in range(50_000):
        ledger.submit(record(i))
    assert ledger.queue_depth == 50_000
    # Nothing was touched: a submit that wrote (or tried to) would have made these, or raised.
    assert not (tmp_path / "spill").exists() and not (tmp_path / "missing").exists()


@pytest.mark.parametrize("bad", ["retention_days = -1", "retention_days = 1.5", "queue_max_rows = 0",
                                 'flush_interval_ms = "fast"', "spill_dir = 3", "spil_dir = 'x'"])
def test_storage_keys_are_validated(bad):
    import tomllib

    from proxy.config import ConfigError, parse_config

    raw = tomllib.loads(f"[server]\nrequire_auth = false\n[storage]\n{bad}\n")
    with pytest.raises(ConfigError) as err:
        parse_config(raw, "g.toml", {})
    assert err.value.key.startswith("storage.")
