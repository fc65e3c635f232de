"""USD cost of a request from the target's prices (USD per million tokens): the one cost formula,
used for the usage row, for budget reservations and for cost-based routing."""

from __future__ import annotations

from adapters.base import Usage
from proxy.settings import Target


def cost_usd(target: Target, usage: Usage) -> float | None:
    """uncached prompt x input + cached x cached_input + completion x output (+ per_request).

    None when the target has no input or output price: never a made-up number.
    """
    if target.input_per_mtok is None or target.output_per_mtok is None:
        return None
    cached_price = target.cached_input_per_mtok if target.cached_input_per_mtok is not None else target.input_per_mtok
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    total = (
        (usage.prompt_tokens - cached) * target.input_per_mtok
        + cached * cached_price
        + usage.completion_tokens * target.output_per_mtok
    ) / 1_000_000
    if target.per_request is not None:
        total += target.per_request
    return total


def estimated_cost(target: Target, prompt_tokens: int, completion_tokens: int) -> float | None:
    """What a request would cost before it is sent: no cached tokens assumed, so never an underestimate."""
    return cost_usd(target, Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens))
