"""What a pass-through request uses: estimated before it is sent (limits), read from its answer after.

Tokens are counted when the upstream reports them (gpt-image-1 and gpt-4o-transcribe report input and
output tokens, a reranker its total); media units (images, audio seconds, characters spoken) are counted
for the unit prices of ``proxy.cost.media_cost``.
"""

from __future__ import annotations

from typing import Any

from adapters.base import Usage, int_or_zero
from proxy.pipeline.estimate import text_tokens

IMAGES_MAX = 10  # OpenAI's largest n for an image request


def prompt_text(body: dict[str, Any]) -> list[str]:
    """The text a request sends to the model: prompt, input, query and documents."""
    out: list[str] = []
    for name in ("prompt", "input", "query", "instructions"):
        value = body.get(name)
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, list):
            out.extend(v for v in value if isinstance(v, str))
            out.extend(v["text"] for v in value if isinstance(v, dict) and isinstance(v.get("text"), str))
    documents = body.get("documents")
    if isinstance(documents, list):
        out.extend(d if isinstance(d, str) else str(d.get("text", "")) for d in documents
                   if isinstance(d, str | dict))
    return out


def estimate(body: dict[str, Any]) -> int:
    """The prompt tokens of a JSON pass-through request, by the pipeline's own text rule."""
    return sum(text_tokens(text) for text in prompt_text(body))


def asked_units(endpoint: str, body: dict[str, Any]) -> tuple[int, int]:
    """(images, characters) a request asks for, for a budget to reserve at the unit prices: ``n`` of an
    image request (1 when absent or not a number; at most OpenAI's 10), the ``input`` speech reads."""
    if endpoint.startswith("images."):
        n = body.get("n")  # a number in JSON, a string in a multipart form
        count = 1
        if isinstance(n, int) and not isinstance(n, bool):
            count = n
        elif isinstance(n, str) and n.isdigit():
            count = int(n)
        return min(max(count, 1), IMAGES_MAX), 0
    if endpoint == "audio.speech" and isinstance(body.get("input"), str):
        return 0, len(body["input"])
    return 0, 0


def usage_of(endpoint: str, request: dict[str, Any], answer: Any, estimate_tokens: int) -> Usage:
    """A JSON answer's usage for the row and the limits; estimated from the request where the upstream
    sent no counts."""
    data = answer if isinstance(answer, dict) else {}
    reported = data.get("usage")
    usage = Usage(prompt_tokens=estimate_tokens, estimated=True)
    if isinstance(reported, dict):
        if "input_tokens" in reported or "output_tokens" in reported:  # images, gpt-4o-transcribe
            usage = Usage(prompt_tokens=int_or_zero(reported.get("input_tokens")),
                          completion_tokens=int_or_zero(reported.get("output_tokens")))
        elif "prompt_tokens" in reported or "total_tokens" in reported:  # rerank (vLLM, Jina)
            usage = Usage(prompt_tokens=int_or_zero(reported.get("prompt_tokens") or reported.get("total_tokens")),
                          completion_tokens=int_or_zero(reported.get("completion_tokens")))
        seconds = reported.get("seconds")  # whisper: {"type": "duration", "seconds": ...}
        if isinstance(seconds, int | float) and not isinstance(seconds, bool):
            usage.audio_seconds = float(seconds)
    if endpoint.startswith("images.") and isinstance(data.get("data"), list):
        usage.images = len(data["data"])
    elif endpoint in ("audio.transcriptions", "audio.translations") and not usage.audio_seconds:
        duration = data.get("duration")  # verbose_json
        if isinstance(duration, int | float) and not isinstance(duration, bool):
            usage.audio_seconds = float(duration)
    elif endpoint in ("files", "batches"):
        usage = Usage()  # no model runs: nothing to count
    return usage


def speech_usage(request: dict[str, Any], estimate_tokens: int) -> Usage:
    """audio/speech answers with audio bytes, no counts: its input is what is billed, by the character."""
    text = request.get("input")
    return Usage(prompt_tokens=estimate_tokens, estimated=True, characters=len(text) if isinstance(text, str) else 0)
