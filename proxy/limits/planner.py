"""Which checks a request must pass: its key's, its model's and the global limits, and its key's budget."""

from __future__ import annotations

from datetime import UTC, datetime

from proxy.client_request import ClientRequest
from proxy.cost import estimated_cost
from proxy.limits.checks import PARALLEL_SLOT_TTL_S, PREFIX, Check, Plan, all_gcra, period_of
from proxy.limits.store import Backend
from proxy.settings import Config, KeyConfig, ModelAlias

STANDING_MAX = 10_000  # sets of limits whose checks are kept for reuse; all are dropped when full


def budget_key(key_name: str, period_id: str) -> str:
    """The store key of a key's spend in one budget period."""
    return f"{PREFIX}spend:key:{key_name}:{period_id}"


def user_budget_key(key_name: str, period_id: str, end_user: str) -> str:
    """The store key of one end user's spend (within a key) in one budget period."""
    return f"{PREFIX}spend:user:{key_name}:{period_id}:{end_user}"


class Planner:
    """Builds a request's checks; the ones that stay the same for many requests are built once."""

    __slots__ = ("backend", "standing")

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        # (every limit value of a key and alias) -> their rpm, tpm and max_parallel checks
        self.standing: dict[tuple[object, ...], list[Check]] = {}

    def plan(self, config: Config, key: KeyConfig | None, alias: ModelAlias, request: ClientRequest) -> Plan | None:
        """The checks for one request, or None when nothing limits it (no estimates, no store call)."""
        standing = self._standing(config, key, alias)
        user = _user_limits(config, key, request.end_user)
        budgeted = key is not None and (key.budget_usd is not None or user[2] is not None)
        if not standing and not budgeted and not any(user):
            return None
        prompt_tokens = request.prompt_estimate
        # without max_tokens, the largest output ceiling of the targets it may fall back to
        targets = alias.targets
        default = targets[0].default_max_tokens if len(targets) == 1 else max(t.default_max_tokens for t in targets)
        max_tokens = request.completion_allowance(default)
        tokens = prompt_tokens + max_tokens
        checks = [check if check.unit != "tokens" else Check(check.scope, "gcra", check.key, check.limit, tokens,
                                                              "tokens", 0.0, check.wire) for check in standing]
        end_user = request.end_user
        if end_user is not None:  # per request: end users are too many to keep checks for
            name = f"user:{key.name if key is not None else ''}:{end_user}"
            if user[0]:
                checks.append(Check("user", "gcra", f"{PREFIX}rpm:{name}", user[0], 1, "requests"))
            if user[1]:
                checks.append(Check("user", "gcra", f"{PREFIX}tpm:{name}", user[1], tokens, "tokens"))
        cost = 0.0
        owner: KeyConfig | None = None
        if budgeted:
            assert key is not None
            cost = max((estimated_cost(t, prompt_tokens, max_tokens, request.images, request.characters) or 0.0)
                       for t in alias.targets)
            period_id, _, ttl = period_of(key.budget_period, datetime.now(UTC))
            if key.budget_usd is not None:
                checks.append(Check("budget", "budget", budget_key(key.name, period_id), key.budget_usd, cost, "usd",
                                    ttl))
            if user[2] is not None and end_user is not None:
                checks.append(Check("user_budget", "budget", user_budget_key(key.name, period_id, end_user), user[2],
                                    cost, "usd", ttl))
            owner = key
        leasable = self.backend.remote and not budgeted and all_gcra(checks)
        slot = standing[-1] if standing and standing[-1].kind == "parallel" else None
        return Plan(checks, tokens, cost, request.request_id, leasable, None, slot, owner, end_user)

    def _standing(self, config: Config, key: KeyConfig | None, alias: ModelAlias) -> list[Check]:
        """The rpm, tpm and max_parallel checks of a key and alias (a tpm one with no amount yet), built
        once per set of limits and shared by the requests under them. Found by the limits' values, so a
        reload or a key given new limits gets checks of its own."""
        limits = config.limits
        found: tuple[object, ...] = (limits.rpm, limits.tpm, alias.name, alias.rpm, alias.tpm)
        if key is not None:
            found += (key.name, key.rpm, key.tpm, key.max_parallel)
        checks = self.standing.get(found)
        if checks is None:
            if len(self.standing) >= STANDING_MAX:
                self.standing.clear()
            checks = self.standing[found] = _standing_checks(key, alias, limits.rpm, limits.tpm)
            for check in checks:
                check.wire = self.backend.wire(check)
        return checks


def _standing_checks(key: KeyConfig | None, alias: ModelAlias, rpm: int | None, tpm: int | None) -> list[Check]:
    checks: list[Check] = []
    scopes = [("global", "global", rpm, tpm), ("model", f"model:{alias.name}", alias.rpm, alias.tpm)]
    if key is not None:
        scopes.append(("key", f"key:{key.name}", key.rpm, key.tpm))
    for scope, name, scope_rpm, scope_tpm in scopes:
        if scope_rpm:
            checks.append(Check(scope, "gcra", f"{PREFIX}rpm:{name}", scope_rpm, 1, "requests"))
        if scope_tpm:
            checks.append(Check(scope, "gcra", f"{PREFIX}tpm:{name}", scope_tpm, 0, "tokens"))
    if key is not None and key.max_parallel:
        checks.append(Check("parallel", "parallel", f"{PREFIX}inflight:key:{key.name}", key.max_parallel, 1,
                            "requests", PARALLEL_SLOT_TTL_S))
    return checks


def _user_limits(config: Config, key: KeyConfig | None,
                 end_user: str | None) -> tuple[int | None, int | None, float | None]:
    """(rpm, tpm, budget) of the request's end user: the key's user_* settings, else [limits] per_user_*."""
    if end_user is None:
        return None, None, None
    limits = config.limits
    if key is None:
        return limits.per_user_rpm, limits.per_user_tpm, None
    return (key.user_rpm if key.user_rpm is not None else limits.per_user_rpm,
            key.user_tpm if key.user_tpm is not None else limits.per_user_tpm, key.user_budget_usd)
