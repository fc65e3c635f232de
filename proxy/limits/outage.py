"""An outage of a store the limits depend on, logged once when it starts, then as a periodic summary
while it lasts, and once when it ends: never a line per request."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("gateway.limits")

OUTAGE_SUMMARY_S = 30.0  # while a store stays down, one summary line this often


class Outage:
    """The state of one store (``what`` names it in the log lines); ``failed`` on every error, ``recovered``
    on a success while it is down."""

    __slots__ = ("down_since", "errors", "last_error", "last_log", "what")

    def __init__(self, what: str) -> None:
        self.what = what
        self.down_since: float | None = None  # monotonic; None while the store answers
        self.errors = 0  # errors since the last line
        self.last_error = ""
        self.last_log = 0.0

    def failed(self, exc: BaseException | str, doing: str) -> None:
        now = time.monotonic()
        self.errors += 1
        self.last_error = str(exc)
        if self.down_since is None:
            self.down_since = self.last_log = now
            self.errors = 0
            log.warning("%s unavailable while %s: %s (logged again every %.0fs while it lasts)", self.what, doing,
                        exc, OUTAGE_SUMMARY_S)
        elif now - self.last_log >= OUTAGE_SUMMARY_S:
            log.warning("%s still unavailable after %.0fs: %d errors in the last %.0fs, the latest: %s", self.what,
                        now - self.down_since, self.errors, now - self.last_log, self.last_error)
            self.last_log, self.errors = now, 0

    def recovered(self, note: str = "") -> None:
        if self.down_since is not None:
            log.warning("%s is back after %.1fs%s", self.what, time.monotonic() - self.down_since,
                        f"; {note}" if note else "")
            self.down_since, self.errors = None, 0
