"""The ledger's journal: every usage row on local disk before the database has it.

The ``Journaler`` task appends the rows submitted since its last tick in one write and one
``fdatasync`` per tick (group commit), then hands them to the ledger's queue, so a crash (``kill -9``,
power loss) loses at most the rows of the tick under way. The file is the spill-file format (JSON
lines, ``flock``'ed by its owner): a journal whose owner is gone is adopted and replayed like a spill
file, and replays are harmless because inserts are ``ON CONFLICT (request_id) DO NOTHING``. The file
is truncated once the database has all its rows (nothing journaled is queued or being written), and
rewritten with only the pending rows when it has grown mostly stale (a queue that never empties).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from proxy.records import UsageRecord
from proxy.spill import JOURNAL_PREFIX, SpillFile

log = logging.getLogger("gateway.ledger")


class Journal:
    """One process's journal file. Not asyncio: the Journaler calls it from a worker thread, one call
    at a time."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.file: SpillFile | None = None
        self.rows = 0  # rows in the current file

    def _open_new(self) -> SpillFile:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{JOURNAL_PREFIX}{os.getpid()}-{os.urandom(4).hex()}.jsonl"
        file = SpillFile(self.directory / name, own=True)
        if not file.lock():
            raise OSError(f"cannot create {file.path}")
        _sync_dir(self.directory)  # a new file's name must survive a power loss too, not only its bytes
        return file

    def append(self, rows: list[UsageRecord]) -> None:
        """One write and one fdatasync for the whole batch."""
        if self.file is None:
            self.file = self._open_new()
        self.file.append(rows, sync=os.fdatasync)
        self.rows += len(rows)

    def truncate(self) -> None:
        """Every row in the file is in the database (or in a spill or reject file): start it over."""
        if self.file is not None and self.rows:
            self.file.finish()
            self.rows = 0

    def rewrite(self, pending: list[UsageRecord]) -> None:
        """A new file holding only ``pending``, then the old one deleted: a crash in between leaves both,
        which only replays some rows twice (ignored by the database)."""
        old, old_rows = self.file, self.rows
        self.file, self.rows = None, 0
        try:
            if pending:
                self.append(pending)
        except OSError:
            if self.file is not None:  # half written: the old file still has every row
                with contextlib.suppress(OSError):
                    os.unlink(self.file.path)
                self.file.release()
            self.file, self.rows = old, old_rows
            raise
        if old is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(old.path)
            old.release()

    def remove(self) -> None:
        """At a clean shutdown, with every row in the database or a spill file."""
        self.rewrite([])

    def release(self) -> None:
        """Let go of the file without deleting it: the next ledger to start replays it."""
        if self.file is not None:
            self.file.release()


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journaler:
    """The journal's task. ``fresh`` is where the ledger's ``submit`` appends; every ``interval`` (or when
    ``wake`` is set: a full batch, a strict waiter) those rows are journaled and moved to ``queue``.
    ``writing()`` names the rows the ledger took from the queue but the database does not have yet."""

    def __init__(self, directory: Path, interval: float, batch_rows: int, queue: deque[UsageRecord],
                 writing: Callable[[], list[UsageRecord]], journaled: Callable[[bool], None]) -> None:
        self.journal = Journal(directory)
        self.interval = interval
        self.batch_rows = batch_rows
        self.queue = queue
        self.writing = writing
        self.journaled = journaled  # called after each tick; True when the timer (not a waiter) woke it
        self.fresh: list[UsageRecord] = []  # submitted, not journaled yet
        self.wake: asyncio.Event | None = None
        self.task: asyncio.Task[None] | None = None
        self.stopping = False
        self._in_flight = False  # a write of rows is under way in a thread
        self._next_sync: asyncio.Future[None] | None = None  # resolved once ``fresh``'s rows are on disk
        self._sync_under_way: asyncio.Future[None] | None = None  # resolved when the write under way ends
        self._next_error_log = 0.0
        self.rows_total = 0
        self.errors_total = 0

    def start(self) -> None:
        self.wake = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name="usage-journal")

    async def stop(self) -> list[UsageRecord]:
        """Stop the task; the rows never journaled, for the ledger to write or spill itself."""
        self.stopping = True
        if self.wake is not None and self.task is not None:
            self.wake.set()
            await self.task
        rows, self.fresh = self.fresh, []
        return rows

    def release_waiters(self) -> None:
        """At shutdown, once the ledger has put every row in the database or a spill file."""
        for future in (self._next_sync, self._sync_under_way):
            if future is not None and not future.done():
                future.set_result(None)

    async def durable(self) -> None:
        """Wait until every row submitted so far is on disk. Waiters that come together share one write
        and one fdatasync: the task is woken now, not at its next tick."""
        if self.task is None or self.task.done() or self.wake is None:
            return  # not started, or stopped: the ledger spills synchronously then
        if self.fresh:
            if self._next_sync is None:
                self._next_sync = asyncio.get_running_loop().create_future()
            future = self._next_sync
            self.wake.set()
        elif self._in_flight:
            if self._sync_under_way is None:
                self._sync_under_way = asyncio.get_running_loop().create_future()
            future = self._sync_under_way
        else:
            return
        await asyncio.shield(future)  # one waiter cancelled must not cancel the others' future

    async def _run(self) -> None:
        assert self.wake is not None
        while not self.stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self.wake.wait()
            ticked = not self.wake.is_set()
            self.wake.clear()
            if self.stopping:
                break
            try:
                await self._tick()
            except Exception:
                log.exception("usage ledger: journal cycle failed")
            self.journaled(ticked)

    async def _tick(self) -> None:
        """Journal the rows submitted since the last tick (one write, one fdatasync), then queue them."""
        rows, self.fresh = self.fresh, []
        waiters, self._next_sync = self._next_sync, None
        writing = self.writing()
        pending = len(self.queue) + len(writing)  # journaled rows the database does not have yet
        journal = self.journal
        if not rows:
            if journal.rows and not pending:
                await self._io(journal.truncate)
        else:
            if journal.rows and not pending:
                action = functools.partial(_truncate_then_append, journal, rows)
            elif journal.rows > 2 * pending + self.batch_rows:  # mostly written already: keep only what is not
                action = functools.partial(journal.rewrite, [*writing, *self.queue, *rows])
            else:
                action = functools.partial(journal.append, rows)
            self._sync_under_way, self._in_flight = waiters, True
            try:
                if await self._io(action):
                    self.rows_total += len(rows)
            finally:
                self._in_flight = False
            self.queue.extend(rows)
            waiters, self._sync_under_way = self._sync_under_way, None
        if waiters is not None and not waiters.done():
            waiters.set_result(None)

    async def _io(self, action: Callable[[], None]) -> bool:
        try:
            await asyncio.to_thread(action)
        except OSError as exc:
            # The rows still go to the database; only their crash safety is lost: said once a minute.
            self.errors_total += 1
            now = time.monotonic()
            if now >= self._next_error_log:
                self._next_error_log = now + 60
                log.error("usage ledger: cannot write the journal in %s (%s); rows are not crash-safe until "
                          "it is writable (%d journal errors)", self.journal.directory, exc, self.errors_total)
            return False
        return True


def _truncate_then_append(journal: Journal, rows: list[UsageRecord]) -> None:
    journal.truncate()
    journal.append(rows)
