"""The interface every provider adapter implements.

An adapter is pure translation, with no I/O of its own: it turns an OpenAI request into the
provider's HTTP request, and the provider's response body, byte stream or error back into OpenAI
bytes plus the usage it carried. Sending, timeouts and retries live in ``proxy`` so that every
provider gets the same behaviour. Adding a provider is one module that subclasses ``Adapter``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from adapters.errors import APIError
from adapters.redact import NO_SECRETS, Redactor
from adapters.targets import ProviderConfig, Target


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # part of prompt_tokens
    reasoning_tokens: int = 0  # part of completion_tokens
    estimated: bool = False  # counted by the gateway, not reported by the upstream
    # media units of the pass-through endpoints (proxy.passthrough), priced per unit by proxy.cost
    images: int = 0
    audio_seconds: float = 0.0
    characters: int = 0
    web_searches: int = 0  # server-side web searches the provider ran and bills apart (per_web_search)

    @classmethod
    def from_openai(cls, usage: Any) -> Usage | None:
        if not isinstance(usage, dict):
            return None
        prompt_details = usage.get("prompt_tokens_details") or {}
        completion_details = usage.get("completion_tokens_details") or {}
        return cls(
            prompt_tokens=int_or_zero(usage.get("prompt_tokens")),
            completion_tokens=int_or_zero(usage.get("completion_tokens")),
            cached_tokens=int_or_zero(prompt_details.get("cached_tokens")) if isinstance(prompt_details, dict) else 0,
            reasoning_tokens=(
                int_or_zero(completion_details.get("reasoning_tokens")) if isinstance(completion_details, dict) else 0
            ),
            web_searches=web_searches_of(usage),
        )

    def to_openai(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }


def int_or_zero(value: Any) -> int:
    """A token count from provider JSON: an int (not a bool), else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass(slots=True)
class Call:
    """One client request bound to one target. Adapters must not mutate ``body``."""

    alias: str
    target: Target
    provider: ProviderConfig
    body: dict[str, Any]
    stream: bool
    include_usage: bool  # the client asked for the usage chunk
    request_id: str


@dataclass(slots=True)
class UpstreamRequest:
    url: str
    headers: dict[str, str]
    content: bytes
    method: str = "POST"


@dataclass(slots=True)
class Reply:
    body: bytes  # OpenAI JSON, ``model`` already set to the alias
    usage: Usage | None


class UpstreamError(APIError):
    """A failed upstream attempt, already in the shape the client will see.

    ``reason`` is one of: timeout, connection, status_5xx, status_429, status_4xx, bad_response, auth_refused.
    The router decides from ``reason`` whether another attempt (or target) may succeed.
    """

    def __init__(
        self,
        status: int,
        message: str,
        reason: str,
        type: str = "api_error",
        code: str | None = None,
        param: str | None = None,
        retry_after: str | None = None,
        upstream_status: int | None = None,
        redactor: Redactor = NO_SECRETS,
    ) -> None:
        if redactor:  # scrubbed from birth: whatever later copies these fields copies clean text
            message, type = redactor.text(message), redactor.text(type)
            code, param = (redactor.text(v) if isinstance(v, str) else v for v in (code, param))
            if retry_after and redactor.text(retry_after) != retry_after:
                retry_after = None  # a header value with a secret in it is no delay
            self.redactor = redactor
        super().__init__(status, message, type, code, param, {"retry-after": retry_after} if retry_after else None)
        self.reason = reason
        self.retry_after = retry_after
        self.upstream_status = upstream_status

    @property
    def error_type(self) -> str:
        return self.reason


class StreamTranslator:
    """Turns upstream stream bytes into OpenAI SSE bytes, as they arrive.

    ``feed`` returns what can be sent now (possibly b""); ``end`` is called when the upstream
    closes and returns the tail, or raises UpstreamError if the stream ended early. ``done`` turns
    true at the upstream's terminal event; ``error`` is set when the upstream reported an error
    in-band (the translator has already emitted it as an OpenAI error event).
    """

    usage: Usage | None = None
    done: bool = False
    error: UpstreamError | None = None

    def feed(self, data: bytes) -> bytes:
        raise NotImplementedError

    def end(self) -> bytes:
        raise NotImplementedError

    def estimated_completion_tokens(self) -> int:
        """A guess at the tokens generated so far, used only when the upstream sent no usage."""
        return 0


