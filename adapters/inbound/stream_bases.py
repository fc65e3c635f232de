"""What the Messages and Responses stream translators share.

``FromChatStream``: a target's OpenAI chat stream (through that target's own translator) turned into
another API's events as each chunk comes. ``EventRelay``: a provider's own event stream relayed to a
client of the same API in whole events, read only for its usage, its end and what must be rebuilt.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from adapters.base import StreamTranslator, UpstreamError, Usage, bad_response
from adapters.sse_decoder import SSEDecoder, last_event_end
from adapters.targets import ProviderConfig


class FromChatStream(StreamTranslator):
    """Subclasses give ``_chunk`` (one chat chunk's events) and ``_finish`` (the closing events, at
    ``[DONE]`` or at the end of a stream that sent none)."""

    def __init__(self, inner: StreamTranslator, request_id: str) -> None:
        self.inner = inner
        self.request_id = request_id
        self.decoder = SSEDecoder()
        self.started = False
        self.usage: Usage | None = None
        self.done = False
        self.error: UpstreamError | None = None

    def feed(self, data: bytes) -> bytes:
        out = self.inner.feed(data)
        return self._convert(out) if out else b""

    def end(self) -> bytes:
        out = self.inner.end()  # raises if the stream ended early
        return self._convert(out) + (b"" if self.done else self._convert(b"data: [DONE]\n\n"))

    def estimated_completion_tokens(self) -> int:
        return self.inner.estimated_completion_tokens()

    def _convert(self, data: bytes) -> bytes:
        out: list[bytes] = []
        for _, payload in self.decoder.feed(data):
            if self.done:
                break
            if payload == b"[DONE]":
                out.append(self._finish())
                continue
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            if isinstance(chunk, dict):
                out.append(self._chunk(chunk))
        self.usage = self.inner.usage or self.usage
        return b"".join(out)

    def _deltas(self, chunk: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str | None]]:
        """The first choice's delta and finish reason in a chunk (the gateway answers one choice),
        keeping the chunk's usage when it has one."""
        usage = Usage.from_openai(chunk.get("usage"))
        if usage is not None:
            self.usage = usage
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
            yield delta, choice.get("finish_reason")

    def _upstream_failed(self) -> int:
        """The stream ends with the error the target's translator read in it: its status."""
        self.done = True
        self.error = self.inner.error
        return self.error.status if self.error is not None else 500

    def _chunk(self, chunk: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def _finish(self) -> bytes:
        raise NotImplementedError


class EventRelay(StreamTranslator):
    """Subclasses give ``_events`` (a block of whole events: the bytes to send for it) and name the
    events that end the stream in ``terminal``, for the error when it stops before one of them."""

    terminal = ""

    def __init__(self, provider: ProviderConfig, alias: str) -> None:
        self.provider = provider
        self.alias = alias
        self.pending = b""  # the start of an event whose end has not arrived yet
        self.usage: Usage | None = None
        self.done = False
        self.error: UpstreamError | None = None
        self.deltas = 0  # delta events seen: the completion's size when the provider sent no usage

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return b""
        data = self.pending + data if self.pending else data
        cut = last_event_end(data)
        self.pending = data[cut:]
        return self._events(data[:cut]) if cut else b""

    def end(self) -> bytes:
        out = b""
        if self.pending and not self.done:
            rest, self.pending = self.pending, b""
            out = self._events(rest + b"\n\n")
        if not self.done:
            self._ended_early()
            raise UpstreamError(502, f"upstream {self.provider.name} stream ended before {self.terminal}",
                                "bad_response", "upstream_error", "stream_truncated")
        return out

    def estimated_completion_tokens(self) -> int:
        return self.deltas

    def _ended_early(self) -> None:
        """What a stream cut short still leaves to record (its usage so far)."""

    def _object(self, name: str, data: bytes) -> dict[str, Any]:
        """One event's data as a JSON object; 502 for anything else."""
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise bad_response(self.provider, f"a stream event that is not JSON ({name})") from None
        if not isinstance(event, dict):
            raise bad_response(self.provider, f"a stream event that is not an object ({name})")
        return event

    def _events(self, block: bytes) -> bytes:
        raise NotImplementedError
