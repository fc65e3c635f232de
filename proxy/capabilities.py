"""``strategy = "capability"``: of an alias's targets, those that can serve the request, cheapest first.

What a request needs, read from its (chat-form) body: ``vision`` (an image part in a message),
``tools`` (``tools`` or ``functions``), ``json_schema`` (``response_format.type = "json_schema"``),
``reasoning`` (``reasoning_effort`` or ``reasoning``), and a context window holding the prompt estimate
plus the completion allowance. What a target can do: its ``capabilities`` in gateway.toml, else the
price table's metadata for its model (``capabilities``; ``context_window`` likewise, after the target's
own). A target that says nothing has none of the capabilities, and any context window.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from proxy.cost import estimated_cost
from proxy.errors import GatewayError

if TYPE_CHECKING:
    from proxy.client_request import ClientRequest
    from proxy.router import TargetState
    from proxy.settings import ModelAlias

TARGET_CAPABILITIES = ("vision", "tools", "json_schema", "reasoning")
# The request parameter each need comes from: what a 400 names when no target has it.
PARAMS = {"vision": "messages", "tools": "tools", "json_schema": "response_format", "reasoning": "reasoning_effort"}
IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})


def needs(body: dict[str, Any]) -> list[str]:
    out = []
    if any(_has_image(m) for m in body.get("messages") or [] if isinstance(m, dict)):
        out.append("vision")
    if body.get("tools") or body.get("functions"):
        out.append("tools")
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        out.append("json_schema")
    if body.get("reasoning_effort") is not None or body.get("reasoning") is not None:
        out.append("reasoning")
    return out


def _has_image(message: dict[str, Any]) -> bool:
    content = message.get("content")
    return isinstance(content, list) and any(isinstance(p, dict) and p.get("type") in IMAGE_PARTS for p in content)


def capable(alias: ModelAlias, request: ClientRequest, plan: list[TargetState], prompt: int,
            completion: int) -> list[TargetState]:
    """The targets of ``plan`` that can serve ``request``, cheapest first (unpriced last); a 400 naming
    what no target can do when none can."""
    wanted = needs(request.body)
    metadata = alias.target_metadata or [{}] * len(alias.targets)
    fit = set()
    for target, meta in zip(alias.targets, metadata, strict=True):
        can = set(target.capabilities if target.capabilities is not None else meta.get("capabilities") or ())
        window = target.context_window or meta.get("context_window")
        if all(n in can for n in wanted) and (window is None or prompt + completion <= window):
            fit.add(id(target))
    if not fit:
        raise _refusal(alias, wanted, prompt + completion)
    # capable targets whose circuit is open are out of ``plan`` already: none left is the caller's 503
    chosen = [s for s in plan if id(s.target) in fit]
    return sorted(chosen, key=lambda s: estimated_cost(s.target, prompt, completion) or float("inf"))


def _refusal(alias: ModelAlias, wanted: list[str], tokens: int) -> GatewayError:
    what = ", ".join(wanted) if wanted else "a larger context window"
    param = PARAMS[wanted[0]] if len(wanted) == 1 else ("max_tokens" if not wanted else None)
    return GatewayError(400, f"No target of `{alias.name}` can serve this request: it needs {what} "
                        f"({tokens} tokens of prompt estimate plus max_tokens).", param=param,
                        code="no_capable_target")
