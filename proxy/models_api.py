"""What GET /v1/models and /v1/models/{id} say of an alias: OpenAI's model object plus extra fields
(the SDKs keep unknown fields: ``model.model_extra`` in Python).

    context_window   the first target's ``context_window``, else the prices file's; null if unknown
    pricing          the first target's prices in USD per million tokens: input_per_million,
                     output_per_million, and cached_input_per_million / per_request where set; null
                     when the target is unpriced
    capabilities     {streaming, tools, vision, reasoning, embeddings}, each true or false: from the
                     alias's ``capabilities`` key, else the prices file's metadata for the first target
                     (OpenRouter's), else what an echo provider does; null when nothing says

The first target is the one a request goes to when all is well; a fallback's window and prices may
differ, and the usage rows record what each request really cost.
"""

from __future__ import annotations

from typing import Any

from proxy.prices import CAPABILITIES
from proxy.settings import ModelAlias, ProviderConfig

ECHO_CAPABILITIES = ("streaming", "embeddings")


def model_object(alias: ModelAlias, providers: dict[str, ProviderConfig], created: int) -> dict[str, Any]:
    target = alias.targets[0]
    provider = providers.get(target.provider)
    return {"id": alias.name, "object": "model", "created": created, "owned_by": target.provider,
            "context_window": target.context_window or alias.file_metadata.get("context_window"),
            "pricing": pricing(alias), "capabilities": capabilities(alias, provider)}


def pricing(alias: ModelAlias) -> dict[str, float] | None:
    t = alias.targets[0]
    if t.input_per_mtok is None or t.output_per_mtok is None:
        return None
    out = {"input_per_million": t.input_per_mtok, "output_per_million": t.output_per_mtok}
    if t.cached_input_per_mtok is not None:
        out["cached_input_per_million"] = t.cached_input_per_mtok
    if t.per_request is not None:
        out["per_request"] = t.per_request
    return out


def capabilities(alias: ModelAlias, provider: ProviderConfig | None) -> dict[str, bool] | None:
    said: tuple[str, ...] | list[str] | None = alias.capabilities
    if said is None:
        said = alias.file_metadata.get("capabilities")
    if said is None and provider is not None and provider.kind == "echo":
        said = ECHO_CAPABILITIES
    if said is None:
        return None
    return {name: name in said for name in CAPABILITIES}
