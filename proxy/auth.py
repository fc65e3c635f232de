"""Gateway keys: stored as sha256 digests, looked up by digest, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from fnmatch import fnmatchcase

from proxy.errors import GatewayError
from proxy.settings import KeyConfig


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyRing:
    def __init__(self, keys: list[KeyConfig]) -> None:
        self._by_hash = {k.key_hash: k for k in keys}

    def find(self, secret: str) -> KeyConfig | None:
        digest = hash_key(secret)
        key = self._by_hash.get(digest)
        return key if key is not None and hmac.compare_digest(key.key_hash, digest) else None

    def authenticate(self, authorization: str | None) -> KeyConfig:
        if not authorization:
            raise GatewayError(
                401, "Missing API key: send 'Authorization: Bearer <gateway key>'.", code="invalid_api_key"
            )
        scheme, _, secret = authorization.partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise GatewayError(401, "Malformed Authorization header: expected 'Bearer <key>'.", code="invalid_api_key")
        digest = hash_key(secret)
        key = self._by_hash.get(digest)
        # The dict lookup is by digest; the final equality check is constant time all the same.
        if key is None or not hmac.compare_digest(key.key_hash, digest):
            raise GatewayError(401, "Incorrect API key provided.", code="invalid_api_key")
        if key.expires_at is not None and datetime.now(UTC) >= key.expires_at:
            raise GatewayError(401, "This API key has expired.", code="expired_api_key")
        return key


# Headers that carry a bare key, in the order they are read after Authorization: Anthropic's SDKs send
# x-api-key, Azure's api-key.
KEY_HEADERS = ("x-api-key", "api-key")


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request names, as an Authorization value, so that every header is checked the same way:
    ``Authorization`` as sent, else ``x-api-key`` or ``api-key`` read as ``Bearer <value>``."""
    authorization = headers.get("authorization")
    if authorization:
        return authorization
    for name in KEY_HEADERS:
        value = headers.get(name)
        if value and value.strip():
            return "Bearer " + value.strip()
    return None


def bearer_secret(authorization: str | None) -> str:
    """The key in an ``Authorization: Bearer <key>`` header ("" if none)."""
    scheme, _, secret = (authorization or "").partition(" ")
    return secret.strip() if scheme.lower() == "bearer" else ""


def model_allowed(key: KeyConfig | None, alias: str) -> bool:
    if key is None:
        return True
    for pattern in key.models:  # a loop, not any(genexpr): once per request
        if pattern == "*" or pattern == alias or fnmatchcase(alias, pattern):
            return True
    return False
