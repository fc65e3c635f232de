"""Output guardrails on a chat stream, event by event: placeholders restored (holding back only the few
characters that could start one), text checked as it passes, and a block that ends the stream with a
``content_filter`` finish and an OpenAI error event. A stream with only ``flag`` checks is never held."""

from __future__ import annotations

from typing import Any

import orjson

from proxy.errors import error_event
from proxy.guardrails.checks import Guard
from proxy.guardrails.state import GuardState, blocked
from proxy.guardrails.vault import Vault

WINDOW = 512  # characters of earlier text a check sees again: a value split across chunks is still found


class StreamFilter:
    __slots__ = ("state", "vault", "guards", "buffer", "held", "seen", "reported", "blocked", "error", "head")

    def __init__(self, state: GuardState, guards: list[Guard]) -> None:
        self.state = state
        self.vault: Vault | None = state.vault if state.restore else None
        self.guards = guards  # the request's output guards that can check text piece by piece
        self.buffer = b""
        self.held: dict[int, str] = {}  # per choice: text that could still become a placeholder
        self.seen: dict[int, str] = {}  # per choice: the model's last WINDOW characters
        self.reported: set[tuple[str, int]] = set()  # (injection guardrail, choice) already flagged
        self.blocked = False
        self.error: Any = None  # the GatewayError a block ended the stream with
        self.head: dict[str, Any] = {}

    def feed(self, data: bytes) -> bytes:
        if self.blocked:
            return b""
        if not data:
            return data
        buf = self.buffer + data
        out = []
        while not self.blocked:
            end = buf.find(b"\n\n")
            if end < 0:
                break
            out.append(self._event(buf[:end + 2]))
            buf = buf[end + 2:]
        self.buffer = b"" if self.blocked else buf
        return b"".join(out)

    def _event(self, event: bytes) -> bytes:
        if not event.startswith(b"data:"):
            return event  # comments (keep-alives)
        payload = event[5:].strip()
        if payload == b"[DONE]":
            return self._flush() + event
        if not self.held and b'"content"' not in payload:
            return event
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return event
        if not isinstance(chunk, dict) or "error" in chunk:
            return event
        self.head = {k: chunk.get(k) for k in ("id", "created", "model")}
        changed = False
        for c in chunk.get("choices") or ():
            index = int(c.get("index", 0))
            delta = c.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                self._check(index, text)
                if self.blocked:
                    return self._block()
                if self.vault is not None:
                    whole = self.held.pop(index, "") + text
                    cut = self.vault.held_from(whole)
                    if cut < len(whole):
                        self.held[index] = whole[cut:]
                    delta["content"] = self.vault.restore(whole[:cut])
                    changed = True
            if c.get("finish_reason") and index in self.held:
                assert self.vault is not None
                delta["content"] = (delta.get("content") or "") + self.vault.restore(self.held.pop(index))
                c["delta"] = delta
                changed = True
        return b"data: " + orjson.dumps(chunk) + b"\n\n" if changed else event

    def _flush(self) -> bytes:
        """Text still held when the stream ends without a finish reason for it."""
        if not self.held or self.vault is None:
            return b""
        choices = [{"index": i, "delta": {"content": self.vault.restore(t)}, "finish_reason": None}
                   for i, t in self.held.items()]
        self.held.clear()
        return b"data: " + orjson.dumps({**self.head, "object": "chat.completion.chunk", "choices": choices}) + b"\n\n"

    def _check(self, index: int, text: str) -> None:
        before = self.seen.get(index, "")
        window = before + text
        self.seen[index] = window[-WINDOW:]
        for guard in self.guards:
            found = guard.scan(window, len(before))
            if not found:
                continue
            action = guard.config.action
            if action == "flag":
                k = (guard.name, index)
                if guard.config.kind == "injection":  # a score, not spans: counted once a choice
                    if k in self.reported:
                        continue
                    self.reported.add(k)
                self.state.acted(guard.name, "output", "flag", len(found))
                continue
            # block, and redact too: what was sent cannot be taken back, so a stream stops instead
            self.state.acted(guard.name, "output", "block", len(found))
            self.blocked = True
            self.error = blocked(guard.config.kind, guard.name, "output", ", ".join(sorted(set(found))))
            return

    def _block(self) -> bytes:
        finish = {**self.head, "object": "chat.completion.chunk",
                  "choices": [{"index": i, "delta": {}, "finish_reason": "content_filter"}
                              for i in sorted(set(self.seen) | {0})]}
        return b"data: " + orjson.dumps(finish) + b"\n\n" + error_event(self.error, "chat")
