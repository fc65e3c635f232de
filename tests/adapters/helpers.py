"""Building a Call by hand, and reading the OpenAI SSE an adapter writes."""

from __future__ import annotations

import json
from typing import Any

from adapters.base import Call
from adapters.sse_decoder import iter_data
from adapters.targets import ProviderConfig, Target

KEY = "sk-provider-secret"


def provider(kind: str, base_url: str, **kw: Any) -> ProviderConfig:
    return ProviderConfig(name=kind, kind=kind, base_url=base_url, api_key=KEY, **kw)


def call(body: dict[str, Any], model: str, prov: ProviderConfig, *, stream: bool = False,
         include_usage: bool = False, alias: str = "alias", **target: Any) -> Call:
    return Call(alias=alias, target=Target(provider=prov.name, model=model, **target), provider=prov, body=body,
                stream=stream, include_usage=include_usage, request_id="req_1")


def user(text: str = "Hi") -> dict[str, Any]:
    return {"model": "alias", "messages": [{"role": "user", "content": text}]}


def feed_in_pieces(translator: Any, raw: bytes, cuts: list[int]) -> bytes:
    """Feed ``raw`` cut at ``cuts``, then end the stream: everything the client got."""
    out = b"".join(translator.feed(raw[a:b]) for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True))
    return out + translator.end()


def openai_events(out: bytes) -> list[Any]:
    """The OpenAI stream as the client's parser sees it: JSON chunks, and the literal [DONE]."""
    for block in out.split(b"\n\n")[:-1]:
        assert block.startswith(b"data: "), block  # OpenAI streams are data-only
    return ["[DONE]" if d == b"[DONE]" else json.loads(d) for d in iter_data(out)]


def deltas(events: list[Any]) -> list[dict[str, Any]]:
    return [e["choices"][0]["delta"] for e in events if isinstance(e, dict) and e.get("choices")]
