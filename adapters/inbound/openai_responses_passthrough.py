"""Responses to an OpenAI-kind target: the client's body and the answer's bytes, as they are.

Only the model (the target's in the request, the alias in the answer) and the credentials change.
A stream is forwarded event by event; the translator reads each event for the usage row and the
stream's end (``response.completed``, ``.incomplete``, ``.failed``, ``error``) and rebuilds only the
events that carry the response object (its ``model``) and ``error`` events (scrubbed of secrets).
"""

from __future__ import annotations

from typing import Any

import orjson

from adapters.base import (
    Reply,
    UpstreamError,
    UpstreamRequest,
    Usage,
    bad_response,
    int_or_zero,
    loads_object,
    upstream_status_error,
)
from adapters.inbound.stream_bases import EventRelay
from adapters.sse_decoder import parse_events
from adapters.targets import ProviderConfig

TERMINAL = ("response.completed", "response.incomplete", "response.failed")


def request(url: str, headers: dict[str, str], body: dict[str, Any], model: str) -> UpstreamRequest:
    return UpstreamRequest(url, headers, orjson.dumps({**body, "model": model}))


def usage_from(raw: Any) -> Usage | None:
    """Responses usage -> the gateway's: input is the whole prompt, cached tokens a part of it."""
    if not isinstance(raw, dict):
        return None
    inputs = raw.get("input_tokens_details") if isinstance(raw.get("input_tokens_details"), dict) else {}
    outputs = raw.get("output_tokens_details") if isinstance(raw.get("output_tokens_details"), dict) else {}
    return Usage(prompt_tokens=int_or_zero(raw.get("input_tokens")),
                 completion_tokens=int_or_zero(raw.get("output_tokens")),
                 cached_tokens=int_or_zero(inputs.get("cached_tokens")),
                 reasoning_tokens=int_or_zero(outputs.get("reasoning_tokens")))


def reply(provider: ProviderConfig, alias: str, body: bytes) -> Reply:
    data = loads_object(provider, body)
    if data.get("object") != "response":
        raise bad_response(provider, "a body that is not a response object")
    data["model"] = alias
    return Reply(orjson.dumps(data), usage_from(data.get("usage")))


class ResponsesPassthrough(EventRelay):
    terminal = "response.completed"

    def _events(self, block: bytes) -> bytes:
        rebuilt = False
        out: list[bytes] = []
        for name, data in parse_events(block):
            if b'"response":' not in data and b'"error"' not in data:  # a delta: forwarded as it came
                self.deltas += 1
                out.append(b"event: " + name.encode() + b"\ndata: " + data + b"\n\n")
                continue
            event = self._object(name, data)
            kind = event.get("type") or name
            response = event.get("response")
            if isinstance(response, dict):
                response["model"] = self.alias
                if kind in TERMINAL:
                    self.done = True
                    self.usage = usage_from(response.get("usage"))
                    if kind == "response.failed":
                        err = response.get("error") if isinstance(response.get("error"), dict) else {}
                        self.error = self._error(err.get("code"), err.get("message"))
                        response["error"] = {"code": err.get("code") or "server_error", "message": self.error.message}
            elif kind == "error":
                self.done = True
                self.error = self._error(event.get("code"), event.get("message"))
                event["message"] = self.error.message
            out.append(b"event: " + name.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n")
            rebuilt = True
            if self.done:
                break
        return b"".join(out) if rebuilt else block

    def _error(self, code: Any, message: Any) -> UpstreamError:
        status = 429 if code == "rate_limit_exceeded" else 500
        return upstream_status_error(self.provider, status, str(message or "upstream stream error"), None,
                                     code if isinstance(code, str) else None)
