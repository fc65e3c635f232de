"""Messages to an Anthropic-kind target: the client's body and the answer's bytes, as they are.

Only what must change is rewritten: the model (the target's in the request, the alias in the answer)
and the credentials (the provider's key, set by the adapter's headers). A stream is forwarded event
by event as it arrives; the translator reads each event only for the usage row and the stream's end,
and rebuilds just ``message_start`` (its model) and ``error`` (its text scrubbed of secrets).
"""

from __future__ import annotations

from typing import Any

import orjson

from adapters.anthropic.response import ERROR_STATUS, anthropic_error, error_of, usage_from
from adapters.base import Reply, UpstreamRequest, bad_response, loads_object
from adapters.inbound.anthropic_messages_reply import error_event, sse
from adapters.inbound.stream_bases import EventRelay
from adapters.sse_decoder import parse_events
from adapters.targets import ProviderConfig


def request(url: str, headers: dict[str, str], body: dict[str, Any], model: str,
            client_beta: str | None = None) -> UpstreamRequest:
    """The client's body with the target's model, to ``url`` with the provider's headers; an
    ``anthropic-beta`` the client asked for is added to the provider's own."""
    if client_beta:
        own = headers.get("anthropic-beta")
        headers = {**headers, "anthropic-beta": f"{own},{client_beta}" if own else client_beta}
    return UpstreamRequest(url, headers, orjson.dumps({**body, "model": model}))


def reply(provider: ProviderConfig, alias: str, body: bytes) -> Reply:
    data = loads_object(provider, body)
    if data.get("type") == "error":
        raise error_of(provider, 200, body, {})
    if not isinstance(data.get("content"), list):
        raise bad_response(provider, "a message without content")
    data["model"] = alias
    usage = data.get("usage")
    return Reply(orjson.dumps(data), usage_from(usage) if isinstance(usage, dict) else None)


class MessagesPassthrough(EventRelay):
    terminal = "message_stop"

    def __init__(self, provider: ProviderConfig, alias: str) -> None:
        super().__init__(provider, alias)
        self.raw_usage: dict[str, Any] = {}

    def _ended_early(self) -> None:
        self._settle()

    def _events(self, block: bytes) -> bytes:
        rebuilt = False
        out: list[bytes] = []
        for name, data in parse_events(block):
            if name == "ping":
                out.append(b"event: ping\ndata: " + data + b"\n\n")
                continue
            event = self._object(name, data)
            kind = event.get("type") or name
            if kind == "message_start" and isinstance(event.get("message"), dict):
                self._usage(event["message"].get("usage"))
                event["message"]["model"] = self.alias
                out.append(sse(name, event))
                rebuilt = True
                continue
            if kind == "error":
                out.append(self._failed(event))
                rebuilt = True
                break
            if kind == "content_block_delta":
                self.deltas += 1
            elif kind == "message_delta":
                self._usage(event.get("usage"))
            elif kind == "message_stop":
                self.done = True
                self._settle()
            out.append(b"event: " + name.encode() + b"\ndata: " + data + b"\n\n")
        # The usual read holds neither event: its bytes go out untouched.
        return b"".join(out) if rebuilt else block

    def _usage(self, raw: Any) -> None:
        """Anthropic's usage numbers are cumulative: the latest value of each field is the total."""
        if isinstance(raw, dict):
            self.raw_usage.update((k, v) for k, v in raw.items() if v is not None)

    def _settle(self) -> None:
        if self.raw_usage:
            usage = usage_from(self.raw_usage)
            usage.completion_tokens = max(usage.completion_tokens, 0 if self.done else self.deltas)
            self.usage = usage

    def _failed(self, event: dict[str, Any]) -> bytes:
        err = event.get("error") if isinstance(event.get("error"), dict) else {}
        err_type = err.get("type") if isinstance(err.get("type"), str) else None
        message = str(err.get("message") or "upstream stream error")
        self.error = anthropic_error(self.provider, ERROR_STATUS.get(err_type or "", 500), err_type, message, None)
        self.done = True
        self._settle()
        return error_event(self.error.status, self.error.message)
