"""Leases: room of rpm/tpm limits this replica takes from the store ahead of its requests, so steady
traffic is admitted in-process without a round trip per request."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from proxy.limits.checks import Check, Plan, Ticket
from proxy.limits.settlements import Settlements

LEASE_AFTER_S = 0.005  # a check whose requests come closer together than this starts taking leases
LEASE_FIRST = 4  # the first lease of a check: this many requests' worth
LEASE_HORIZON_S = 0.02  # later leases: about this long of the demand seen while the last one lasted
LEASE_LIMIT_SHARE = 0.01  # and never more than this share of the limit
LEASE_FREE_SHARE = 0.25  # the store grants a lease only while this share of the window stays free after it
LEASE_HOLD_S = 0.5  # what a lease has left after this long goes back to the store
LEASE_WAIT_S = 1.0  # a lease asked for and not answered within this long is asked for again
LEASE_WAITS_MAX = 3  # a request finding its lease empty waits for at most this many grants, then asks the store
LEASES_MAX = 10_000  # limits with a lease remembered; all are given back when full


@dataclass(slots=True)
class Lease:
    """Room of one rpm or tpm limit that this replica took from the store ahead of its requests."""

    left: float = 0.0  # units this replica may still admit without asking the store
    until: float = 0.0  # monotonic: no admits from it after this; what is left goes back
    remaining: float = 0.0  # the limit's room in the store after the grant, for x-ratelimit-remaining
    reset_at: float = 0.0  # monotonic: when the limit's window would be whole again, as of the grant
    granted_at: float = 0.0
    size: float = 0.0  # units of the latest grant (0: none since the last give-back)
    asked_until: float = 0.0  # monotonic: a grant is on its way until then
    refused_until: float = 0.0  # monotonic: an ask refused or failed; no other until then (near a limit)
    last_ask: float = 0.0  # monotonic: the latest request of this limit that went to the store
    check: Check | None = None  # the limit as of the latest grant (what a give-back is settled by)
    limit: float = 0.0  # its value: a lease serves only requests checked against the same limit (0: none)
    answered: asyncio.Future[None] | None = None  # done when the grant on its way arrives (or fails)


class Leases:
    """This replica's leases, by the store key of their limit; unused units go back through ``settlements``."""

    __slots__ = ("by_key", "settlements")

    def __init__(self, settlements: Settlements) -> None:
        self.by_key: dict[str, Lease] = {}
        self.settlements = settlements

    def admit(self, plan: Plan) -> Ticket | None:
        """A Ticket if the leases hold room for every check of the plan (taken from them now); else
        None, and the plan goes to the store, asking for leases where its checks see steady traffic, or
        first waits (``plan.wait``) for a grant already on its way to a check it lacks room in."""
        if not plan.leasable:
            return None
        now = time.monotonic()
        leases = self.by_key
        for check in plan.checks:
            lease = leases.get(check.key)
            if lease is None or lease.left < check.amount or lease.until < now or lease.limit != check.limit:
                plan.asks = self._asks(plan.checks, now)
                if plan.asks is None and lease is not None and lease.asked_until >= now:
                    plan.wait = lease.answered
                return None
        results: list[float] = []
        for check in plan.checks:
            lease = leases[check.key]
            lease.left -= check.amount
            reset_s = lease.reset_at - now
            results += (lease.remaining + lease.left, reset_s if reset_s > 0 else 0.0)
        return Ticket(plan.request_id, plan.checks, results, plan.tokens, plan.cost)

    def _asks(self, checks: list[Check], now: float) -> list[float] | None:
        """Per check, the lease units to ask for with a request that goes to the store: none for a
        check whose requests come slowly, or whose last ask is still on its way; else enough for
        about LEASE_HORIZON_S at the pace the last lease was used up, at most LEASE_LIMIT_SHARE of
        the limit and at least two requests' worth."""
        asks: list[float] = []
        for check in checks:
            lease = self.by_key.get(check.key)
            if lease is None:
                if len(self.by_key) >= LEASES_MAX:
                    self.give_back_all()
                lease = self.by_key[check.key] = Lease()
            gap, lease.last_ask = now - lease.last_ask, now
            if lease.limit and lease.limit != check.limit:  # the limit changed (a reload, the admin API)
                self._give_back(lease)
            want = 0.0
            if lease.asked_until < now and lease.refused_until < now:
                if lease.size and now < lease.until:  # used up before it expired: size by its pace
                    want = lease.size * LEASE_HORIZON_S / max(now - lease.granted_at, 1e-4)
                elif gap < LEASE_AFTER_S:
                    want = LEASE_FIRST * check.amount
                want = float(int(min(want, LEASE_LIMIT_SHARE * check.limit)))
                if want < 2 * check.amount or want <= 0:
                    want = 0.0
                else:
                    lease.asked_until = now + LEASE_WAIT_S
                    self._expect(lease)
            asks.append(want)
        return asks if any(asks) else None

    def granted(self, plan: Plan, results: list[float] | None, grants: list[float] | None) -> None:
        """The store's answer to a plan's lease asks: what it granted joins the leases (and the
        request's own results show the room as if nothing were leased); an ask refused, failed or
        not granted is no longer on its way."""
        asks, plan.asks = plan.asks, None
        if asks is None:
            return
        now = time.monotonic()
        for i, check in enumerate(plan.checks):
            lease = self.by_key.get(check.key)
            if not asks[i] or lease is None:
                continue
            lease.asked_until = 0.0
            _answer(lease.answered)
            lease.answered = None
            got = grants[i] if grants and results else 0.0
            if not got:  # near the limit (or the store failed): the next requests go to it without waiting
                lease.refused_until = now + LEASE_HORIZON_S
                continue
            assert results is not None
            if lease.limit and lease.limit != check.limit:
                self._give_back(lease)
            lease.left += got
            lease.check, lease.limit, lease.size = check, check.limit, got
            lease.granted_at, lease.until = now, now + LEASE_HOLD_S
            lease.remaining, lease.reset_at = results[2 * i], now + results[2 * i + 1]
            results[2 * i] += lease.left
            asyncio.get_running_loop().call_later(LEASE_HOLD_S, self._expire, lease, now)

    @staticmethod
    def _expect(lease: Lease) -> None:
        """A future the requests that find the lease empty meanwhile wait on: one store call brings room
        for them all, where each would otherwise make its own (at high rates, several per grant). It is
        answered with the grant, or after LEASE_WAIT_S when the ask was lost."""
        _answer(lease.answered)  # an earlier ask's waiters, if it was never answered, go on now
        loop = asyncio.get_running_loop()
        lease.answered = loop.create_future()
        loop.call_later(LEASE_WAIT_S, _answer, lease.answered)

    def absorb(self, check: Check, delta: float) -> bool:
        """Whether a request's token correction fits this replica's lease of ``check``: tokens not used
        go back to the lease, more used come from it, and the store needs no correction."""
        lease = self.by_key.get(check.key)
        if lease is not None and lease.limit == check.limit and lease.left >= delta:
            lease.left -= delta
            return True
        return False

    def held(self) -> float:
        """Units all leases still hold."""
        return sum(lease.left for lease in self.by_key.values())

    def _expire(self, lease: Lease, granted_at: float) -> None:
        if lease.granted_at == granted_at:  # not renewed since: what is left goes back
            self._give_back(lease)

    def _give_back(self, lease: Lease) -> None:
        left, lease.left, lease.size, lease.limit = lease.left, 0.0, 0.0, 0.0
        check = lease.check
        if left > 0 and check is not None:
            self.settlements.owe(check, -left)
            self.settlements.send_soon(False)

    def give_back_all(self) -> None:
        """Every lease's unused units go back (at shutdown, or when too many limits are remembered)."""
        for lease in self.by_key.values():
            self._give_back(lease)
        self.by_key.clear()


def _answer(answered: asyncio.Future[None] | None) -> None:
    if answered is not None and not answered.done():
        answered.set_result(None)
