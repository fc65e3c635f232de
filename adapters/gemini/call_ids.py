"""Tool call ids that carry what Gemini needs back on the next turn, so the gateway stays stateless.

``call_<24 hex>`` then optional ``.s<urlsafe-base64 of the thoughtSignature bytes>`` (``.t<urlsafe-base64 of
its text>`` when the signature is not canonical base64) and ``.i<urlsafe-base64 of Gemini's functionCall.id>``.
Only ``[A-Za-z0-9_.-]`` appears. Gemini 3 rejects a tool loop whose function call lacks its signature; for
history without one (written by hand or by another model) the request translator gives the first call of the
turn Google's documented ``skip_thought_signature_validator`` placeholder.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from typing import Any

_CALL_ID = re.compile(r"call_[0-9a-f]{24}((?:\.[sti][A-Za-z0-9_-]*)*)")


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_call_id(signature: str | None = None, gemini_id: str | None = None) -> str:
    ident = "call_" + os.urandom(12).hex()
    if signature:
        try:
            raw = base64.b64decode(signature, validate=True)
            canonical = base64.b64encode(raw).decode() == signature
        except (binascii.Error, ValueError):
            canonical = False
        # .s: the signature's bytes (it is base64 on the wire); .t: an opaque string kept verbatim
        ident += ".s" + _b64url(raw) if canonical else ".t" + _b64url(signature.encode())
    if gemini_id:
        ident += ".i" + _b64url(gemini_id.encode())
    return ident


def parse_call_id(ident: Any) -> tuple[str | None, str | None]:
    """(thoughtSignature, Gemini call id) carried by a tool call id this adapter made, else (None, None)."""
    m = _CALL_ID.fullmatch(ident) if isinstance(ident, str) else None
    if m is None or not m.group(1):
        return None, None
    signature = gemini_id = None
    for segment in m.group(1)[1:].split("."):
        tag, value = segment[:1], segment[1:]
        try:
            raw = _unb64url(value)
        except (binascii.Error, ValueError):
            continue
        if tag == "s":
            signature = base64.b64encode(raw).decode()
        elif tag == "t":
            signature = raw.decode("utf-8", "replace")
        else:
            gemini_id = raw.decode("utf-8", "replace")
    return signature, gemini_id
