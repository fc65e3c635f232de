"""What library mode (proxy.library) hands back: answers as small objects over the OpenAI-format dicts the
server sends, and errors as typed exceptions carrying the server's own error body."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = [
    "APIStatusError", "AuthenticationError", "BadRequestError", "ChatResponse", "EmbeddingsResponse",
    "GatewayAPIError", "InternalServerError", "NotFoundError", "PermissionDeniedError", "RateLimitError",
    "StreamChunk", "error_for",
]


class GatewayAPIError(Exception):
    """A request the gateway refused or could not serve. ``body`` is the JSON body the server would have
    answered (``{"error": {"message", "type", "param", "code"}}``), ``status_code`` its HTTP status."""

    def __init__(self, status_code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        self.status_code = status_code
        self.body = body
        self.headers = dict(headers or {})
        self.message: str = str(error.get("message", ""))
        self.type: str | None = error.get("type")
        self.code: str | None = error.get("code")
        self.param: str | None = error.get("param")
        self.request_id = self.headers.get("x-request-id")
        super().__init__(f"Error code: {status_code} - {self.message}")


class APIStatusError(GatewayAPIError):
    """Any status without a class of its own (413, 499, 502, ...)."""


class BadRequestError(GatewayAPIError):
    """400: a parameter is wrong (``param`` names it)."""


class AuthenticationError(GatewayAPIError):
    """401: no gateway key, or a wrong one (give ``api_key`` to the Gateway)."""


class PermissionDeniedError(GatewayAPIError):
    """403: the key may not use that model."""


class NotFoundError(GatewayAPIError):
    """404: no alias of that name (or an ambiguous partial name)."""


class RateLimitError(GatewayAPIError):
    """429: a limit or a budget was reached; ``headers["retry-after"]`` says when to retry."""


class InternalServerError(GatewayAPIError):
    """5xx: the upstream failed (after retries and fallbacks), or the gateway did."""


_BY_STATUS: dict[int, type[GatewayAPIError]] = {
    400: BadRequestError, 401: AuthenticationError, 403: PermissionDeniedError, 404: NotFoundError,
    429: RateLimitError,
}


def error_for(status: int, body: bytes | dict[str, Any], headers: dict[str, str] | None = None) -> GatewayAPIError:
    """The typed exception for an error answer, as the OpenAI SDK would raise it for the same status."""
    parsed = orjson.loads(body) if isinstance(body, bytes) else body
    if not isinstance(parsed, dict):
        parsed = {"error": {"message": str(parsed), "type": "api_error", "param": None, "code": None}}
    cls = _BY_STATUS.get(status) or (InternalServerError if status >= 500 else APIStatusError)
    return cls(status, parsed, headers)


def _cost(headers: dict[str, str]) -> float | None:
    value = headers.get("x-gateway-cost-usd")
    return float(value) if value is not None else None


@dataclass(slots=True)
class ChatResponse:
    """A chat completion: ``raw`` is the OpenAI-format dict a server client would get; the rest are read
    from it and from the response headers the server would send (``x-gateway-*``)."""

    raw: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def content(self) -> str | None:
        choices = self.raw.get("choices") or [{}]
        return (choices[0].get("message") or {}).get("content")

    @property
    def tool_calls(self) -> list[dict[str, Any]] | None:
        choices = self.raw.get("choices") or [{}]
        return (choices[0].get("message") or {}).get("tool_calls")

    @property
    def finish_reason(self) -> str | None:
        choices = self.raw.get("choices") or [{}]
        return choices[0].get("finish_reason")

    @property
    def model(self) -> str | None:
        return self.raw.get("model")

    @property
    def usage(self) -> dict[str, Any] | None:
        return self.raw.get("usage")

    @property
    def provider(self) -> str | None:
        return self.headers.get("x-gateway-provider")

    @property
    def cost(self) -> float | None:
        """USD, as the usage row records it; None when the target has no price."""
        return _cost(self.headers)

    @property
    def request_id(self) -> str | None:
        return self.headers.get("x-request-id")


@dataclass(slots=True)
class StreamChunk:
    """One ``chat.completion.chunk`` of a stream; ``delta`` is its text ('' for role, tool and usage chunks)."""

    raw: dict[str, Any]

    @property
    def delta(self) -> str:
        choices = self.raw.get("choices") or []
        if not choices:
            return ""
        return (choices[0].get("delta") or {}).get("content") or ""

    @property
    def finish_reason(self) -> str | None:
        choices = self.raw.get("choices") or []
        return choices[0].get("finish_reason") if choices else None

    @property
    def usage(self) -> dict[str, Any] | None:
        return self.raw.get("usage")


@dataclass(slots=True)
class EmbeddingsResponse:
    """Embeddings; iterates (and indexes) as the list of vectors, in input order."""

    raw: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def vectors(self) -> list[Any]:
        return [item["embedding"] for item in sorted(self.raw.get("data") or [], key=lambda d: d.get("index", 0))]

    @property
    def usage(self) -> dict[str, Any] | None:
        return self.raw.get("usage")

    @property
    def provider(self) -> str | None:
        return self.headers.get("x-gateway-provider")

    @property
    def cost(self) -> float | None:
        return _cost(self.headers)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.vectors)

    def __len__(self) -> int:
        return len(self.raw.get("data") or [])

    def __getitem__(self, index: int) -> Any:
        return self.vectors[index]
