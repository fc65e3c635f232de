"""Limits enforced in-process while the shared store (Redis) is unreachable, under ``on_store_error = "local"``.

While Redis answers, this replica keeps a shadow of what it took from it: per rpm/tpm limit a GCRA
bucket at the replica's share of the limit (``limit / expected_replicas``) filled by its own
admissions (requests checked by Redis, lease grants, later corrections), and per budget the spend
Redis last reported. When Redis stops answering, the same buckets start refusing: a replica admits
what its share allows minus what it had already used. What it admits is counted; once Redis answers
a PING again the counts are added to the shared counters (so the rest of the window accounts for
them), and only then are requests checked by Redis again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from proxy.limits.checks import BUDGET_SLACK_USD, GCRA_SLACK_S, PARALLEL_RETRY_S, WINDOW_S, Check, Denial, Plan, Ticket
from proxy.limits.store import Backend, SpendUnknown

PROBE_S = 0.25  # while degraded, Redis is pinged this often (requests do not wait on it meanwhile)
SHADOW_MAX = 100_000  # limits shadowed; past it the shadow starts over (a stall then allows a whole share)
RECONCILE_ID = "reconcile"  # the request id of the zero-amount checks that make sure a counter exists


class Degraded:
    """The shadow buckets, the local admissions not yet in the store, and whether the replica is degraded."""

    __slots__ = ("admitted", "budget_share", "clock", "owed", "replicas", "since", "slots", "spent", "tats",
                 "tickets")

    def __init__(self, replicas: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        self.replicas = replicas
        self.clock = clock
        self.since: float | None = None  # monotonic start of the current degraded spell; None while Redis answers
        self.tats: dict[str, float] = {}  # rpm/tpm store key -> theoretical arrival time of this replica's share
        self.spent: dict[str, float] = {}  # budget store key -> the key's spend as Redis last reported it
        self.budget_share: dict[str, float] = {}  # budget store key -> this replica's ceiling for this spell
        self.slots: dict[str, set[str]] = {}  # max_parallel store key -> request ids admitted locally
        self.owed: dict[str, tuple[Check, float]] = {}  # store key -> (check, units admitted locally, not in Redis)
        self.tickets: dict[str, list[Check]] = {}  # request id -> checks of a ticket admitted locally
        self.admitted = 0  # requests admitted locally in the current spell

    @property
    def active(self) -> bool:
        return self.since is not None

    def start(self) -> None:
        if self.since is None:
            self.since = self.clock()
            self.budget_share.clear()
            self.admitted = 0

    # while Redis answers: the shadow -------------------------------------------------------------------

    def seen(self, checks: list[Check], results: list[float], grants: list[float] | None) -> None:
        """A request the store admitted (and the lease units it granted with it) joins the shadow."""
        now = self.clock()
        tats = self.tats
        if len(tats) >= SHADOW_MAX:
            tats.clear()
        for i, check in enumerate(checks):
            if check.kind == "gcra":
                units = check.amount + (grants[i] if grants else 0.0)
                tat = max(tats.get(check.key, now), now) + units * WINDOW_S * self.replicas / check.limit
                tats[check.key] = min(tat, now + WINDOW_S)  # a full bucket: older use is forgotten
            elif check.kind == "budget":
                self.spend(check.key, check.limit - results[2 * i], True)  # the key's spend after this request

    def corrected(self, check: Check, delta: float) -> None:
        """A correction owed to the store (real usage in place of a reservation, lease units given back)."""
        if check.kind == "gcra":
            tat = self.tats.get(check.key)
            if tat is not None:
                self.tats[check.key] = max(self.clock(), tat + delta * WINDOW_S * self.replicas / check.limit)
        elif check.kind == "budget" and check.key in self.spent:
            self.spent[check.key] += delta

    def spend(self, key: str, value: float, latest: bool = False) -> None:
        """A budget's spend: as Redis reported it (``latest``), or as the ledger had it at start."""
        if len(self.spent) >= SHADOW_MAX:
            self.spent.clear()
        if latest or key not in self.spent:
            self.spent[key] = value

    # while Redis is unreachable: admissions ------------------------------------------------------------

    def admit(self, plan: Plan, held: Callable[[str], int]) -> Denial | Ticket:
        """Check every limit of the plan against this replica's share and, if all pass, take them.
        ``held`` counts this replica's requests in flight under a max_parallel key that Redis admitted.
        Raises SpendUnknown for a budget this replica never learnt the spend of."""
        now = self.clock()
        tats, spends = self.tats, self.spent
        results: list[float] = []
        new: list[float] = []
        for check in plan.checks:
            if check.kind == "gcra":
                share = check.limit / self.replicas
                step = WINDOW_S / share
                value = max(tats.get(check.key, now), now) + check.amount * step
                if value - now > WINDOW_S + GCRA_SLACK_S:
                    wait = value - WINDOW_S - now
                    return Denial(check, WINDOW_S if check.amount > share else wait)
                new.append(value)
                results += ((now + WINDOW_S - value) / step, value - now)
            elif check.kind == "parallel":
                taken = len(self.slots.get(check.key, ())) + held(check.key)
                share = max(1, int(check.limit) // self.replicas)
                if taken + 1 > share:
                    return Denial(check, PARALLEL_RETRY_S)
                new.append(0.0)
                results += (share - taken - 1, 0.0)
            else:
                spent = spends.get(check.key)
                if spent is None:
                    raise SpendUnknown(check)
                ceiling = self.budget_share.get(check.key)
                if ceiling is None:  # this spell's share of what was left of the budget when it began
                    ceiling = self.budget_share[check.key] = spent + max(0.0, check.limit - spent) / self.replicas
                if spent + check.amount > ceiling + BUDGET_SLACK_USD:
                    return Denial(check, check.ttl_s)
                new.append(spent + check.amount)
                results += (ceiling - spent - check.amount, check.ttl_s)
        for check, value in zip(plan.checks, new, strict=True):
            if check.kind == "parallel":
                self.slots.setdefault(check.key, set()).add(plan.request_id)
                continue
            (tats if check.kind == "gcra" else spends)[check.key] = value
            self._owe(check, check.amount)
        self.tickets[plan.request_id] = plan.checks
        self.admitted += 1
        return Ticket(plan.request_id, plan.checks, results, plan.tokens, plan.cost)

    def settle(self, ticket: Ticket, used_tokens: int, cost: float) -> bool:
        """Whether the ticket was admitted in this degraded spell and is now settled here: its slot
        freed, its real usage in place of its reservation, locally and in what is owed to Redis."""
        checks = self.tickets.pop(ticket.request_id, None)
        if checks is None:
            return False
        for check in checks:
            if check.kind == "parallel":
                self.slots.get(check.key, set()).discard(ticket.request_id)
                continue
            if check.unit == "tokens":
                delta = used_tokens - ticket.reserved_tokens
            elif check.unit == "usd":
                delta = cost - ticket.reserved_cost
            else:
                continue
            if delta:
                self.corrected(check, delta)
                self._owe(check, delta)
        return True

    def _owe(self, check: Check, units: float) -> None:
        seen = self.owed.get(check.key)
        self.owed[check.key] = (check, units if seen is None else seen[1] + units)

    # when Redis answers again ----------------------------------------------------------------------------

    async def reconcile(self, backend: Backend) -> None:
        """Add what was admitted locally to the store's counters, then leave the degraded spell.
        Raises StoreUnavailable if the store fails meanwhile (what was not added yet stays owed)."""
        while self.owed:
            owed, self.owed = self.owed, {}
            try:
                while owed:
                    key, (check, units) = next(iter(owed.items()))
                    await self._add(backend, check, units)
                    del owed[key]
            except BaseException:
                for check, units in owed.values():
                    self._owe(check, units)
                raise
        self.since = None
        self.tickets.clear()  # a ticket still running settles with Redis: its reservation is there now
        self.slots.clear()

    @staticmethod
    async def _add(backend: Backend, check: Check, units: float) -> None:
        """``units`` more on the store's counter of ``check``. A zero-amount check first makes sure the
        counter exists (a correction to a missing rpm/tpm key would be dropped); a budget the store no
        longer holds is left to the ledger's re-read, which counts these requests' rows."""
        if units <= 0:
            return
        probe = Check(check.scope, check.kind, check.key, check.limit, 0.0, check.unit, check.ttl_s)
        try:
            await backend.acquire([probe], RECONCILE_ID, None)
        except SpendUnknown:
            return
        await backend.settle([(check, units, "")])
