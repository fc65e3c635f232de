"""End users: who a key's request is for, so that limits and spend can be per end user within a key.

The ``x-gateway-end-user`` header, else the body's ``user`` (OpenAI's field; Anthropic's
``metadata.user_id`` arrives as it). At most ``MAX_CHARS`` printable characters, else a 400.
"""

from __future__ import annotations

from typing import Any

from proxy.errors import bad_request

HEADER = "x-gateway-end-user"
MAX_CHARS = 256


def identify(inbound: Any, body: dict[str, Any]) -> str | None:
    header = inbound.end_user
    if header:
        return _checked(header, HEADER)
    user = body.get("user")
    return _checked(user, "user") if isinstance(user, str) and user else None


def _checked(value: str, param: str) -> str:
    if len(value) > MAX_CHARS or not value.isprintable():
        raise bad_request(f"'{param}' must be at most {MAX_CHARS} printable characters", param=param,
                          code="invalid_value")
    return value