class Adapter:
    """Base class: one instance per configured provider."""

    def __init__(self, provider: ProviderConfig) -> None:
        self.provider = provider

    def chat_request(self, call: Call) -> UpstreamRequest:
        raise NotImplementedError

    def chat_response(self, call: Call, body: bytes) -> Reply:
        raise NotImplementedError

    def chat_stream(self, call: Call) -> StreamTranslator:
        raise NotImplementedError

    def embeddings_request(self, call: Call) -> UpstreamRequest:
        raise UpstreamError(400, f"provider kind {self.provider.kind!r} has no embeddings", "status_4xx",
                            type="invalid_request_error", code="unsupported_endpoint")

    def embeddings_response(self, call: Call, body: bytes) -> Reply:
        raise NotImplementedError

    def completions_request(self, call: Call) -> UpstreamRequest:
        """Legacy text completions (POST /v1/completions): only OpenAI-kind providers have them."""
        raise UpstreamError(400, f"Model {call.alias!r} is served by provider {self.provider.name!r} (kind "
                            f"{self.provider.kind!r}), which has no /v1/completions endpoint; use "
                            "/v1/chat/completions for this model.", "status_4xx", type="invalid_request_error",
                            code="unsupported_endpoint", param="model")

    def completions_response(self, call: Call, body: bytes) -> Reply:
        raise NotImplementedError

    def completions_stream(self, call: Call) -> StreamTranslator:
        raise NotImplementedError

    def error(self, status: int, body: bytes, headers: dict[str, str]) -> UpstreamError:
        """Map a non-2xx upstream answer to the error the client sees."""
        raise NotImplementedError


def upstream_status_error(
    provider: ProviderConfig,
    status: int,
    message: str,
    type: str | None,
    code: str | None = None,
    param: str | None = None,
    retry_after: str | None = None,
) -> UpstreamError:
    """Shared status policy: 4xx passes through, 429 keeps Retry-After, 5xx becomes 502, and so does a 401
    or 403 (the provider refused the gateway's own credentials: not the client's key). Every string
    the upstream sent is scrubbed of the config's secrets (see adapters.redact)."""
    redactor = provider.redactor
    if status in (401, 403):
        return credentials_refused(provider, status, message)
    if status == 429:
        return UpstreamError(429, message, "status_429", type or "rate_limit_error", code or "rate_limit_exceeded",
                             param, retry_after, status, redactor)
    if 400 <= status < 500:
        return UpstreamError(status, message, "status_4xx", type or "invalid_request_error", code, param,
                             upstream_status=status, redactor=redactor)
    return UpstreamError(502, f"upstream {provider.name} returned {status}: {message}", "status_5xx",
                         "upstream_error", code or "upstream_error", param, retry_after, status, redactor)


def credentials_refused(provider: ProviderConfig, status: int, message: str) -> UpstreamError:
    """The provider refused the gateway's credentials (401/403): a 502 naming the provider, so that a client
    never mistakes it for its own bad gateway key; reason ``auth_refused`` (counted, and a fallback may help)."""
    return UpstreamError(502, f"upstream {provider.name} refused the gateway's credentials for it (HTTP {status}): "
                         f"{message}", "auth_refused", "upstream_error", "upstream_auth_failed",
                         upstream_status=status, redactor=provider.redactor)


def invalid_request(message: str, param: str | None, code: str = "invalid_value") -> UpstreamError:
    """The 400 for a client request a provider cannot take, naming the field (``param``)."""
    return UpstreamError(400, message, "status_4xx", "invalid_request_error", code, param)


def bad_response(provider: ProviderConfig, what: str) -> UpstreamError:
    return UpstreamError(502, f"upstream {provider.name} sent {what}", "bad_response", "upstream_error",
                         "bad_upstream_response")


def loads_object(provider: ProviderConfig, body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise bad_response(provider, "a body that is not JSON") from None
    if not isinstance(data, dict):
        raise bad_response(provider, "a JSON body that is not an object")
    return data


def web_searches_of(usage: dict[str, Any]) -> int:
    """``server_tool_use.web_search_requests``: how Anthropic and OpenRouter count the searches they ran."""
    tools = usage.get("server_tool_use")
    return int_or_zero(tools.get("web_search_requests")) if isinstance(tools, dict) else 0
