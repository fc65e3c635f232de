"""The admin API (`/admin/keys`) and the managed-key registry every replica keeps in sync."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy.auth import KeyRing, hash_key
from proxy.errors import GatewayError, bad_request
from proxy.keystore import KeyStore, StoredKey, check_name, validate_settings
from proxy.requests import read_json
from proxy.runtime import Runtime
from proxy.settings import KeyConfig

log = logging.getLogger("gateway.admin")
POLL_S = 1.0


class ManagedKeys:
    """Keys from the database merged with the config's. Polled every second, so a key created,
    changed or revoked on any replica is in force on all of them within about a second."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self.keys: list[KeyConfig] = []  # active managed keys
        self.version: tuple[str, int] | None = None
        self.task: asyncio.Task[None] | None = None
        self.on_change: list[Any] = []  # callbacks(list[KeyConfig])

    async def start(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:  # the database may come later; config keys work meanwhile
            log.warning("managed keys unavailable for now: %s", exc)
        self.task = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            try:
                await self.refresh()
            except Exception as exc:
                log.debug("managed keys refresh failed: %s", exc)

    async def refresh(self) -> bool:
        version = await self.store.version()
        if version == self.version:
            return False
        stored = await self.store.all()
        self.keys = [k.to_config() for k in stored if k.revoked_at is None]
        self.version = version
        for callback in self.on_change:
            callback(self.keys)
        return True

    def merged(self, config_keys: list[KeyConfig]) -> list[KeyConfig]:
        taken = {k.name for k in config_keys}
        return config_keys + [k for k in self.keys if k.name not in taken]

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        await self.store.close()


def apply_keys(runtime: Runtime, managed: ManagedKeys | None) -> None:
    keys = managed.merged(runtime.config.keys) if managed else runtime.config.keys
    runtime.keys = KeyRing(keys)
    runtime.all_keys = keys


# --- the admin API ----------------------------------------------------------------------------------


def require_admin(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    admin_key = rt.config.server.admin_key
    header = request.headers.get("authorization") or ""
    scheme, _, secret = header.partition(" ")
    secret = secret.strip()
    if not admin_key:
        raise GatewayError(401, "The admin API is disabled: set [server] admin_key.", code="admin_disabled")
    if scheme.lower() != "bearer" or not secret:
        raise GatewayError(401, "Missing admin key: send 'Authorization: Bearer <admin key>'.", code="invalid_api_key")
    if hmac.compare_digest(hash_key(secret), hash_key(admin_key)):
        return rt
    if rt.keys.find(secret) is not None:
        raise GatewayError(403, "A gateway key cannot use the admin API.", "permission_error", "admin_only")
    raise GatewayError(401, "Incorrect admin key provided.", code="invalid_api_key")


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status, media_type="application/json")


def _config_key_public(k: KeyConfig) -> dict[str, Any]:
    return {"name": k.name, "source": "config", "models": k.models, "rpm": k.rpm, "tpm": k.tpm,
            "max_parallel": k.max_parallel, "budget_usd": k.budget_usd, "budget_period": k.budget_period,
            "expires_at": k.expires_at.isoformat() if k.expires_at else None, "metadata": k.metadata,
            "guardrails": k.guardrails}


def _settings(rt: Runtime, body: dict[str, Any], partial: bool) -> dict[str, Any]:
    """The key's settings, its guardrails checked against the [[guardrails]] of the config in force."""
    settings = validate_settings(body, partial)
    for name in settings.get("guardrails") or ():
        if name not in rt.config.guardrails:
            raise bad_request(f"'guardrails' names {name!r}, which is not a [[guardrails]] name in "
                              f"{rt.config.path}", param="guardrails")
    return settings


def _managed(request: Request) -> ManagedKeys:
    return request.app.state.managed_keys


async def _audit(request: Request, action: str, target: str | None, change: dict[str, Any]) -> None:
    """One row of the audit log (proxy.console.audit), when the app keeps one."""
    console = getattr(request.app.state, "console", None)
    if console is not None:
        client = request.client.host if request.client else None
        await console.audit.record("admin", action, target, change, client)


async def create_key(request: Request) -> Response:
    try:
        rt = require_admin(request)
        body = await read_json(request, rt.config.server.max_body_bytes)
        name = check_name(body.pop("name", None))
        settings = _settings(rt, body, partial=False)
        managed = _managed(request)
        secret, key = await managed.store.create(name, settings, {k.name for k in rt.config.keys})
        await managed.refresh()
        await _audit(request, "key.created", name, settings)
    except GatewayError as e:
        return e.response()
    return _json({**key.public(), "key": secret}, 201)


async def list_keys(request: Request) -> Response:
    try:
        rt = require_admin(request)
        stored = await _managed(request).store.all()
    except GatewayError as e:
        return e.response()
    data = [_config_key_public(k) for k in rt.config.keys] + [k.public() for k in stored]
    return _json({"object": "list", "data": data})


async def _change(request: Request, revoke: bool) -> Response:
    try:
        rt = require_admin(request)
        name = request.path_params["name"]
        if any(k.name == name for k in rt.config.keys):
            raise GatewayError(409, f"Key {name!r} is defined in {rt.config.path}; change it there.",
                               code="config_key")
        managed = _managed(request)
        key: StoredKey
        if revoke:
            key = await managed.store.revoke(name)
            await _audit(request, "key.revoked", name, {})
        else:
            body = await read_json(request, rt.config.server.max_body_bytes)
            if "name" in body:
                raise bad_request("a key cannot be renamed", param="name")
            changes = _settings(rt, body, partial=True)
            key = await managed.store.update(name, changes)
            await _audit(request, "key.updated", name, changes)
        await managed.refresh()
    except GatewayError as e:
        return e.response()
    return _json(key.public())


async def update_key(request: Request) -> Response:
    return await _change(request, revoke=False)


async def revoke_key(request: Request) -> Response:
    return await _change(request, revoke=True)


async def cache(request: Request) -> Response:
    """GET: the response cache's size; DELETE: drop every entry, or one alias's (``?alias=``)."""
    try:
        rt = require_admin(request)
        shared = request.app.state.cache
        alias = request.query_params.get("alias")
        if alias is not None and alias not in rt.config.models:
            raise GatewayError(404, f"No alias {alias!r} in {rt.config.path}.", code="model_not_found", param="alias")
        try:
            if request.method == "DELETE":
                deleted = await shared.clear(alias)
                await _audit(request, "cache.cleared", alias or "*", {"alias": alias, "deleted": deleted})
                return _json({"object": "cache.cleared", "alias": alias, "deleted": deleted})
            stats = await shared.stats()
        except Exception as exc:  # the cache's Redis: an error in the API's shape, never a traceback
            log.warning("response cache unavailable to the admin API: %s", exc)
            raise GatewayError(503, "The response cache's store is unreachable.", "service_unavailable_error",
                               "cache_unavailable") from None
    except GatewayError as e:
        return e.response()
    return _json({"object": "cache.stats", "backend": stats.backend, "mode": rt.config.cache.mode,
                  "entries": stats.entries, "bytes": stats.bytes, "max_bytes": stats.max_bytes})


async def refresh_prices(request: Request) -> Response:
    """POST: fetch OpenRouter's prices now and apply them (proxy.price_refresh); says what changed."""
    try:
        require_admin(request)
        app = request.app
        try:
            result = await app.state.prices.refresh(lambda: app.state.runtime)
        except Exception as exc:  # the running prices stay; the caller learns why in the API's shape
            log.warning("price refresh failed: %s: %s", type(exc).__name__, exc)
            raise GatewayError(502, f"The price refresh failed ({type(exc).__name__}): the running prices stay.",
                               "api_error", "prices_refresh_failed") from None
    except GatewayError as e:
        return e.response()
    return _json(result)
