"""The limiter: plans a request's checks, admits it from leases or by one store call, and settles it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime

from proxy.client_request import ClientRequest
from proxy.limits.checks import Denial, Plan, Ticket, period_of
from proxy.limits.degraded import PROBE_S, Degraded
from proxy.limits.heartbeat import Heartbeat
from proxy.limits.leases import LEASE_WAITS_MAX, Leases
from proxy.limits.memory import MemoryBackend
from proxy.limits.outage import Outage
from proxy.limits.planner import Planner, budget_key
from proxy.limits.redis_backend import RedisBackend
from proxy.limits.refusals import rejection, store_unavailable
from proxy.limits.reseed import LedgerSpend, Reseeder, SpendSource
from proxy.limits.settlements import Settlements
from proxy.limits.store import Backend, SpendUnknown, StoreUnavailable
from proxy.observability.observer import Observer
from proxy.records import UsageRecord
from proxy.settings import Config, KeyConfig, ModelAlias

DOUBT_RELEASE_S = 1.0  # after the store answers again, the wait before a timed-out check's reservation is taken back
DOUBTFUL_MAX = 10_000  # timed-out budgeted checks remembered (their reservations expire from Redis in HELD_TTL_S)


class Limits:
    """Every limit of the gateway over one store. ``config`` is reassigned on reload; the state (the
    store's counts, this replica's leases and slots) outlives it. ``spend`` reads a key's spend from the
    usage ledger when the store has lost it (None: it starts again at 0)."""

    __slots__ = ("backend", "config", "degraded", "doubtful", "heartbeat", "leases", "observer", "outage", "planner",
                 "prober", "releaser", "reseeder", "settlements")

    def __init__(self, config: Config, backend: Backend, observer: Observer | None = None,
                 spend: SpendSource | None = None) -> None:
        self.config = config
        self.backend = backend
        self.observer = observer or Observer()  # told of refusals and store errors
        self.outage = Outage("limits store" + (" (Redis)" if backend.remote else ""))
        self.settlements = Settlements(backend, self._store_error)
        self.leases = Leases(self.settlements)
        self.planner = Planner(backend)
        self.heartbeat = Heartbeat(backend, lambda exc: self._store_error(exc, "renewing max_parallel slots"),
                                   self._store_back)
        self.reseeder = Reseeder(backend, spend)
        # on_store_error = "local": this replica's share of every limit, enforced here while Redis is away
        self.degraded = Degraded(config.limits.expected_replicas)
        if backend.remote:
            self.settlements.mirror = self.degraded.corrected
        self.prober: asyncio.Task[None] | None = None
        # Budgeted requests whose store check timed out: it may have reserved their worst-case cost
        # after all (Redis was slow, not gone), which is taken back once the store answers again.
        self.doubtful: list[str] = []
        self.releaser: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, config: Config, observer: Observer | None = None) -> Limits:
        url = config.storage.redis_url
        return cls(config, RedisBackend(url, config.storage) if url else MemoryBackend(), observer,
                   LedgerSpend(config.storage.database_url))

    def plan(self, key: KeyConfig | None, alias: ModelAlias, request: ClientRequest) -> Plan | None:
        """The checks for one request, or None when nothing limits it (no estimates, no store call)."""
        return self.planner.plan(self.config, key, alias, request)

    def admit_here(self, plan: Plan) -> Ticket | None:
        """A Ticket if this replica's leases hold room for every check of the plan; else None, and the
        plan must go to the store by ``admit`` (asking for leases where its checks see steady traffic)."""
        return self.leases.admit(plan)

    async def admit(self, plan: Plan) -> Ticket | None:
        """Check and reserve in one store call: a Ticket, None when the store is down and
        ``on_store_error = "allow"``, or a GatewayError (429, or 503 under ``"deny"``). A budget whose
        spend the store lost is re-read from the ledger first (one more round trip, rarely). Under
        ``"local"``, once the store failed, requests are checked in-process until it answers again. A
        plan whose lease is being refilled by another request's call waits for that call first."""
        if plan.wait is not None:  # another request's store call is bringing leases: share it
            ticket = await self._from_grants_on_their_way(plan)
            if ticket is not None:
                return ticket
        local = self.backend.remote and self.config.limits.on_store_error == "local"
        if local and self.degraded.active:
            self.leases.granted(plan, None, None)
            return self._admit_locally(plan)
        try:
            denial, results, grants = await self.backend.acquire(plan.checks, plan.request_id, plan.asks)
        except StoreUnavailable as exc:
            return self._unavailable(plan, exc)
        except SpendUnknown as unknown:
            return await self._admit_reseeded(plan, unknown)
        except BaseException:  # cancelled: a lease granted meanwhile is lost (it refills like any use)
            self.leases.granted(plan, None, None)
            raise
        if self.outage.down_since is not None and not self.degraded.active:
            self.outage.recovered()
        if self.doubtful:
            self._release_doubtful_soon()
        if local and denial is None:
            self.degraded.replicas = self.config.limits.expected_replicas  # a reload may change it
            self.degraded.seen(plan.checks, results, grants)
        return self._verdict(plan, denial, results, grants)

    async def _from_grants_on_their_way(self, plan: Plan) -> Ticket | None:
        """Waits for the lease grants other requests' store calls are bringing, a few at most, and
        takes room from them; None when they brought too little, and the plan goes to the store."""
        for _ in range(LEASE_WAITS_MAX):
            wait, plan.wait = plan.wait, None
            if wait is None:
                return None
            await asyncio.shield(wait)  # shielded: a waiter that is cancelled leaves the others waiting
            ticket = self.leases.admit(plan)
            if ticket is not None:
                return ticket
        plan.wait = None
        return None

    async def _admit_reseeded(self, plan: Plan, unknown: SpendUnknown) -> Ticket | None:
        """The budget's spend from the ledger into the store, then the check again; while the ledger
        cannot give it (the reseeder logs why), ``on_store_error`` decides as if the store were down."""
        assert plan.owner is not None
        try:
            user = plan.end_user if unknown.check.scope == "user_budget" else None
            if await self.reseeder.reseed(unknown.check, plan.owner, user):
                denial, results, grants = await self.backend.acquire(plan.checks, plan.request_id, plan.asks)
                if denial is None and self.backend.remote and self.config.limits.on_store_error == "local":
                    self.degraded.seen(plan.checks, results, grants)
                return self._verdict(plan, denial, results, grants)
        except StoreUnavailable as exc:
            return self._unavailable(plan, exc)
        except SpendUnknown:  # lost again at once: Redis is flapping
            pass
        self.leases.granted(plan, None, None)
        if self.config.limits.on_store_error != "allow":  # "local" too: the spend is unknown here as well
            raise store_unavailable()
        return None

    async def acquire(self, key: KeyConfig | None, alias: ModelAlias, request: ClientRequest) -> Ticket | None:
        """``plan`` then ``admit``, for callers that do not try the leases first."""
        plan = self.plan(key, alias, request)
        return None if plan is None else await self.admit(plan)

    def _unavailable(self, plan: Plan, exc: StoreUnavailable) -> Ticket | None:
        self.leases.granted(plan, None, None)
        if plan.owner is not None and self.backend.remote and len(self.doubtful) < DOUBTFUL_MAX:
            self.doubtful.append(plan.request_id)
        mode = self.config.limits.on_store_error
        self._store_error(exc, f"checking a request (on_store_error = {mode})")
        if mode == "deny":
            raise store_unavailable() from None
        if mode == "local" and self.backend.remote:
            self.degraded.start()
            if self.prober is None or self.prober.done():
                self.prober = asyncio.ensure_future(self._probe())
            return self._admit_locally(plan)
        return None

    def _admit_locally(self, plan: Plan) -> Ticket:
        """This replica's share of every limit of the plan, checked and taken in-process; 429 past it,
        503 for a budget whose spend this replica never learnt."""
        self.degraded.replicas = self.config.limits.expected_replicas
        try:
            verdict = self.degraded.admit(plan, self._held_slots)
        except SpendUnknown:
            raise store_unavailable() from None
        if isinstance(verdict, Denial):
            self.observer.ratelimited(verdict.check.scope)
            raise rejection(verdict)
        return verdict

    def _held_slots(self, key: str) -> int:
        """This replica's running requests that hold a max_parallel slot of ``key`` in the store."""
        return sum(1 for check, _ in self.heartbeat.held.values() if check.key == key)

    async def _probe(self) -> None:
        """While degraded: ping the store; once it answers, add what was admitted here to its counters
        and go back to it."""
        while self.degraded.active:
            await asyncio.sleep(PROBE_S)
            if not await self.backend.ping():
                self.outage.failed("no answer to PING", "probing it")  # a summary line every 30 s, no more
                continue
            admitted = self.degraded.admitted
            try:
                await self.degraded.reconcile(self.backend)
            except StoreUnavailable as exc:
                self._store_error(exc, "adding the requests admitted in-process to its counters")
                continue
            self.outage.recovered(f"{admitted} requests admitted in-process meanwhile were added to its counters")
            self._release_doubtful_soon()

    def _release_doubtful_soon(self) -> None:
        if self.doubtful and (self.releaser is None or self.releaser.done()):
            self.releaser = asyncio.ensure_future(self._release_doubtful(DOUBT_RELEASE_S))

    async def _release_doubtful(self, after_s: float) -> None:
        """Take back what the timed-out checks reserved, if they did. Not at once: a check that timed
        out may still be queued in Redis, behind what stalled it, on a connection of its own."""
        await asyncio.sleep(after_s)
        request_ids, self.doubtful = self.doubtful, []
        try:
            await self.backend.release(request_ids)
        except StoreUnavailable as exc:
            self.doubtful = (request_ids + self.doubtful)[:DOUBTFUL_MAX]
            self._store_error(exc, "taking back the reservations of budget checks that timed out")

    def _verdict(self, plan: Plan, denial: Denial | None, results: list[float],
                 grants: list[float] | None) -> Ticket:
        self.leases.granted(plan, None if denial else results, grants)
        if denial is not None:
            self.observer.ratelimited(denial.check.scope)
            raise rejection(denial)
        if plan.slot is not None:
            self.heartbeat.hold(plan.request_id, plan.slot)
        return Ticket(plan.request_id, plan.checks, results, plan.tokens, plan.cost)

    def _store_error(self, exc: BaseException, doing: str) -> None:
        self.observer.limits_store_error()
        self.outage.failed(exc, doing)

    def _store_back(self) -> None:
        if self.outage.down_since is not None and not self.degraded.active:
            self.outage.recovered()

    def settle(self, ticket: Ticket | None, record: UsageRecord, extra_records: Sequence[UsageRecord] = ()) -> None:
        """Replace reservations with what the request really used (``extra_records``: rows of hedge
        losers it also spent); the store hears of it in the background."""
        if ticket is None or ticket.settled:
            return
        ticket.settled = True
        used_tokens = record.prompt_tokens + record.completion_tokens
        cost = record.cost_usd or 0.0
        for row in extra_records:
            used_tokens += row.prompt_tokens + row.completion_tokens
            cost += row.cost_usd or 0.0
        if self.degraded.tickets and self.degraded.settle(ticket, used_tokens, cost):
            return  # admitted in-process: settled there, and in what is owed to the store
        urgent = settling = False
        settlements = self.settlements
        for check in ticket.checks:
            if check.kind == "parallel":
                settlements.release(check, ticket.request_id)
                self.heartbeat.drop(ticket.request_id)
                urgent = settling = True
                continue
            if check.unit == "tokens":
                delta = used_tokens - ticket.reserved_tokens
                if self.leases.absorb(check, delta):
                    continue
            elif check.unit == "usd":
                delta = cost - ticket.reserved_cost
            else:
                continue
            settlements.owe(check, delta)
            settling = True
        if settling:
            settlements.send_soon(urgent)

    async def flush(self) -> None:
        """Send every pending correction now."""
        await self.settlements.flush()

    async def store_state(self) -> str:
        """For /readyz: "in-process", or whether the Redis store answers a PING right now."""
        if not self.backend.remote:
            return "in-process"
        return "up" if await self.backend.ping() else "down"

    async def seed_budgets(self, spend_by_key: dict[str, float], keys: list[KeyConfig]) -> None:
        """Start each budgeted key's spend from the ledger, unless a replica already did."""
        now = datetime.now(UTC)
        for key in keys:
            if key.budget_usd is None:
                continue
            period_id, _, ttl = period_of(key.budget_period, now)
            self.degraded.spend(budget_key(key.name, period_id), spend_by_key.get(key.name, 0.0))
            with contextlib.suppress(StoreUnavailable):
                await self.backend.seed(budget_key(key.name, period_id), spend_by_key.get(key.name, 0.0), ttl)

    async def aclose(self) -> None:
        if self.prober is not None:
            self.prober.cancel()
        if self.releaser is not None:
            self.releaser.cancel()
        if self.doubtful:
            await self._release_doubtful(0.0)
        self.heartbeat.stop()
        self.leases.give_back_all()
        await self.settlements.close()
        await self.backend.aclose()
