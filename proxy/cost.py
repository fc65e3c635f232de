"""USD cost of a request from the target's prices (USD per million tokens, and per unit for the
pass-through media endpoints): the one cost formula, used for the usage row, for budget reservations
and for cost-based routing."""

from __future__ import annotations

from adapters.base import Usage
from proxy.settings import Target


def cost_usd(target: Target, usage: Usage) -> float | None:
    """uncached prompt x input + cached x cached_input + completion x output (+ per_request, + web
    searches x per_web_search).

    None when the target has no input or output price: never a made-up number. A request with media
    units (images, audio seconds, characters) is priced by ``media_cost`` instead.
    """
    if usage.images or usage.audio_seconds or usage.characters:
        return media_cost(target, usage)
    if target.input_per_mtok is None or target.output_per_mtok is None:
        return None
    return _token_cost(target, usage) + (target.per_request or 0.0) + _search_cost(target, usage)


def _search_cost(target: Target, usage: Usage) -> float:
    """Web searches x per_web_search. OpenAI's search models (``*-search-*``) report no count: each of
    their answers is one search; an estimated usage (no answer) is none."""
    if target.per_web_search is None:
        return 0.0
    searches = usage.web_searches
    if not searches and "-search-" in target.model and not usage.estimated:
        searches = 1
    return searches * target.per_web_search


def _token_cost(target: Target, usage: Usage) -> float:
    input_price = target.input_per_mtok or 0.0
    cached_price = target.cached_input_per_mtok if target.cached_input_per_mtok is not None else input_price
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    return ((usage.prompt_tokens - cached) * input_price + cached * cached_price
            + usage.completion_tokens * (target.output_per_mtok or 0.0)) / 1_000_000


def media_cost(target: Target, usage: Usage) -> float | None:
    """Images x per_image + audio seconds x per_second + characters x per_character, plus the tokens the
    upstream reported (gpt-image-1, gpt-4o-transcribe bill tokens) at the token prices, plus per_request.
    Each part counts only when its price is set (estimated tokens are not billed by token where a unit
    price applies); None when no part that was used has a price."""
    parts = [units * price for units, price in ((usage.images, target.per_image),
                                                (usage.audio_seconds, target.per_second),
                                                (usage.characters, target.per_character))
             if units and price is not None]
    reported = not usage.estimated and (usage.prompt_tokens or usage.completion_tokens)
    if reported and target.input_per_mtok is not None and target.output_per_mtok is not None:
        parts.append(_token_cost(target, usage))
    if not parts:
        return None
    return sum(parts) + (target.per_request or 0.0)


def estimated_cost(target: Target, prompt_tokens: int, completion_tokens: int, images: int = 0,
                   characters: int = 0) -> float | None:
    """What a request would cost before it is sent: no cached tokens assumed, so never an underestimate;
    the media units it asks for (images, characters to speak) at their unit prices on top."""
    tokens = cost_usd(target, Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens))
    units = [n * price for n, price in ((images, target.per_image), (characters, target.per_character))
             if n and price is not None]
    return (tokens or 0.0) + sum(units) if units else tokens
