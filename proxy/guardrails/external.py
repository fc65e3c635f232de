"""Guardrails that ask someone else: ``python`` (a function in this process), ``webhook`` (an HTTP
service) and ``llm`` (an alias of this gateway that classifies). Each has ``timeout_s``; a failure or
a timeout follows ``on_error`` (allow: the request goes on, recorded as action "error"; block: 400)."""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import hmac
import importlib
import inspect
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from proxy.guardrails.checks import Guard
from proxy.guardrails.state import GuardState, blocked
from proxy.guardrails.text import Slot
from proxy.pipeline.transaction import ClientWatch
from proxy.settings import GuardrailConfig

if TYPE_CHECKING:
    from proxy.runtime import Runtime

log = logging.getLogger("gateway")

# Set while a guardrail's own call goes through the pipeline: that call is not guarded again.
CLASSIFYING: contextvars.ContextVar[bool] = contextvars.ContextVar("gateway_guardrail_call", default=False)

_UNSAFE = re.compile(r"\b(unsafe|block)\b")
_SAFE = re.compile(r"\b(safe|allow)\b")
DEFAULT_PROMPT = ("You are a content-safety classifier. Read the text below and answer with exactly one word: "
                  "'safe' if it is acceptable, 'unsafe' if it is not.\n\nText:\n{text}")


class Blocked(Exception):  # noqa: N818 - the name users raise: "raise Blocked('why')"
    """Raised by a ``kind = "python"`` guardrail's function to refuse the request (or answer): the client
    gets a 400 with code ``guardrail_blocked`` and this message."""


class CheckFailed(Exception):
    pass


class ExternalGuard(Guard):
    async def check(self, tx: Any, state: GuardState, on: str, body: dict[str, Any], slots: list[Slot]
                    ) -> dict[str, Any] | None:
        try:
            verdict, detail = await asyncio.wait_for(self.ask(tx, on, body, slots), self.config.timeout_s)
        except Blocked as e:
            verdict, detail = "block", str(e)
        except (TimeoutError, CheckFailed, httpx.HTTPError, ValueError, TypeError, orjson.JSONDecodeError) as e:
            log.warning("guardrail %s failed (%s): on_error = %s", self.name, type(e).__name__, self.config.on_error)
            return self._failed(state, on)
        except Exception:  # the user's function raised something else: a failure, not a crash
            log.exception("guardrail %s raised", self.name)
            return self._failed(state, on)
        if verdict == "modify":
            state.acted(self.name, on, "modify")
            return detail if isinstance(detail, dict) else None
        if verdict == "block":
            state.acted(self.name, on, self.config.action)
            if self.config.action == "block":
                raise blocked(self.config.kind, self.name, on, detail if isinstance(detail, str) else "")
        return None

    def _failed(self, state: GuardState, on: str) -> None:
        state.acted(self.name, on, "error")
        if self.config.on_error == "block":
            raise blocked(self.config.kind, self.name, on, "the check could not be made")

    async def ask(self, tx: Any, on: str, body: dict[str, Any], slots: list[Slot]) -> tuple[str, Any]:
        """("allow" | "block" | "modify", the message or the new body)."""
        raise NotImplementedError


class PythonGuard(ExternalGuard):
    def __init__(self, config: GuardrailConfig) -> None:
        super().__init__(config)
        module, _, attr = config.function.partition(":")
        self.fn: Callable[..., Any] = getattr(importlib.import_module(module), attr)
        self.is_async = inspect.iscoroutinefunction(self.fn)

    async def ask(self, tx: Any, on: str, body: dict[str, Any], slots: list[Slot]) -> tuple[str, Any]:
        before = orjson.dumps(body)  # to tell a body changed in place from one left alone
        if self.is_async:
            result = await self.fn(body)
        else:  # a thread: a slow sync function must not stall every other request
            result = await asyncio.to_thread(self.fn, body)
        if result is None or result is body:
            return ("allow", None) if orjson.dumps(body) == before else ("modify", body)
        if not isinstance(result, dict):
            raise CheckFailed(f"returned {type(result).__name__}, not a dict or None")
        return "modify", result


