"""The usage ledger: one row per request, written off the request path, never lost, never twice.

``submit`` appends to an in-process list and returns (no I/O, no encoding). Every ``flush_interval``
seconds (or as soon as a batch is full) the journaler appends the rows submitted since its last tick
to the journal (proxy.journal) with one write and one fdatasync, and hands them to the queue; the
journal is truncated once the database has its rows, and a crashed process's journal is replayed by
the next ledger to start (before ``start`` returns, so budgets seeded from the database count it).
A ``kill -9`` or power loss therefore loses at most the rows submitted in the last
``flush_interval``; ``await durable()`` waits until the rows submitted so far are journaled (strict
durability: the pipeline awaits it before sending a whole answer or a stream's last event). A second task, the flusher,
writes the queue to the database every ``flush_interval`` seconds, in batches of ``batch_rows`` rows.
When the database is unreachable the rows stay queued and the flusher retries with exponential
backoff (0.5 s doubling to 5 s), logging the outage once and then a summary every 30 s. Past
``queue_max_rows`` the oldest rows spill to an append-only JSON-lines file; spill files are
replayed once the database answers again.
Every insert is ``ON CONFLICT (request_id) DO NOTHING``, so a replay that repeats rows is harmless.

Spill files are named per ledger (``usage-spill-<pid>-<token>.jsonl``) and held under an exclusive
``flock`` while their owner lives, so ``uvicorn --workers N`` never interleaves writers. A file
nobody holds belongs to a process that is gone: the next ledger to start (or any running one, on
its periodic scan) adopts it, replays it and deletes it.

A batch the database rejects for its *data* (not for being unreachable) is split in halves until the
bad rows are alone (k bad rows in a batch of n cost about 2k·log2(n) inserts, not n); a row that
still fails goes to ``usage-rejected-<pid>-<token>.jsonl`` with an error log line, and one flush
cycle writes for at most a second before it checks the spill bound, so bad rows never stall the rest.

Rows carry the upstream's own usage. When none arrived (an upstream that sends none, a stream cut
short, a client that hung up first), the core estimates and sets ``usage_estimated``: prompt tokens
as the request's text length / 4, completion tokens as one per content or tool-argument delta relayed.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import time
from collections import deque
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from proxy.journal import Journaler
from proxy.records import UsageRecord
from proxy.spill import JOURNAL_PREFIX, REJECT_PREFIX, SPILL_PREFIX, SpillFile
from proxy.storage import Store, open_store, redact

log = logging.getLogger("gateway.ledger")

CYCLE_WRITE_S = 1.0  # one flush cycle writes at most this long before it checks the spill bound


class Ledger:
    """A UsageSink that batches rows into a Store. Create, ``await start()``, ``await close()``."""

    def __init__(
        self,
        store: Store,
        spill_dir: str | os.PathLike[str] = "usage-spill",
        *,
        queue_max_rows: int = 10_000,
        flush_interval: float = 0.2,
        batch_rows: int = 1000,
        retention_days: int = 0,
        min_backoff: float = 0.5,
        max_backoff: float = 5.0,
        write_timeout: float = 15.0,
        drain_timeout: float = 10.0,
    ) -> None:
        self.store = store
        self.spill_dir = Path(spill_dir)
        self.queue_max_rows = queue_max_rows
        self.flush_interval = flush_interval
        self.batch_rows = max(1, min(batch_rows, queue_max_rows))  # a full queue wakes the flusher at once
        self.retention_days = retention_days
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.write_timeout = write_timeout
        self.drain_timeout = drain_timeout

        self._queue: deque[UsageRecord] = deque()  # journaled, waiting for the database
        self._writing: list[UsageRecord] = []  # taken from the queue: being written or spilled
        self._journaler = Journaler(self.spill_dir, flush_interval, self.batch_rows, self._queue,
                                    lambda: self._writing, self._journaled)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._closed = False
        self._ready = False  # connected and migrated
        token = os.urandom(4).hex()
        self._own = SpillFile(self.spill_dir / f"{SPILL_PREFIX}{os.getpid()}-{token}.jsonl", own=True)
        self._rejects = SpillFile(self.spill_dir / f"{REJECT_PREFIX}{os.getpid()}-{token}.jsonl", own=True)
        self._adopted: list[SpillFile] = []
        self._retry_at = 0.0
        self._backoff = 0.0
        self._down_since: float | None = None
        self._last_down_log = 0.0
        self._next_scan = 0.0
        self._next_prune = 0.0
        self._spill_logged = False  # the first spill of an outage is logged; the rest go in its summary

        # Numbers for metrics and log lines.
        self.written_rows_total = 0
        self.duplicate_rows_total = 0  # rows already in the table (retries and replays)
        self.spilled_rows_total = 0
        self.replayed_rows_total = 0
        self.rejected_rows_total = 0
        self.unreadable_spill_lines_total = 0
        self.write_errors_total = 0
        self.spill_errors_total = 0
        self.pruned_rows_total = 0
        self.unpriced_requests_total: dict[str, int] = {}  # "provider/upstream_model" -> requests

    @classmethod
    def from_config(cls, storage: Any) -> Ledger:
        """From a ``StorageConfig``: database_url, spill_dir, queue_max_rows, flush_interval_ms, retention_days."""
        return cls(
            open_store(storage.database_url),
            storage.spill_dir,
            queue_max_rows=storage.queue_max_rows,
            flush_interval=storage.flush_interval_ms / 1000,
            retention_days=storage.retention_days,
        )

    # --- hot path -------------------------------------------------------------------------------------------------

    def submit(self, record: UsageRecord) -> None:
        if self._closed:
            self._spill_now([record])  # only after shutdown: a request cancelled late still leaves its row
            return
        fresh = self._journaler.fresh
        fresh.append(record)
        if record.cost_usd is None and (record.prompt_tokens or record.completion_tokens):
            name = f"{record.provider}/{record.upstream_model}"
            self.unpriced_requests_total[name] = self.unpriced_requests_total.get(name, 0) + 1
        if len(fresh) >= self.batch_rows and self._journaler.wake is not None:
            self._journaler.wake.set()

    async def durable(self) -> None:
        """Return once every row submitted so far is in the journal on disk (strict durability)."""
        await self._journaler.durable()

    @property
    def queue_depth(self) -> int:
        return len(self._journaler.fresh) + len(self._queue) + len(self._writing)

    def stats(self) -> dict[str, Any]:
        return {
            "queue_rows": self.queue_depth,
            "database_up": self._down_since is None,
            "written_rows_total": self.written_rows_total,
            "duplicate_rows_total": self.duplicate_rows_total,
            "spilled_rows_total": self.spilled_rows_total,
            "replayed_rows_total": self.replayed_rows_total,
            "rejected_rows_total": self.rejected_rows_total,
            "write_errors_total": self.write_errors_total,
            "spill_errors_total": self.spill_errors_total,
            "journaled_rows_total": self._journaler.rows_total,
            "journal_errors_total": self._journaler.errors_total,
            "pruned_rows_total": self.pruned_rows_total,
            "unpriced_requests_total": dict(self.unpriced_requests_total),
        }

    # --- lifecycle ------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and migrate (a database that is down is retried later, not fatal); replay what a
        stopped process left (so budgets seeded from the database next count it); start the tasks."""
        self._wake = asyncio.Event()
        try:
            async with asyncio.timeout(self.write_timeout):
                await self._ensure_ready()
        except Exception as exc:
            self._failed(exc, "at start")
        else:
            try:
                async with asyncio.timeout(self.write_timeout):
                    await self._replay_leftovers()
            except Exception as exc:  # a large backlog, say: the flusher goes on with it in the background
                log.warning("usage ledger: files left by stopped processes not all replayed at start (%s); "
                            "continuing in the background (budgets seeded now do not count those rows yet)",
                            type(exc).__name__)
        self._check_spill_dir()
        self._journaler.start()
        self._task = asyncio.create_task(self._run(), name="usage-ledger")
        atexit.register(self._atexit)

    async def close(self) -> None:
        """Flush what is queued (bounded by drain_timeout); spill whatever the database did not take."""
        self._stopping = True
        self._queue.extend(await self._journaler.stop())  # not journaled: to the database or a spill file now
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            await self._task
        self._retry_at = 0.0  # one more try even if we were backing off: the database may be back
        try:
            async with asyncio.timeout(self.drain_timeout):
                while self._gather_fresh() and await self._write(self._take(), requeue=True):
                    pass
        except TimeoutError:
            pass
        kept = True
        if self._gather_fresh():  # from here to _closed nothing awaits: no row can slip in unseen
            rows = list(self._queue)
            self._queue.clear()
            kept = self._spill_now(rows)
            log.warning("usage ledger: %d rows spilled to %s at shutdown; replayed at next start",
                        len(rows), self._own.path)
        if kept:  # every row is in the database or a spill file: the journal has nothing left to say
            with contextlib.suppress(OSError):
                self._journaler.journal.remove()
        self._journaler.journal.release()
        self._closed = True
        self._journaler.release_waiters()
        with contextlib.suppress(Exception):
            await self.store.close()
        for f in self._adopted:
            f.release()
        self._own.release()
        self._rejects.release()
        atexit.unregister(self._atexit)
        log.info("usage ledger closed: %d rows written, %d spilled, %d write errors",
                 self.written_rows_total, self.spilled_rows_total, self.write_errors_total)

    def _gather_fresh(self) -> int:
        """While closing: rows submitted meanwhile (requests cancelled at the grace's end) join the queue."""
        self._queue.extend(self._journaler.fresh)
        self._journaler.fresh = []
        return len(self._queue)

    def _atexit(self) -> None:
        # Safety net for an exit that skipped close() (a forced second Ctrl-C): keep the queue on disk.
        rows = [*self._writing, *self._queue, *self._journaler.fresh]
        self._writing, self._journaler.fresh = [], []
        self._queue.clear()
        if rows:
            self._spill_now(rows)

    def _journaled(self, ticked: bool) -> None:
        """After each journal tick: the flusher writes what was just journaled (on the timer's ticks, so
        strict waiters do not turn into one database round trip each), or at once with a full batch."""
        if self._wake is not None and (ticked or len(self._queue) >= self.batch_rows):
            self._wake.set()

    # --- flusher --------------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_interval):
                    await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                break
            try:
                await self._cycle()
            except Exception:
                log.exception("usage ledger: flush cycle failed")

    async def _cycle(self) -> None:
        now = time.monotonic()
        if now >= self._retry_at:
            until = now + max(self.flush_interval, CYCLE_WRITE_S)
            while self._queue:
                if not await self._write(self._take(), requeue=True):
                    break
                if len(self._queue) < self.batch_rows or time.monotonic() >= until:
                    # Rows that came in during the write wait for the next tick: under steady traffic
                    # one round trip per interval, not a stream of one-row inserts back to back. And a
                    # slow cycle (bad rows being isolated) stops here so the spill bound below holds.
                    break
        if len(self._queue) > self.queue_max_rows:
            await self._spill_overflow()
        if self._down_since is None and len(self._queue) < self.batch_rows:
            await self._replay()
            await self._prune_if_due()
        elif self._down_since is not None and now - self._last_down_log >= 30:
            self._last_down_log = now
            log.warning("usage database still unavailable after %.0fs: %d rows queued, %d spilled, %d write errors",
                        now - self._down_since, self.queue_depth, self.spilled_rows_total, self.write_errors_total)

    def _take(self) -> list[UsageRecord]:
        queue = self._queue
        n = min(len(queue), self.batch_rows)
        return [queue.popleft() for _ in range(n)]

    async def _ensure_ready(self) -> None:
        if not self._ready:
            await self.store.open()
            applied = await self.store.migrate()
            if applied:
                log.info("usage database %s migrated to version %d", redact(self.store.url), applied[-1])
            self._ready = True

    async def _write(self, rows: list[UsageRecord], requeue: bool) -> bool:
        """Write one batch. On failure the rows go back to the queue front (or stay in their file)."""
        if requeue:
            self._writing = rows  # still only in the journal: it must not be truncated under them
        try:
            if time.monotonic() < self._retry_at:
                if requeue:
                    self._queue.extendleft(reversed(rows))
                return False
            try:
                async with asyncio.timeout(self.write_timeout):
                    await self._ensure_ready()
                    inserted = await self.store.write(rows)
            except Exception as exc:
                gone: Exception | None = exc
                if self._ready and self.store.is_row_error(exc):
                    gone = await self._isolate(rows, exc)
                if gone is None:
                    self._succeeded()
                    return True
                if requeue:
                    self._queue.extendleft(reversed(rows))
                self._failed(gone)
                return False
            self._succeeded()
            self.written_rows_total += inserted
            self.duplicate_rows_total += len(rows) - inserted
            return True
        finally:
            if requeue:
                self._writing = []

    async def _isolate(self, rows: list[UsageRecord], error: Exception) -> Exception | None:
        """A batch the database refused for its data: halve it until the bad rows are alone, keep those
        aside, write the rest. The database's error if it went away mid-way (the whole batch is then
        retried later, which the ON CONFLICT makes harmless)."""
        rejected: list[UsageRecord] = []
        parts: list[tuple[list[UsageRecord], Exception | None]] = [(rows, error)]
        while parts:
            part, exc = parts.pop()
            if exc is None:
                try:
                    async with asyncio.timeout(self.write_timeout):
                        inserted = await self.store.write(part)
                except Exception as e:
                    if not self.store.is_row_error(e):
                        return e
                    exc = e
                else:
                    self.written_rows_total += inserted
                    self.duplicate_rows_total += len(part) - inserted
                    continue
            if len(part) == 1:
                log.error("usage row %s rejected by the database (%s); kept in %s",
                          part[0].request_id, exc, self._rejects.path)
                rejected.append(part[0])
            else:
                half = len(part) // 2
                parts += [(part[half:], None), (part[:half], None)]  # the first half is tried first
        if rejected:
            self.rejected_rows_total += len(rejected)
            try:
                await asyncio.to_thread(self._spill_to, self._rejects, rejected)
            except OSError as exc:
                self.spill_errors_total += 1
                log.critical("usage ledger: LOST %d rejected usage rows: cannot write %s (%s)",
                             len(rejected), self._rejects.path, exc)
        return None

    def _failed(self, exc: BaseException, when: str = "") -> None:
        self.write_errors_total += 1
        self._ready = False
        now = time.monotonic()
        self._backoff = min(self.max_backoff, self._backoff * 2 if self._backoff else self.min_backoff)
        self._retry_at = now + self._backoff
        if self._down_since is None:
            self._down_since = now
            self._last_down_log = now
            log.error("usage database %s unavailable%s (%s: %s): %d rows queued, retrying with backoff",
                      redact(self.store.url), f" {when}" if when else "", type(exc).__name__, exc, len(self._queue))

    def _succeeded(self) -> None:
        if self._down_since is not None:
            log.warning("usage database %s is back after %.1fs: %d rows queued, %d spilled rows to replay",
                        redact(self.store.url), time.monotonic() - self._down_since, len(self._queue),
                        self.spilled_rows_total - self.replayed_rows_total)
            self._down_since = None
            self._spill_logged = False
            self._next_scan = 0.0  # look for spill files right away
        self._backoff = 0.0
        self._retry_at = 0.0

    # --- spill and replay -----------------------------------------------------------------------------------------

    async def _spill_overflow(self) -> None:
        excess = len(self._queue) - self.queue_max_rows
        rows = self._writing = [self._queue.popleft() for _ in range(excess)]  # in the journal until spilled
        try:
            await asyncio.to_thread(self._spill_to, self._own, rows)
        except OSError as exc:
            # Disk trouble too: memory is the last place left, so the rows go back to the queue.
            self._queue.extendleft(reversed(rows))
            self.spill_errors_total += 1
            log.error("usage ledger: cannot spill to %s (%s); %d rows kept in memory", self._own.path, exc,
                      len(self._queue))
            return
        finally:
            self._writing = []
        self.spilled_rows_total += len(rows)
        if not self._spill_logged:  # once per outage: the periodic "still unavailable" line has the totals
            self._spill_logged = True
            log.warning("usage ledger: queue over %d rows while the database is unavailable; spilling the oldest "
                        "rows to %s", self.queue_max_rows, self._own.path)

    def _spill_to(self, target: SpillFile, rows: list[UsageRecord]) -> None:
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        target.append(rows)

    def _spill_now(self, rows: list[UsageRecord]) -> bool:
        """Synchronous spill, for shutdown paths only; whether the rows are on disk."""
        try:
            self._spill_to(self._own, rows)
            self.spilled_rows_total += len(rows)
            return True
        except OSError as exc:
            self.spill_errors_total += 1
            log.critical("usage ledger: LOST %d usage rows: cannot write %s (%s)", len(rows), self._own.path, exc)
            return False
        finally:
            if self._closed:
                self._own.release()  # let the next ledger adopt the file

    def _scan(self) -> None:
        """Adopt spill files and journals whose owner is gone (their lock is free)."""
        if not self.spill_dir.is_dir():
            return
        held = {self._own.path} | {f.path for f in self._adopted}
        if self._journaler.journal.file is not None:
            held.add(self._journaler.journal.file.path)
        paths = [*self.spill_dir.glob(f"{SPILL_PREFIX}*.jsonl"), *self.spill_dir.glob(f"{JOURNAL_PREFIX}*.jsonl")]
        for path in sorted(paths):
            if path in held:
                continue
            candidate = SpillFile(path, own=False)
            if candidate.lock():
                self._adopted.append(candidate)
                log.info("usage ledger: replaying %s (%d bytes) left by a stopped process", path, candidate.size())

    async def _replay_leftovers(self) -> None:
        """At start, with the database up: replay every file a stopped (or crashed) process left, all of
        it, so that what is read from the database next (budgets) includes those rows."""
        self._next_scan = time.monotonic() + 30
        await asyncio.to_thread(self._scan)
        while self._adopted:
            if not await self._replay(budget=1 << 30):
                return

    async def _replay(self, budget: int = 8) -> bool:
        """Replay spilled rows a few batches per cycle, so fresh rows are never kept waiting long.
        False when the database refused a batch (the rows stay in their file)."""
        now = time.monotonic()
        if now >= self._next_scan:
            self._next_scan = now + 30
            await asyncio.to_thread(self._scan)
        for source in [self._own, *self._adopted]:
            while budget > 0 and source.pending:
                records, offset, bad = await asyncio.to_thread(source.read, self.batch_rows)
                budget -= 1
                self.unreadable_spill_lines_total += bad
                if bad:
                    log.error("usage ledger: %d unreadable lines in %s skipped", bad, source.path)
                if records and not await self._write(records, requeue=False):
                    return False  # the rows are still in the file; the offset is unchanged
                self.replayed_rows_total += len(records)
                source.offset = offset
                if offset >= await asyncio.to_thread(source.size):
                    await asyncio.to_thread(source.finish)
                    if not source.own:
                        self._adopted.remove(source)
                        log.info("usage ledger: finished replaying %s", source.path)
                    break
        return True

    def _check_spill_dir(self) -> None:
        """Warn at start when the spill directory could not be created: the outage fallback would fail."""
        probe = self.spill_dir.resolve()
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not os.access(probe, os.W_OK):
            log.warning("usage ledger: spill directory %s is not writable; set [storage] spill_dir", self.spill_dir)

    # --- retention ------------------------------------------------------------------------------------------------

    async def _prune_if_due(self) -> None:
        if self.retention_days <= 0 or time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + 3600
        before = datetime.now(UTC) - timedelta(days=self.retention_days)
        try:
            async with asyncio.timeout(120):
                removed = await self.store.prune(before)
        except Exception as exc:
            self._next_prune = time.monotonic() + 60
            log.warning("usage ledger: retention prune failed (%s: %s)", type(exc).__name__, exc)
            return
        self.pruned_rows_total += removed
        if removed:
            log.info("usage ledger: pruned %d rows older than %d days", removed, self.retention_days)
