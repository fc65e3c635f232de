"""The ledger's journal (group commit, truncation, replay after a crash, strict waits) and its robustness
to rows the database refuses and to long outages."""

from __future__ import annotations

import asyncio
import atexit
import logging
import time
from pathlib import Path
from typing import Any

from proxy.journal import Journal
from proxy.ledger import Ledger
from proxy.records import UsageRecord
from proxy.storage import open_store
from tests import pg
from tests.test_ledger_spill import FAST, record, rows, spill_lines, until

pg_url = pg.pg_url  # fixture


def journal_lines(spill: Path) -> int:
    return spill_lines(spill, "usage-journal-")


def count_appends(ledger: Ledger) -> list[int]:
    sizes: list[int] = []
    journal = ledger._journaler.journal
    append = journal.append

    def counted(batch: list[UsageRecord]) -> None:
        sizes.append(len(batch))
        append(batch)

    journal.append = counted  # type: ignore[method-assign]  # observed, still the real file
    return sizes


def crash(ledger: Ledger) -> None:
    """What kill -9 leaves: the tasks gone without a word, the files as they are, their locks released."""
    for task in (ledger._task, ledger._journaler.task):
        if task is not None:
            task.cancel()
    ledger._journaler.journal.release()
    ledger._own.release()
    atexit.unregister(ledger._atexit)


async def test_rows_are_journaled_once_per_tick_and_the_journal_empties_once_they_are_written(tmp_path):
    url = f"sqlite:///{tmp_path / 'usage.db'}"
    spill = tmp_path / "spill"
    ledger = Ledger(open_store(url), spill, flush_interval=0.1)
    appends = count_appends(ledger)
    await ledger.start()
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < 0.6:  # a steady trickle, one row at a time
        ledger.submit(record(n))
        n += 1
        await asyncio.sleep(0.003)
    await until(lambda: ledger.written_rows_total == n)
    assert sum(appends) == n and len(appends) <= 0.6 / 0.1 + 3, appends  # one write + fdatasync per tick
    await until(lambda: journal_lines(spill) == 0)  # the database has them all: the journal starts over
    await ledger.close()
    assert not list(spill.glob("usage-journal-*"))  # a clean stop leaves no journal behind


async def test_a_crashed_ledgers_journal_is_replayed_before_the_next_start_returns(tmp_path):
    db_dir = tmp_path / "db"
    url = f"sqlite:///{db_dir / 'usage.db'}"
    spill = tmp_path / "spill"
    first = Ledger(open_store(url), spill, **FAST)  # its database is down: every row waits in memory
    await first.start()
    for i in range(20):
        first.submit(record(i))
    await until(lambda: journal_lines(spill) == 20)
    crash(first)

    db_dir.mkdir()
    second = Ledger(open_store(url), spill, **FAST)
    await second.start()
    # Nothing waited for: start() itself replayed the dead ledger's journal, so what is read from the
    # database right after it (budgets are seeded that way) already counts those rows.
    assert sorted(await rows(url)) == sorted(f"r-{i}" for i in range(20))
    await second.close()
    assert not list(spill.glob("usage-journal-*"))


async def test_durable_waits_for_the_disk_and_waiters_share_one_write(tmp_path):
    url = f"sqlite:///{tmp_path / 'usage.db'}"
    spill = tmp_path / "spill"
    ledger = Ledger(open_store(url), spill, flush_interval=60)  # no timer tick during the test
    appends = count_appends(ledger)
    await ledger.start()

    async def answer(i: int) -> None:
        ledger.submit(record(i))
        await ledger.durable()
        assert journal_lines(spill) >= 1  # on disk before the answer would be sent

    await asyncio.wait_for(asyncio.gather(*(answer(i) for i in range(50))), 5)
    assert journal_lines(spill) == 50
    assert len(appends) <= 3, appends  # group commit: 50 waiters, not 50 fdatasyncs
    await ledger.close()
    assert sorted(await rows(url)) == sorted(f"r-{i}" for i in range(50))


def test_journal_rewrite_keeps_only_pending_rows(tmp_path):
    journal = Journal(tmp_path)
    journal.append([record(i) for i in range(10)])
    first = journal.file
    assert first is not None
    journal.rewrite([record(8), record(9)])
    assert not first.path.exists() and journal.rows == 2 and journal_lines(tmp_path) == 2
    journal.remove()
    assert not list(tmp_path.glob("usage-journal-*"))


async def test_an_outage_is_logged_once_with_a_periodic_summary_not_per_batch(tmp_path, caplog):
    url = f"sqlite:///{tmp_path / 'missing' / 'usage.db'}"
    ledger = Ledger(open_store(url), tmp_path / "spill", queue_max_rows=4, **FAST)
    caplog.set_level(logging.INFO, logger="gateway.ledger")
    await ledger.start()
    for i in range(60):  # a second of traffic while the database is down: dozens of batches and spills
        ledger.submit(record(i))
        await asyncio.sleep(0.015)
    await until(lambda: ledger.spilled_rows_total >= 50)
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    await ledger.close()
    assert ledger.write_errors_total >= 5
    assert len(noisy) <= 3, [r.getMessage() for r in noisy]


async def test_rows_postgres_cannot_store_never_stall_the_others(pg_url, tmp_path):
    """A NUL in a model name made Postgres refuse the whole batch, which then went row by row: a trickle
    of such rows kept the queue busy with one insert per row. NUL is now replaced; rows the database
    still refuses are isolated by halving the batch."""
    ledger = Ledger(open_store(pg_url), tmp_path / "spill", batch_rows=1000, **FAST)
    writes: list[int] = []
    write = ledger.store.write

    async def counted(batch: list[UsageRecord]) -> int:
        writes.append(len(batch))
        return await write(batch)

    ledger.store.write = counted  # type: ignore[method-assign]  # observed, still the real database
    await ledger.start()
    bad = {100, 1500, 2700}  # model NOT NULL: refused whatever is done to it
    nul = {7, 900, 1999, 2500}
    for i in range(3000):
        kw: dict[str, Any] = {"model": None} if i in bad else {"model": "gpt\x00evil"} if i in nul else {}
        ledger.submit(record(i, **kw))
    await until(lambda: ledger.written_rows_total + ledger.rejected_rows_total == 3000, within=20)
    await ledger.close()
    got = await rows(pg_url)
    assert sorted(got) == sorted(f"r-{i}" for i in range(3000) if i not in bad)
    assert {got[f"r-{i}"]["model"] for i in nul} == {"gpt\ufffdevil"}
    assert ledger.rejected_rows_total == 3
    assert len(writes) < 150, f"{len(writes)} inserts for 3000 rows"  # row by row was about 3000