class WebhookGuard(ExternalGuard):
    """POSTs ``{"guardrail", "on", "request_id", "model", "body"}``; the JSON answer is
    ``{"action": "allow"}``, ``{"action": "block", "message": ...}`` or ``{"action": "modify", "body": {...}}``.
    With ``secret``, ``x-gateway-signature: sha256=<hex HMAC-SHA256 of the raw body>``."""

    def __init__(self, config: GuardrailConfig) -> None:
        super().__init__(config)
        self.client = httpx.AsyncClient(timeout=config.timeout_s)

    async def ask(self, tx: Any, on: str, body: dict[str, Any], slots: list[Slot]) -> tuple[str, Any]:
        payload = orjson.dumps({"guardrail": self.name, "on": on, "request_id": tx.request_id,
                                "model": tx.model, "body": body})
        headers = {"content-type": "application/json"}
        if self.config.secret:
            digest = hmac.new(self.config.secret.encode(), payload, hashlib.sha256).hexdigest()
            headers["x-gateway-signature"] = f"sha256={digest}"
        r = await self.client.post(self.config.url, content=payload, headers=headers)
        if r.status_code // 100 != 2:
            raise CheckFailed(f"status {r.status_code}")
        answer = orjson.loads(r.content)
        action = answer.get("action") if isinstance(answer, dict) else None
        if action == "allow":
            return "allow", None
        if action == "block":
            return "block", str(answer.get("message") or "")
        if action == "modify" and isinstance(answer.get("body"), dict):
            return "modify", answer["body"]
        raise CheckFailed("the answer is not allow, block or modify")

    async def aclose(self) -> None:
        await self.client.aclose()


class _Inbound:
    """A classification request, as if a client sent it with the guarded request's key."""

    endpoint = "chat"
    api_headers = cache_control = session_id = end_user = None

    def __init__(self, authorization: str | None, request_id: str, body: dict[str, Any]) -> None:
        self.authorization = authorization
        self.client_request_id = request_id
        self.watch = ClientWatch()
        self.body = body

    async def json(self, limit: int) -> dict[str, Any]:
        return self.body


class LLMGuard(ExternalGuard):
    """Asks ``model`` (an alias) with ``prompt``; an answer with the word "unsafe" (or "block") blocks, else
    one with "safe" (or "allow") allows, anything else is a failure (Llama Guard answers "safe" or
    "unsafe\nS1"). Its call has its own usage row, whose
    request id is the guarded request's x-request-id plus ``-guard-<name>``, accounted to the same key."""

    def __init__(self, config: GuardrailConfig, runtime: Runtime) -> None:
        super().__init__(config)
        self.runtime = runtime

    async def ask(self, tx: Any, on: str, body: dict[str, Any], slots: list[Slot]) -> tuple[str, Any]:
        text = "\n\n".join(slot.text for slot in slots)
        prompt = (self.config.prompt or DEFAULT_PROMPT).replace("{text}", text)
        request = {"model": self.config.model, "messages": [{"role": "user", "content": prompt}],
                   "temperature": 0, "max_tokens": 16}
        inbound = _Inbound(tx.authorization, f"{tx.header_id}-guard-{self.name}"[:128], request)
        token = CLASSIFYING.set(True)
        try:
            answer = await self.runtime.pipeline.handle(inbound)  # type: ignore[arg-type]
        finally:
            CLASSIFYING.reset(token)
        answer.after()  # its usage row
        if answer.status != 200:
            raise CheckFailed(f"classifier answered {answer.status}")
        reply = orjson.loads(answer.body)  # type: ignore[union-attr]
        verdict = str(reply["choices"][0]["message"]["content"] or "").lower()
        if _UNSAFE.search(verdict):
            return "block", ""
        if _SAFE.search(verdict):
            return "allow", None
        raise CheckFailed("unparseable verdict")
