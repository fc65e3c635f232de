"""How a refusal reads to the client: the OpenAI-shaped error, its message and its headers."""

from __future__ import annotations

import math

from proxy.errors import GatewayError
from proxy.limits.checks import WINDOW_S, Denial, duration


def rejection(denial: Denial) -> GatewayError:
    """The 429 for a request a limit or budget refused."""
    check = denial.check
    retry = str(max(1, math.ceil(denial.retry_after_s))) if denial.retry_after_s else str(int(WINDOW_S))
    if check.kind == "budget":
        whose = "this end user of this key" if check.scope == "user_budget" else "this key"
        return GatewayError(429, f"Budget of ${check.limit:g} for {whose} is used up for the current period.",
                            "insufficient_quota", "insufficient_quota", headers={"retry-after": retry})
    headers = {"retry-after": retry}
    if check.kind == "gcra":
        headers.update({f"x-ratelimit-limit-{check.unit}": str(int(check.limit)),
                        f"x-ratelimit-remaining-{check.unit}": "0",
                        f"x-ratelimit-reset-{check.unit}": duration(denial.retry_after_s)})
    if check.kind == "parallel":
        message = f"Too many concurrent requests for this key (max_parallel = {int(check.limit)})."
    else:
        what = "requests" if check.unit == "requests" else "tokens"
        message = (f"Rate limit reached for {check.scope} scope: {int(check.limit)} {what} per minute. "
                   f"Please try again in {retry}s.")
        if check.amount > check.limit:
            message = (f"This request needs {int(check.amount)} tokens (prompt plus max_tokens times n), more than the "
                       f"{check.scope} scope's limit of {int(check.limit)} tokens per minute.")
    return GatewayError(429, message, "rate_limit_error", "rate_limit_exceeded", headers=headers)


def store_unavailable() -> GatewayError:
    """The 503 for a limited request while the store is down under ``on_store_error = "deny"``."""
    return GatewayError(503, "Rate limits cannot be checked right now; try again shortly.",
                        "service_unavailable_error", "limits_unavailable", headers={"retry-after": "1"})
