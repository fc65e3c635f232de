"""Typed placeholders for redacted values, and putting the originals back (``restore = true``).

The same value gets the same placeholder within a request (``[EMAIL_1]``), so the model can still
refer to "the same email". The originals live only in this request's memory.
"""

from __future__ import annotations

import re

import orjson

from proxy.guardrails.detect import Span

PLACEHOLDER = re.compile(r"\[([A-Z][A-Z0-9_]*_[0-9]+)\]")
_PLACEHOLDER_BYTES = re.compile(rb"\[([A-Z][A-Z0-9_]*_[0-9]+)\]")
_PREFIX_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


class Vault:
    __slots__ = ("by_value", "originals", "counts", "longest")

    def __init__(self) -> None:
        self.by_value: dict[tuple[str, str], str] = {}
        self.originals: dict[str, str] = {}  # placeholder (without brackets) -> original
        self.counts: dict[str, int] = {}
        self.longest = 0  # the longest placeholder handed out, brackets included

    def placeholder(self, entity: str, value: str) -> str:
        got = self.by_value.get((entity, value))
        if got is None:
            n = self.counts[entity] = self.counts.get(entity, 0) + 1
            name = f"{entity.upper()}_{n}"
            self.originals[name] = value
            got = self.by_value[(entity, value)] = f"[{name}]"
            self.longest = max(self.longest, len(got))
        return got

    def redact(self, text: str, spans: list[Span]) -> str:
        parts, at = [], 0
        for start, end, entity in spans:
            parts.append(text[at:start])
            parts.append(self.placeholder(entity, text[start:end]))
            at = end
        parts.append(text[at:])
        return "".join(parts)

    def restore(self, text: str) -> str:
        if "[" not in text or not self.originals:
            return text
        return PLACEHOLDER.sub(lambda m: self.originals.get(m.group(1), m.group()), text)

    def restore_json(self, body: bytes) -> bytes:
        """Placeholders in a JSON document replaced by their originals, JSON-escaped (a placeholder's
        own characters never need escaping, so it appears in the bytes as it is in the text)."""
        if not self.originals or b"[" not in body:
            return body
        originals = self.originals

        def sub(m: re.Match[bytes]) -> bytes:
            value = originals.get(m.group(1).decode())
            return m.group() if value is None else orjson.dumps(value)[1:-1]
        return _PLACEHOLDER_BYTES.sub(sub, body)

    def held_from(self, text: str) -> int:
        """Where the tail that could still become a placeholder starts (``len(text)`` if none): only
        those few characters wait for the next piece of a stream."""
        i = text.rfind("[")
        if i < 0 or len(text) - i >= self.longest:
            return len(text)
        tail = text[i + 1:]
        return i if all(c in _PREFIX_CHARS for c in tail) else len(text)
