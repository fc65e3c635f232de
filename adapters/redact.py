"""Secrets out of error text: what an upstream echoes back never carries a credential to a client.

A ``Redactor`` is built once per loaded config (proxy.config) from every provider credential and the
gateway's own secrets, and reaches adapters on ``ProviderConfig.redactor``. Only error paths use it: a
successful answer is never scanned. Each secret is hidden in the forms an upstream is likely to echo:
as sent, percent-encoded, JSON-escaped and base64-encoded (a ``Bearer`` prefix needs nothing more).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

import orjson

MASK = "***"
# Shorter values are placeholders ("x", "ollama"), not secrets: hiding them would mangle ordinary words.
MIN_SECRET_CHARS = 8
# Header names whose values are credentials (x-api-key, api-key, authorization, x-goog-api-key, ...).
_SECRET_HEADER = re.compile(r"auth|key|token|secret|passw|cookie|credential|signature", re.IGNORECASE)


def secret_header(name: str) -> bool:
    return _SECRET_HEADER.search(name) is not None


def encodings(secret: str) -> set[str]:
    """The forms of ``secret`` an upstream might echo in an error body."""
    raw = secret.encode()
    forms = {secret, quote(secret, safe=""), orjson.dumps(secret).decode()[1:-1],
             base64.b64encode(raw).decode().rstrip("="), base64.urlsafe_b64encode(raw).decode().rstrip("=")}
    forms.add(re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(secret, safe="")))
    return {f for f in forms if len(f) >= MIN_SECRET_CHARS}


def provider_secrets(api_key: str, headers: dict[str, str]) -> list[str]:
    """A provider's credentials: its api_key and the values of its secret-looking configured headers,
    whole and without their scheme (``Bearer abc`` hides ``abc`` too)."""
    secrets = [api_key]
    for name, value in headers.items():
        if secret_header(name):
            secrets.append(value)
            secrets.extend(value.split()[1:])
    return secrets


class Redactor:
    """Replaces every form of every secret with ``***``, longest first (so a key that contains another
    is hidden whole). Immutable once built; cheap to call when there is nothing to hide."""

    __slots__ = ("secrets", "_text", "_raw")

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        kept = []
        for secret in secrets:
            if secret and len(secret) >= MIN_SECRET_CHARS:
                kept.append(secret)
                forms |= encodings(secret)
        self.secrets: tuple[str, ...] = tuple(sorted(set(kept)))
        ordered = sorted(forms, key=lambda f: (-len(f), f))
        self._text = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        self._raw = re.compile(b"|".join(re.escape(f.encode()) for f in ordered)) if ordered else None

    def __bool__(self) -> bool:
        return self._text is not None

    def __repr__(self) -> str:
        return f"Redactor({len(self.secrets)} secrets)"  # never the secrets themselves

    def with_secrets(self, *more: str) -> Redactor:
        """This redactor plus ``more`` (built on an error path only: it compiles a new pattern)."""
        return Redactor((*self.secrets, *more))

    def text(self, value: str) -> str:
        return value if self._text is None else self._text.sub(MASK, value)

    def raw(self, value: bytes) -> bytes:
        return value if self._raw is None else self._raw.sub(MASK.encode(), value)

    def value(self, value: Any) -> Any:
        """Every string in a JSON-like value, dict keys included, with the secrets hidden."""
        if self._text is None:
            return value
        if isinstance(value, str):
            return self._text.sub(MASK, value)
        if isinstance(value, dict):
            return {self.value(k): self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value


NO_SECRETS = Redactor()
