"""The usage ledger: one row per request, written off the request path, never lost, never twice.

``submit`` appends to an in-process deque and returns (no I/O, no encoding). A background task
flushes the queue every ``flush_interval`` seconds, or as soon as a batch is full, in batches of
``batch_rows`` rows. When the database is unreachable the rows stay queued and the flusher retries
with exponential backoff (0.5 s doubling to 5 s). Past ``queue_max_rows`` the oldest rows spill to
an append-only JSON-lines file; spill files are replayed once the database answers again.
Every insert is ``ON CONFLICT (request_id) DO NOTHING``, so a replay that repeats rows is harmless.

Spill files are named per ledger (``usage-spill-<pid>-<token>.jsonl``) and held under an exclusive
``flock`` while their owner lives, so ``uvicorn --workers N`` never interleaves writers. A file
nobody holds belongs to a process that is gone: the next ledger to start (or any running one, on
its periodic scan) adopts it, replays it and deletes it.

A batch the database rejects for its *data* (not for being unreachable) is retried row by row;
a row that still fails goes to ``usage-rejected-<pid>-<token>.jsonl`` with an error log line,
so one bad row never blocks the rest.

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

from proxy.records import UsageRecord
from proxy.spill import REJECT_PREFIX, SPILL_PREFIX, SpillFile
from proxy.storage import Store, open_store, redact

log = logging.getLogger("gateway.ledger")



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

        self._queue: deque[UsageRecord] = deque()
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
        queue = self._queue
        queue.append(record)
        if record.cost_usd is None and (record.prompt_tokens or record.completion_tokens):
            name = f"{record.provider}/{record.upstream_model}"
            self.unpriced_requests_total[name] = self.unpriced_requests_total.get(name, 0) + 1
        if len(queue) >= self.batch_rows and self._wake is not None:
            self._wake.set()

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def stats(self) -> dict[str, Any]:
        return {
            "queue_rows": len(self._queue),
            "database_up": self._down_since is None,
            "written_rows_total": self.written_rows_total,
            "duplicate_rows_total": self.duplicate_rows_total,
            "spilled_rows_total": self.spilled_rows_total,
            "replayed_rows_total": self.replayed_rows_total,
            "rejected_rows_total": self.rejected_rows_total,
            "write_errors_total": self.write_errors_total,
            "spill_errors_total": self.spill_errors_total,
            "pruned_rows_total": self.pruned_rows_total,
            "unpriced_requests_total": dict(self.unpriced_requests_total),
        }

    # --- lifecycle ------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and migrate (a database that is down is retried later, not fatal); start the flusher."""
        self._wake = asyncio.Event()
        try:
            async with asyncio.timeout(self.write_timeout):
                await self._ensure_ready()
        except Exception as exc:
            self._failed(exc, "at start")
        self._check_spill_dir()
        self._task = asyncio.create_task(self._run(), name="usage-ledger")
        atexit.register(self._atexit)

    async def close(self) -> None:
        """Flush what is queued (bounded by drain_timeout); spill whatever the database did not take."""
        self._stopping = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            await self._task
        self._retry_at = 0.0  # one more try even if we were backing off: the database may be back
        try:
            async with asyncio.timeout(self.drain_timeout):
                while self._queue and await self._write(self._take(), requeue=True):
                    pass
        except TimeoutError:
            pass
        if self._queue:
            rows = list(self._queue)
            self._queue.clear()
            self._spill_now(rows)
            log.warning("usage ledger: %d rows spilled to %s at shutdown; replayed at next start",
                        len(rows), self._own.path)
        self._closed = True
        with contextlib.suppress(Exception):
            await self.store.close()
        for f in self._adopted:
            f.release()
        self._own.release()
        self._rejects.release()
        atexit.unregister(self._atexit)
        log.info("usage ledger closed: %d rows written, %d spilled, %d write errors",
                 self.written_rows_total, self.spilled_rows_total, self.write_errors_total)

    def _atexit(self) -> None:
        # Safety net for an exit that skipped close() (a forced second Ctrl-C): keep the queue on disk.
        if self._queue:
            rows = list(self._queue)
            self._queue.clear()
            self._spill_now(rows)

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
            while self._queue:
                if not await self._write(self._take(), requeue=True):
                    break
                if len(self._queue) < self.batch_rows:
                    # Rows that came in during the write wait for the next tick: under steady traffic
                    # one round trip per interval, not a stream of one-row inserts back to back.
                    break
        if len(self._queue) > self.queue_max_rows:
            await self._spill_overflow()
        if self._down_since is None and len(self._queue) < self.batch_rows:
            await self._replay()
            await self._prune_if_due()
        elif self._down_since is not None and now - self._last_down_log >= 30:
            self._last_down_log = now
            log.warning("usage database still unavailable after %.0fs: %d rows queued, %d spilled, %d write errors",
                        now - self._down_since, len(self._queue), self.spilled_rows_total, self.write_errors_total)

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
        if time.monotonic() < self._retry_at:
            if requeue:
                self._queue.extendleft(reversed(rows))
            return False
        try:
            async with asyncio.timeout(self.write_timeout):
                await self._ensure_ready()
                inserted = await self.store.write(rows)
        except Exception as exc:
            if self._ready and self.store.is_row_error(exc):
                await self._write_each(rows)
                return True
            if requeue:
                self._queue.extendleft(reversed(rows))
            self._failed(exc)
            return False
        self._succeeded()
        self.written_rows_total += inserted
        self.duplicate_rows_total += len(rows) - inserted
        return True

    async def _write_each(self, rows: list[UsageRecord]) -> None:
        """A batch the database refused for its data: find the bad rows, keep them aside, write the rest."""
        rejected: list[UsageRecord] = []
        for row in rows:
            try:
                async with asyncio.timeout(self.write_timeout):
                    inserted = await self.store.write([row])
            except Exception as exc:
                if not self.store.is_row_error(exc):
                    raise  # the database went away mid-way: the caller's retry covers the batch
                log.error("usage row %s rejected by the database (%s); kept in %s",
                          row.request_id, exc, self._rejects.path)
                rejected.append(row)
                continue
            self.written_rows_total += inserted
            self.duplicate_rows_total += 1 - inserted
        if rejected:
            self.rejected_rows_total += len(rejected)
            await asyncio.to_thread(self._spill_to, self._rejects, rejected)

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
            self._next_scan = 0.0  # look for spill files right away
        self._backoff = 0.0
        self._retry_at = 0.0

    # --- spill and replay -----------------------------------------------------------------------------------------

    async def _spill_overflow(self) -> None:
        excess = len(self._queue) - self.queue_max_rows
        rows = [self._queue.popleft() for _ in range(excess)]
        try:
            await asyncio.to_thread(self._spill_to, self._own, rows)
        except OSError as exc:
            # Disk trouble too: memory is the last place left, so the rows go back to the queue.
            self._queue.extendleft(reversed(rows))
            self.spill_errors_total += 1
            log.error("usage ledger: cannot spill to %s (%s); %d rows kept in memory", self._own.path, exc,
                      len(self._queue))
            return
        self.spilled_rows_total += len(rows)
        log.warning("usage ledger: queue over %d rows while the database is unavailable; spilled %d rows to %s",
                    self.queue_max_rows, len(rows), self._own.path)

    def _spill_to(self, target: SpillFile, rows: list[UsageRecord]) -> None:
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        target.append(rows)

    def _spill_now(self, rows: list[UsageRecord]) -> None:
        """Synchronous spill, for shutdown paths only."""
        try:
            self._spill_to(self._own, rows)
            self.spilled_rows_total += len(rows)
        except OSError as exc:
            self.spill_errors_total += 1
            log.critical("usage ledger: LOST %d usage rows: cannot write %s (%s)", len(rows), self._own.path, exc)
        finally:
            if self._closed:
                self._own.release()  # let the next ledger adopt the file

    def _scan(self) -> None:
        """Adopt spill files whose owner is gone (their lock is free)."""
        if not self.spill_dir.is_dir():
            return
        held = {self._own.path} | {f.path for f in self._adopted}
        for path in sorted(self.spill_dir.glob(f"{SPILL_PREFIX}*.jsonl")):
            if path in held:
                continue
            candidate = SpillFile(path, own=False)
            if candidate.lock():
                self._adopted.append(candidate)
                log.info("usage ledger: replaying %s (%d bytes) left by a stopped process", path, candidate.size())

    async def _replay(self) -> None:
        """Replay spilled rows a few batches per cycle, so fresh rows are never kept waiting long."""
        now = time.monotonic()
        if now >= self._next_scan:
            self._next_scan = now + 30
            await asyncio.to_thread(self._scan)
        budget = 8
        for source in [self._own, *self._adopted]:
            while budget > 0 and source.pending:
                records, offset, bad = await asyncio.to_thread(source.read, self.batch_rows)
                budget -= 1
                self.unreadable_spill_lines_total += bad
                if bad:
                    log.error("usage ledger: %d unreadable lines in %s skipped", bad, source.path)
                if records and not await self._write(records, requeue=False):
                    return  # the rows are still in the file; the offset is unchanged
                self.replayed_rows_total += len(records)
                source.offset = offset
                if offset >= await asyncio.to_thread(source.size):
                    await asyncio.to_thread(source.finish)
                    if not source.own:
                        self._adopted.remove(source)
                        log.info("usage ledger: finished replaying %s", source.path)
                    break

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
