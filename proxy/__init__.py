"""llm-gateway: an OpenAI-compatible reverse proxy for LLM APIs, and the same gateway as a library."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxy.library import Gateway

__all__ = ["Gateway"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `import proxy.cli` (the server) should not pay for library mode.
    if name == "Gateway":
        from proxy.library import Gateway

        return Gateway
    raise AttributeError(f"module 'proxy' has no attribute {name!r}")
