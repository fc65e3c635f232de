"""Functions for ``kind = "python"`` guardrails in tests/test_guardrails.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from proxy.guardrails import Blocked


def shout(body: dict[str, Any]) -> dict[str, Any]:
    """Sync, modifies: the last message's text in capitals."""
    body["messages"][-1]["content"] = str(body["messages"][-1]["content"]).upper()
    return body


async def refuse_secrets(body: dict[str, Any]) -> None:
    """Async, blocks a request that mentions "classified"."""
    if "classified" in str(body.get("messages")):
        raise Blocked("no classified material")


def slow(body: dict[str, Any]) -> None:
    time.sleep(1.0)


async def slow_async(body: dict[str, Any]) -> None:
    await asyncio.sleep(1.0)
