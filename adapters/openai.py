"""kind = "openai": any OpenAI-compatible API (OpenAI, OpenRouter, Mistral, Groq, vLLM, Ollama, ...).

Requests are forwarded as sent except ``model``. Streams pass through at the byte level: the
``model`` value is rewritten in place and only the event that carries ``usage`` is parsed.
"""

from __future__ import annotations

import base64
import re
import struct
from typing import Any

import orjson

from adapters.base import (
    Adapter,
    Call,
    Reply,
    StreamTranslator,
    UpstreamError,
    UpstreamRequest,
    Usage,
    bad_response,
    loads_object,
    upstream_status_error,
)
from adapters.redact import NO_SECRETS, Redactor
from adapters.sse_decoder import closed, first_event_end, last_event_end, parse_events
from adapters.targets import ProviderConfig

# The top-level "model" member of a chunk. Quotes inside JSON strings are always escaped, so an
# unescaped `"model"` followed by a colon can only be a key.
_MODEL = re.compile(rb'"model"\s*:\s*"(?:[^"\\]|\\.)*"')
_DONE = b"[DONE]"


class OpenAIAdapter(Adapter):
    def __init__(self, provider: ProviderConfig) -> None:
        super().__init__(provider)
        self.headers = {"content-type": "application/json", **provider.headers}
        if provider.api_key:
            self.headers["authorization"] = f"Bearer {provider.api_key}"
        self.chat_url = f"{provider.base_url}/chat/completions"
        self.embeddings_url = f"{provider.base_url}/embeddings"
        self.completions_url = f"{provider.base_url}/completions"

    # chat -------------------------------------------------------------------------------------------

    def chat_request(self, call: Call) -> UpstreamRequest:
        return UpstreamRequest(self.chat_url, self.headers, orjson.dumps(_forwarded(call)))

    def chat_response(self, call: Call, body: bytes) -> Reply:
        data = loads_object(self.provider, body)
        if "choices" not in data:
            if isinstance(data.get("error"), dict):  # some servers answer 200 with an error body
                raise self.error(502, body, {})
            raise bad_response(self.provider, "a chat response without choices")
        data["model"] = call.alias
        return Reply(orjson.dumps(data), Usage.from_openai(data.get("usage")))

    def chat_stream(self, call: Call) -> StreamTranslator:
        return OpenAIStream(call.alias, call.include_usage, self.provider.redactor)

    # legacy completions: the chat wire format's twin (choices[].text), so the same pass-through --------

    def completions_request(self, call: Call) -> UpstreamRequest:
        return UpstreamRequest(self.completions_url, self.headers, orjson.dumps(_forwarded(call)))

    def completions_response(self, call: Call, body: bytes) -> Reply:
        return self.chat_response(call, body)

    def completions_stream(self, call: Call) -> StreamTranslator:
        return self.chat_stream(call)

    # embeddings -------------------------------------------------------------------------------------

    def embeddings_request(self, call: Call) -> UpstreamRequest:
        body = dict(call.body)
        body["model"] = call.target.model
        return UpstreamRequest(self.embeddings_url, self.headers, orjson.dumps(body))

    def embeddings_response(self, call: Call, body: bytes) -> Reply:
        data = loads_object(self.provider, body)
        if not isinstance(data.get("data"), list):
            raise bad_response(self.provider, "an embeddings response without data")
        data["model"] = call.alias
        if call.body.get("encoding_format") == "base64":
            _as_base64(data["data"])
        return Reply(orjson.dumps(data), Usage.from_openai(data.get("usage")))

    # errors -----------------------------------------------------------------------------------------

    def error(self, status: int, body: bytes, headers: dict[str, str]) -> UpstreamError:
        return openai_error(self.provider, status, body, headers)


def _as_base64(items: list[Any]) -> None:
    """Float arrays an upstream answered to a base64 request (Ollama, LM Studio, Infinity do) packed as
    OpenAI packs them, little-endian float32: SDKs that asked for base64 decode whatever string comes."""
    for item in items:
        vec = item.get("embedding") if isinstance(item, dict) else None
        if isinstance(vec, list) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in vec):
            item["embedding"] = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()


def _forwarded(call: Call) -> dict[str, Any]:
    """The client's body with the target's model; a stream always asks for usage so the ledger has real
    numbers (the stream translator drops the usage-only chunk if the client did not ask for it)."""
    body = dict(call.body)
    body["model"] = call.target.model
    if call.stream:
        options = body.get("stream_options")
        body["stream_options"] = {**options, "include_usage": True} if isinstance(options, dict) else {
            "include_usage": True
        }
    return body


def openai_error(provider: ProviderConfig, status: int, body: bytes, headers: dict[str, str]) -> UpstreamError:
    message, type_, code, param = f"HTTP {status}", None, None, None
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        message = str(err.get("message") or message)
        type_ = err.get("type") if isinstance(err.get("type"), str) else None
        code = str(err["code"]) if err.get("code") is not None else None
        param = err.get("param") if isinstance(err.get("param"), str) else None
    elif isinstance(err, str):
        message = err
    elif data is None and body:
        message = f"HTTP {status} with a non-JSON body"
    return upstream_status_error(provider, status, message, type_, code, param, headers.get("retry-after"))


