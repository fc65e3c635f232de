"""The one error shape a client sees: an HTTP status and OpenAI's ``{"error": {...}}`` body.

``APIError`` is that shape. The gateway raises ``proxy.errors.GatewayError`` for failures of its own
(bad input, auth, limits); adapters raise ``adapters.base.UpstreamError`` for a failed upstream
attempt, which also says why it failed so that dispatch can decide on a retry or a fallback.
"""

from __future__ import annotations

from typing import Any

from adapters.redact import NO_SECRETS, Redactor


class APIError(Exception):
    """An error answer. ``redactor`` hides secrets in every string of ``body()``, the one place an error
    is rendered for a client (JSON body or stream event): error paths only, so success costs nothing."""

    redactor: Redactor = NO_SECRETS

    def __init__(self, status: int, message: str, type: str, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}  # response headers that go with the error, such as retry-after

    @property
    def error_type(self) -> str:
        """What the usage row's error_type column says about this failure."""
        return self.code or self.type

    def body(self) -> dict[str, Any]:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return self.redactor.value(body) if self.redactor else body
