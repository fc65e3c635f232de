"""The gateway's own errors, in OpenAI's error format (see adapters.errors for the shape they share),
and their rendering in the format of the client's API (Anthropic's for /v1/messages)."""

from __future__ import annotations

import orjson
from starlette.responses import Response

from adapters.errors import APIError
from adapters.inbound import anthropic_messages_reply as anthropic
from adapters.redact import MIN_SECRET_CHARS, Redactor

# Endpoints whose clients speak Anthropic's API: their errors are rendered in its format.
ANTHROPIC_ENDPOINTS = frozenset({"messages", "count_tokens"})


class GatewayError(APIError):
    """A failure of the gateway's own (bad input, auth, limits), answered as ``{"error": {...}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, message, type, code, param, headers)

    def response(self, headers: dict[str, str] | None = None) -> Response:
        merged = {**self.headers, **headers} if headers else self.headers
        return Response(orjson.dumps(self.body()), self.status, merged, media_type="application/json")


def error_body(err: APIError, endpoint: str = "chat") -> dict:
    """An error's body in the format of the API ``endpoint`` speaks: OpenAI's ``{"error": {...}}``, or
    Anthropic's ``{"type": "error", "error": {"type", "message"}}`` with the type its status stands for."""
    if endpoint in ANTHROPIC_ENDPOINTS:
        body = anthropic.error_body(err.status, err.message)
        return err.redactor.value(body) if err.redactor else body
    return err.body()


def render(err: APIError, redactor: Redactor, client_secret: str = "", endpoint: str = "chat") -> bytes:
    """An error's JSON body for a client, every string scrubbed of the config's secrets and of the key
    the client authenticated with: the last line of defence, on the error path only."""
    body = redactor.value(error_body(err, endpoint))
    out = orjson.dumps(body)
    # The client's key is hidden only when present: one substring search, no pattern built per request.
    if len(client_secret) >= MIN_SECRET_CHARS and orjson.dumps(client_secret)[1:-1] in out:
        out = orjson.dumps(Redactor((client_secret,)).value(body))
    return out


def error_event(err: APIError, endpoint: str = "chat") -> bytes:
    """The SSE form of an error once a stream has started; OpenAI SDKs raise APIError on it, Anthropic
    SDKs on its ``event: error`` form."""
    if endpoint in ANTHROPIC_ENDPOINTS:
        return b"event: error\ndata: " + orjson.dumps(error_body(err, endpoint)) + b"\n\n"
    if endpoint == "responses":  # the Responses API's own error event (its sequence is the gateway's, not the target's)
        body = err.body()["error"]
        event = {"type": "error", "code": body["code"] or body["type"], "message": body["message"], "param": None,
                 "sequence_number": 0}
        return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"
    return b"data: " + orjson.dumps(err.body()) + b"\n\n"


def bad_request(message: str, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, "invalid_request_error", code, param)


def internal_error() -> GatewayError:
    """What a client sees for a bug in the gateway: an OpenAI-shaped 500 that says nothing internal."""
    return GatewayError(500, "The gateway hit an internal error.", "server_error", "internal_error")


def client_gone() -> GatewayError:
    """The client hung up before its answer was ready: the row says 499, as nginx logs it."""
    return GatewayError(499, "The client closed the connection before the answer was ready.", "client_error",
                        "client_disconnect")
