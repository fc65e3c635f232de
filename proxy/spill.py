"""Spill files: usage rows kept on disk, one JSON object a line, while the database cannot take them."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import orjson

from proxy.records import UsageRecord

_FIELDS = frozenset(f.name for f in fields(UsageRecord))
SPILL_PREFIX = "usage-spill-"
REJECT_PREFIX = "usage-rejected-"
JOURNAL_PREFIX = "usage-journal-"  # proxy.journal: the same format, adopted and replayed the same way


class SpillFile:
    """One append-only JSON-lines file, locked by whoever writes or replays it."""

    def __init__(self, path: Path, own: bool) -> None:
        self.path = path
        self.own = own  # ours to append to (created on first use); else adopted from a stopped process
        self.fd: int | None = None  # open and flock'ed while we hold it
        self.offset = 0  # bytes already replayed
        self.pending = not own  # rows that may still need replaying

    def lock(self) -> bool:
        if self.fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | (os.O_CREAT if self.own else 0), 0o600)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # The previous owner may have deleted the file between our open and our lock.
            if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                raise FileNotFoundError(self.path)
        except OSError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def append(self, records: list[UsageRecord], sync: Callable[[int], None] = os.fsync) -> None:
        """All the records in one write, then one ``sync`` (fsync, or the journal's fdatasync)."""
        if not self.lock():
            raise OSError(f"cannot lock {self.path}")
        assert self.fd is not None
        data = b"".join([orjson.dumps(r) + b"\n" for r in records])
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        sync(self.fd)
        self.pending = True

    def read(self, max_rows: int) -> tuple[list[UsageRecord], int, int]:
        """Up to max_rows records after ``offset``: (records, new offset, unreadable lines)."""
        records: list[UsageRecord] = []
        bad = 0
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            offset = self.offset
            while len(records) < max_rows:
                line = f.readline()
                if not line:
                    break
                if not line.endswith(b"\n"):
                    # A torn final line from a crashed writer: nothing can complete it any more
                    # once we hold the lock, so it is counted as unreadable and skipped.
                    bad += 1
                    offset += len(line)
                    break
                offset += len(line)
                record = decode_row(line)
                if record is None:
                    bad += 1
                else:
                    records.append(record)
        return records, offset, bad

    def size(self) -> int:
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            return 0

    def finish(self) -> None:
        """All rows replayed: empty our own file, or delete an adopted one."""
        if not self.own:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.release()
        elif self.fd is not None:
            os.ftruncate(self.fd, 0)
        self.offset = 0
        self.pending = False

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def decode_row(line: bytes) -> UsageRecord | None:
    try:
        data = orjson.loads(line)
        return UsageRecord(**{k: v for k, v in data.items() if k in _FIELDS})
    except (orjson.JSONDecodeError, TypeError, AttributeError):
        return None
