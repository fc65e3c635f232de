"""One request's guardrail state: its placeholders and what each guardrail did (names and counts only)."""

from __future__ import annotations

import orjson

from proxy.errors import GatewayError
from proxy.guardrails.vault import Vault

CODES = {"pii": "pii_detected", "regex": "pii_detected", "injection": "prompt_injection_detected"}


class GuardState:
    __slots__ = ("vault", "restore", "actions", "output")

    def __init__(self) -> None:
        self.vault = Vault()
        self.restore = False  # a restore = true guardrail redacted something: the answer gets the originals
        self.actions: dict[tuple[str, str, str], int] = {}  # (guardrail, on, action) -> count
        self.output: list = []  # the request's output guardrails, in order

    def acted(self, name: str, on: str, action: str, count: int = 1) -> None:
        k = (name, on, action)
        self.actions[k] = self.actions.get(k, 0) + count

    def summary(self) -> str | None:
        """The usage row's ``guardrail_actions``: JSON names, sides, actions and counts; never a value."""
        if not self.actions:
            return None
        return orjson.dumps([{"guardrail": g, "on": on, "action": a, "count": n}
                             for (g, on, a), n in self.actions.items()]).decode()

    def names(self) -> list[str]:
        seen: dict[str, None] = {}
        for g, _, _ in self.actions:
            seen[g] = None
        return list(seen)


def blocked(kind: str, name: str, on: str, what: str = "") -> GatewayError:
    """The 400 a block answers: names the guardrail and, for pii, the entity types; never a value."""
    code = CODES.get(kind, "guardrail_blocked")
    side = "request" if on == "input" else "answer"
    if code == "pii_detected":
        message = f"The {side} contains data the gateway does not let through: {what} (guardrail '{name}')."
    elif code == "prompt_injection_detected":
        message = f"The {side} looks like a prompt-injection attempt (guardrail '{name}')."
    else:
        message = f"The {side} was blocked by guardrail '{name}'" + (f": {what}" if what else ".")
    return GatewayError(400, message, "invalid_request_error", code)