class OpenAIStream(StreamTranslator):
    """Byte-level pass-through of an OpenAI SSE stream.

    Works on whole events, cut where ``adapters.sse_decoder`` says they end: a read may end mid-event,
    so the tail waits for the next read. Per read it runs one substitution for ``model`` and a few
    substring checks; only an event carrying a non-null ``usage`` or an ``error`` is parsed.
    """

    def __init__(self, alias: str, include_usage: bool, redactor: Redactor = NO_SECRETS) -> None:
        self.model = b'"model":' + orjson.dumps(alias)
        self.redactor = redactor
        self.seen_model: bytes | None = None  # the upstream's exact `"model":"..."` member, once seen
        self.include_usage = include_usage
        self.pending = b""
        self.usage: Usage | None = None
        self.done = False
        self.error: UpstreamError | None = None
        self.delta_events = 0

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return b""
        if self.pending:
            data = self.pending + data
        cut = last_event_end(data)
        self.pending = data[cut:]
        return self._events(data[:cut]) if cut else b""

    def end(self) -> bytes:
        out = b""
        if self.pending and not self.done:
            out = self._events(closed(self.pending))
            self.pending = b""
        if not self.done and self.error is None:
            raise UpstreamError(502, "upstream stream ended before [DONE]", "bad_response", "upstream_error",
                                "stream_truncated")
        return out

    def _rewrite_model(self, block: bytes) -> bytes:
        """Every chunk of a stream names the same upstream model, so the regex runs only until it has
        learned that exact member; a plain bytes.replace, several times faster on a burst of chunks,
        rewrites the rest. An empty name is not learned (Azure opens with a chunk whose "model" is ""),
        and an upstream that already names the alias is left alone rather than copied for nothing."""
        seen = self.seen_model
        if seen is not None:
            return block if seen == self.model else block.replace(seen, self.model)
        for match in _MODEL.finditer(block):
            if not match.group(0).endswith(b'""'):
                self.seen_model = seen = match.group(0)
                end = match.end()
                return _MODEL.sub(self.model, block[:end]) + block[end:].replace(seen, self.model)
        return _MODEL.sub(self.model, block)

    # Substrings that make a block worth inspecting event by event; subclasses may add their own.
    # Each is one scan of the block, so they start with rare bytes: any usage object holds
    # "prompt_tokens"; an in-band error event has an "error" member (in a chunk's text the quotes are
    # escaped, so it cannot match there), wherever the upstream puts it.
    markers: tuple[bytes, ...] = (b"prompt_tokens", b"[DONE]", b'"error"')

    def _events(self, block: bytes) -> bytes:
        block = self._rewrite_model(block)
        # One event carries about one token: good enough when the upstream never sends usage.
        self.delta_events += block.count(b"data:")
        # Only the events from the first one worth inspecting onward take the slow path: a read that
        # holds 200 content chunks and the usage chunk must not parse the 200.
        first = -1
        for marker in self.markers:
            at = block.find(marker)
            if at >= 0 and (first < 0 or at < first):
                first = at
        if first < 0:
            return block
        cut = last_event_end(block[:first])
        return block[:cut] + self._slow_path(block[cut:]) if cut else self._slow_path(block)

    def _slow_path(self, block: bytes) -> bytes:
        """Inspect event by event: capture usage, drop what the client did not ask for, stop at [DONE]."""
        out: list[bytes] = []
        while block:
            cut = first_event_end(block)
            raw, block = block[:cut], block[cut:]
            keep: bool | bytes = True
            for _, payload in parse_events(raw):
                if payload.strip() == _DONE:
                    out.append(b"data: [DONE]\n\n")
                    self.done = True
                    return b"".join(out)
                if any(m in payload for m in self.markers):
                    keep = self._inspect(payload, raw)
            if keep is True:
                out.append(raw)
            elif keep:
                out.append(keep)  # an error event, scrubbed of secrets
        return b"".join(out)

    def _inspect(self, payload: bytes, raw: bytes) -> bool | bytes:
        """Parse one event (``raw`` is all of it); return whether the client should see it, or the bytes
        to send instead."""
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            # Not ours to judge, but it looked like an error (or usage): relayed with secrets hidden.
            return self.redactor.raw(raw)
        if not isinstance(event, dict):
            return True
        err = event.get("error")
        if isinstance(err, dict | str) and err and "choices" not in event:
            err = err if isinstance(err, dict) else {"message": err}
            code = err.get("code")
            self.error = UpstreamError(502, str(err.get("message") or "upstream stream error"), "bad_response",
                                       str(err.get("type") or "upstream_error"),
                                       str(code) if code is not None else None, redactor=self.redactor)
            # The upstream's own event, every string in it scrubbed (in-band errors skip adapter.error).
            return b"data: " + orjson.dumps(self.redactor.value(event)) + b"\n\n"
        usage = Usage.from_openai(event.get("usage"))
        if usage is not None:
            self.usage = usage
            return self.include_usage or bool(event.get("choices"))
        return self.keep_event(event)

    def keep_event(self, event: dict[str, Any]) -> bool:
        """Whether an inspected event without usage goes to the client; subclasses filter here."""
        return True

    def estimated_completion_tokens(self) -> int:
        return self.delta_events
