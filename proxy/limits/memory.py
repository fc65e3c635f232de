"""The in-process store: the same arithmetic as the Redis scripts, on dicts, for a single replica."""

from __future__ import annotations

import time
from collections.abc import Callable

from proxy.limits.checks import (
    BUDGET_SLACK_USD,
    GCRA_SLACK_S,
    PARALLEL_RETRY_S,
    WINDOW_S,
    Check,
    Denial,
    gcra_retry,
)
from proxy.limits.store import Settlement, SpendUnknown, Verdict


class MemoryBackend:
    """``clock`` is injectable so tests can move time."""

    remote = False  # a check costs no round trip: leases would save nothing

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.values: dict[str, float] = {}  # GCRA key -> theoretical arrival time; budget key -> spend
        self.parallel: dict[str, dict[str, float]] = {}  # max_parallel key -> request id -> last renewed

    def wire(self, check: Check) -> None:
        return None

    async def acquire(self, checks: list[Check], request_id: str, asks: list[float] | None = None) -> Verdict:
        """Never grants leases: nothing to save in-process."""
        now = self.clock()
        results: list[float] = []
        new_values: list[float] = []
        for check in checks:
            if check.kind == "gcra":
                step = WINDOW_S / check.limit
                tat = max(self.values.get(check.key, now), now)
                new = tat + check.amount * step
                if new - now > WINDOW_S + GCRA_SLACK_S:
                    return Denial(check, gcra_retry(check, new - WINDOW_S - now)), [], None
                new_values.append(new)
                results += ((now + WINDOW_S - new) / step, new - now)
            elif check.kind == "parallel":
                slots = self.parallel.setdefault(check.key, {})
                for rid, started in list(slots.items()):
                    if started < now - check.ttl_s:
                        del slots[rid]
                if len(slots) + 1 > check.limit:
                    return Denial(check, PARALLEL_RETRY_S), [], None
                new_values.append(0.0)
                results += (check.limit - len(slots) - 1, 0.0)
            else:
                spent = self.values.get(check.key)
                if spent is None:
                    raise SpendUnknown(check)
                if spent + check.amount > check.limit + BUDGET_SLACK_USD:
                    return Denial(check, check.ttl_s), [], None
                new_values.append(spent + check.amount)
                results += (check.limit - spent - check.amount, check.ttl_s)
        for check, value in zip(checks, new_values, strict=True):
            if check.kind == "parallel":
                self.parallel[check.key][request_id] = now
            else:
                self.values[check.key] = value
        return None, results, None

    async def settle(self, entries: list[Settlement]) -> None:
        now = self.clock()
        for check, delta, request_id in entries:
            if check.kind == "parallel":
                self.parallel.get(check.key, {}).pop(request_id, None)
            elif check.kind == "gcra" and check.key in self.values:
                self.values[check.key] = max(now, self.values[check.key] + delta * WINDOW_S / check.limit)
            elif check.kind == "budget":
                self.values[check.key] = self.values.get(check.key, 0.0) + delta

    async def renew(self, slots: list[tuple[Check, str]]) -> None:
        now = self.clock()
        for check, request_id in slots:
            held = self.parallel.get(check.key)
            if held is not None and request_id in held:
                held[request_id] = now

    async def release(self, request_ids: list[str]) -> None:
        pass  # an in-process acquire always answers: nothing is ever in doubt

    async def seed(self, key: str, value: float, ttl_s: float) -> None:
        self.values.setdefault(key, value)

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        pass
