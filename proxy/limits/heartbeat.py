"""Slots of max_parallel kept alive while their requests run: a slot lives ``PARALLEL_SLOT_TTL_S`` in the
store unless renewed, so a replica that dies (kill -9, a lost host) frees its slots within seconds, and
the live replica renews all of its slots in one store call every ``PARALLEL_RENEW_S``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from proxy.limits.checks import PARALLEL_HOLD_MAX_S, PARALLEL_RENEW_S, Check
from proxy.limits.store import Backend, StoreUnavailable

RENEW_BATCH_MAX = 500  # slots per script call


class Heartbeat:
    """This replica's held slots by request id, and the task that renews them while there are any."""

    __slots__ = ("backend", "held", "on_error", "on_success", "task")

    def __init__(self, backend: Backend, on_error: Callable[[StoreUnavailable], None],
                 on_success: Callable[[], None]) -> None:
        self.backend = backend
        self.on_error = on_error
        self.on_success = on_success
        self.held: dict[str, tuple[Check, float]] = {}  # request id -> its slot's check, when it was taken
        self.task: asyncio.Task[None] | None = None

    def hold(self, request_id: str, check: Check) -> None:
        self.held[request_id] = (check, time.monotonic())
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._run())

    def drop(self, request_id: str) -> None:
        self.held.pop(request_id, None)

    async def _run(self) -> None:
        while self.held:
            await asyncio.sleep(PARALLEL_RENEW_S)
            await self.renew()

    async def renew(self) -> None:
        """One renewal of every slot held (a slot held past PARALLEL_HOLD_MAX_S, whose request was never
        settled, is let go instead)."""
        too_old = time.monotonic() - PARALLEL_HOLD_MAX_S
        slots: list[tuple[Check, str]] = []
        for request_id, (check, since) in list(self.held.items()):
            if since < too_old:
                del self.held[request_id]
            else:
                slots.append((check, request_id))
        for start in range(0, len(slots), RENEW_BATCH_MAX):
            try:
                await self.backend.renew(slots[start:start + RENEW_BATCH_MAX])
            except StoreUnavailable as exc:
                self.on_error(exc)
                return
        if slots:
            self.on_success()

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
