"""Rate limits, concurrency limits and budgets: exact across replicas with Redis, the same in-process.

Semantics (identical in both backends):
- rpm and tpm use GCRA over a ``WINDOW_S`` window: a limit of N per minute allows a burst of N at once,
  then refills continuously. It is exact (no fixed-window edge doubling) and keeps one number per
  scope. TPM reserves the request's estimated prompt tokens plus its max_tokens (or the target's
  default_max_tokens) before the call, and settles to the real usage after it.
- max_parallel counts a key's requests in flight. A slot lives ``PARALLEL_SLOT_TTL_S`` unless renewed;
  each replica renews all of its running requests' slots in one call every ``PARALLEL_RENEW_S``, so
  a replica that dies frees its slots within seconds.
- budgets reserve the request's worst-case cost (estimated prompt plus max_tokens at the priciest
  target) against the spend so far in the current period (UTC day, UTC month, or total), and settle
  to the row's real cost afterwards. Spend starts from the usage ledger's rows for the period, and a
  spend the store no longer holds (lost with Redis's data, or a new period) is read from it again
  before the request is checked.
- Every scope of a request is checked, and only if all pass reserved, atomically: in Redis by one Lua
  script (one round trip; all key names share one hash tag so the script is legal on Redis Cluster).
  The check comes before the upstream call; settling happens after the response, off the request path.
- A request is either admitted from this replica's leases (``admit_here``, no round trip) or checked
  by one store call (``admit``). Under steady traffic a replica takes leases: a request that goes to
  Redis also asks for a small block of each rpm/tpm limit's room (about ``LEASE_HORIZON_S`` of this
  replica's recent demand, at most ``LEASE_LIMIT_SHARE`` of the limit, and only while
  ``LEASE_FREE_SHARE`` of the window stays free after it). Requests that find a lease empty while
  its refill is on its way wait for that call rather than each making one; after an ask is refused
  (near the limit), none is made for ``LEASE_HORIZON_S``, so nothing waits. What a lease has left after
  ``LEASE_HOLD_S`` goes back to Redis. Leased units are counted in Redis when granted, so the replicas
  together never admit more than a limit; near a limit no leases are granted, and a replica may refuse
  early by at most what other replicas still hold. Keys with a budget or max_parallel, and requests
  that come slower than one per ``LEASE_AFTER_S``, are checked one by one.
- While Redis does not answer, ``on_store_error`` decides: "allow" admits, "deny" refuses (503), and
  "local" (the default) checks every limit in-process at this replica's share (``degraded``), counts
  what it admits, and adds it to Redis's counters when Redis answers again.

Modules: ``checks`` (the types and pure helpers), ``planner`` (a request's checks), ``memory`` and
``redis_backend`` (the stores, behind ``store.Backend``), ``leases``, ``settlements`` (corrections sent
in batches), ``heartbeat`` (slot renewals), ``refusals`` (the client-facing errors), ``outage`` (store
outages logged once), ``degraded`` (limits in-process while Redis is away), ``limiter`` (``Limits``,
composing them), ``seeding`` (budgets from the ledger at start) and ``reseed`` (a lost spend read again).
"""

from proxy.limits.checks import Check, Denial, Plan, Ticket, duration, period_of
from proxy.limits.limiter import Limits
from proxy.limits.memory import MemoryBackend
from proxy.limits.redis_backend import RedisBackend
from proxy.limits.seeding import seed_budgets
from proxy.limits.store import SpendUnknown, StoreUnavailable

__all__ = ["Check", "Denial", "Limits", "MemoryBackend", "Plan", "RedisBackend", "SpendUnknown", "StoreUnavailable",
           "Ticket", "duration", "period_of", "seed_budgets"]
