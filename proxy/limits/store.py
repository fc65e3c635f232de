"""What the limiter needs from a store of limit state: the interface both backends implement."""

from __future__ import annotations

from typing import Protocol

from proxy.limits.checks import Check, Denial, Encoded

# A denial; or None, per check its remaining room and seconds to reset, and per check the lease units granted.
Verdict = tuple[Denial | None, list[float], list[float] | None]
# A check to correct, by how much (tokens or USD; 0 for a freed slot), and the request it was reserved by.
Settlement = tuple[Check, float, str]


class StoreUnavailable(Exception):
    """The store could not be reached or did not answer: the caller applies ``on_store_error``."""


class SpendUnknown(Exception):
    """A budget check found no spend in the store (lost with its data, or a period not seeded yet):
    nothing was reserved, and the caller re-reads the spend from the ledger before checking again."""

    def __init__(self, check: Check) -> None:
        super().__init__(check.key)
        self.check = check


class Backend(Protocol):
    remote: bool  # whether a check costs a round trip (and leases can save it)

    def wire(self, check: Check) -> Encoded | None:
        """The check's constants encoded once for the store, for checks shared by many requests."""

    async def acquire(self, checks: list[Check], request_id: str, asks: list[float] | None = None) -> Verdict:
        """Check every scope and, only if all pass, reserve them (and grant the lease units asked for).
        Raises SpendUnknown for a budget whose spend the store does not hold."""

    async def settle(self, entries: list[Settlement]) -> None:
        """Apply corrections: real usage in place of reservations, freed slots, unused leases."""

    async def renew(self, slots: list[tuple[Check, str]]) -> None:
        """Keep these max_parallel slots (check, request id) alive for another slot TTL."""

    async def release(self, request_ids: list[str]) -> None:
        """Take back the budget reservations of these requests, if their acquire (whose reply never
        came) did reserve them; a request released once is not released again."""

    async def seed(self, key: str, value: float, ttl_s: float) -> None:
        """Start a budget's spend at ``value`` unless it is already set."""

    async def ping(self) -> bool:
        """Whether the store answers right now."""

    async def aclose(self) -> None: ...
