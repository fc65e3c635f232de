"""Answers checked against the providers' published schemas: OpenAI's OpenAPI document
(/work/shared/reference/openai-openapi.json, or the copy named by OPENAI_OPENAPI) and Anthropic's
SDK types (the Python SDK's pydantic models, generated from Anthropic's own API spec)."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest

SPEC = Path(os.environ.get("OPENAI_OPENAPI", "/work/shared/reference/openai-openapi.json"))


@functools.cache
def spec() -> dict[str, Any]:
    if not SPEC.exists():
        pytest.skip(f"OpenAI's OpenAPI document is not at {SPEC}")
    return _nullable(json.loads(SPEC.read_text()))


def _nullable(node: Any) -> Any:
    """OpenAPI 3.0's ``nullable: true``, which the document still uses in places (111 of them), as the
    JSON Schema it means: the schema or null."""
    if isinstance(node, list):
        return [_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable(v) for k, v in node.items()}
    if out.get("nullable") is True:
        del out["nullable"]
        return {"anyOf": [out, {"type": "null"}]}
    return out


@functools.cache
def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                            "components": spec()["components"]})


def assert_valid(name: str, data: Any) -> None:
    """``data`` is valid against OpenAI's schema ``name`` (#/components/schemas/<name>)."""
    errors = sorted(validator(name).iter_errors(data), key=lambda e: list(e.path))
    assert not errors, f"{name}: " + "; ".join(f"{list(e.path)}: {e.message[:200]}" for e in errors[:5])


@functools.cache
def event_schemas() -> dict[str, str]:
    """Responses stream event type -> its schema's name, from the ResponseStreamEvent union."""
    schemas = spec()["components"]["schemas"]
    found = {}
    for ref in schemas["ResponseStreamEvent"]["anyOf"]:
        name = ref["$ref"].rsplit("/", 1)[1]
        for kind in schemas[name]["properties"]["type"].get("enum", ()):
            found[kind] = name
    return found


def assert_valid_response_event(event: dict[str, Any]) -> None:
    kinds = event_schemas()
    assert event["type"] in kinds, event["type"]
    assert_valid(kinds[event["type"]], event)


# --- Anthropic ---------------------------------------------------------------------------------------

# What Anthropic's API reference marks required on a Message, beyond what the SDK's defaults forgive.
MESSAGE_FIELDS = ("id", "type", "role", "content", "model", "stop_reason", "stop_sequence", "usage")
USAGE_FIELDS = ("input_tokens", "output_tokens")


def _no_unknown_fields(value: Any, where: str) -> None:
    """No member the SDK's types do not know (the SDK models allow extras; a typo would hide there)."""
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        assert not value.model_extra, f"{where}: unknown fields {sorted(value.model_extra)}"
        for name in type(value).model_fields:
            _no_unknown_fields(getattr(value, name), f"{where}.{name}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _no_unknown_fields(item, f"{where}[{i}]")


def assert_anthropic_message(data: dict[str, Any]) -> None:
    """A Messages API answer as Anthropic documents it: the SDK's Message type, strictly."""
    from anthropic.types import Message

    missing = [f for f in MESSAGE_FIELDS if f not in data] + [f"usage.{f}" for f in USAGE_FIELDS
                                                              if f not in data.get("usage", {})]
    assert not missing, f"Message lacks {missing}: {data}"
    _no_unknown_fields(Message.model_validate(data, strict=True), "message")


@functools.cache
def _event_adapter() -> Any:
    from anthropic.types import RawMessageStreamEvent
    from pydantic import TypeAdapter

    return TypeAdapter(RawMessageStreamEvent)


def assert_anthropic_event(event: dict[str, Any]) -> None:
    """One Messages stream event: ``ping`` and ``error`` as documented, the rest the SDK's types, strictly."""
    kind = event.get("type")
    if kind == "ping":
        assert event == {"type": "ping"}, event
        return
    if kind == "error":
        error = event.get("error")
        assert set(event) == {"type", "error"} and isinstance(error, dict), event
        assert isinstance(error.get("type"), str) and isinstance(error.get("message"), str), event
        return
    parsed = _event_adapter().validate_python(event, strict=True)
    _no_unknown_fields(parsed, kind or "event")
    if kind == "message_start":
        assert_anthropic_message(event["message"])
    elif kind == "message_delta":
        assert "stop_reason" in event["delta"] and "output_tokens" in event["usage"], event
