"""What the limiter needs from a store of limit state: the interface both backends implement."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from proxy.limits.checks import Check, Denial

if TYPE_CHECKING:
    from proxy.redis_client import Encoded

# A denial; or None, per check its remaining room and seconds to reset, and per check the lease units granted.
Verdict = tuple[Denial | None, list[float], list[float] | None]
# A check to correct, by how much (tokens or USD; 0 for a freed slot), and the request it was reserved by.
Settlement = tuple[Check, float, str]


class StoreUnavailable(Exception):
    """The store could not be reached or did not answer: the caller applies ``on_store_error``."""


class Backend(Protocol):
    remote: bool  # whether a check costs a round trip (and leases can save it)

    def wire(self, check: Check) -> Encoded | None:
        """The check's constants encoded once for the store, for checks shared by many requests."""

    async def acquire(self, checks: list[Check], request_id: str, asks: list[float] | None = None) -> Verdict:
        """Check every scope and, only if all pass, reserve them (and grant the lease units asked for)."""

    async def settle(self, entries: list[Settlement]) -> None:
        """Apply corrections: real usage in place of reservations, freed slots, unused leases."""

    async def seed(self, key: str, value: float, ttl_s: float) -> None:
        """Start a budget's spend at ``value`` unless it is already set."""

    async def ping(self) -> bool:
        """Whether the store answers right now."""

    async def aclose(self) -> None: ...
