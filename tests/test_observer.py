"""The observer protocol is complete: every hook the gateway calls is declared on Observer, and
Observers hands each hook to every part, in order."""

from __future__ import annotations

import asyncio
import inspect
import re
from pathlib import Path
from typing import Any

from proxy.observability import Observer, Observers

ROOT = Path(__file__).resolve().parent.parent
HOOKS = [name for name, value in vars(Observer).items() if callable(value) and not name.startswith("_")]


def test_every_hook_called_on_an_observer_is_declared():
    called = set()
    for path in (ROOT / "proxy").rglob("*.py"):
        called |= set(re.findall(r"\b(?:obs|observer)\.([a-z_]+)\(", path.read_text()))
    assert called, "no observer calls found: the pattern no longer matches the code"
    assert called <= set(HOOKS), f"called on an observer but not declared on Observer: {called - set(HOOKS)}"


def test_observers_passes_every_hook_to_every_part():
    calls: list[tuple[Any, str]] = []

    def recorder(name: str) -> Any:
        if inspect.iscoroutinefunction(getattr(Observer, name)):
            async def record_async(self: Observer, *args: Any) -> None:
                calls.append((self, name))
            return record_async

        def record(self: Observer, *args: Any) -> None:
            calls.append((self, name))
        return record

    part = type("Part", (Observer,), {name: recorder(name) for name in HOOKS})
    first, second = part(), part()
    both = Observers([first, second])
    for name in HOOKS:
        arity = len(inspect.signature(getattr(Observer, name)).parameters) - 1
        result = getattr(both, name)(*[None] * arity)
        if inspect.iscoroutine(result):
            asyncio.run(result)
    assert calls == [(p, name) for name in HOOKS for p in (first, second)]
