"""The parse stage: a client's JSON body, validated for its endpoint and read once into a ClientRequest."""

from __future__ import annotations

import os
import re
import time
from typing import Any

from proxy.client_request import ClientRequest
from proxy.errors import bad_request
from proxy.pipeline.estimate import choices_of, estimate_prompt_tokens

_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def request_ids(given: str | None) -> tuple[str, str]:
    """(the id for the x-request-id header, the usage row's unique id).

    The header echoes the client's x-request-id when it is a sane token. The row id must be unique
    (it is the ledger's primary key, and a replayed row must not be counted twice), so a client id
    gets a random suffix there: a client reusing its id cannot drop or dodge usage rows.
    The gateway's own ids lead with the time in milliseconds (as UUIDv7 does), then 64 random bits,
    so that rows arrive in key order and the ledger's primary-key index only appends.
    """
    if given and _CLIENT_REQUEST_ID.fullmatch(given):
        return given, f"{given}.{os.urandom(6).hex()}"
    rid = f"req_{time.time_ns() // 1_000_000:012x}{os.urandom(8).hex()}"
    return rid, rid


def parse(endpoint: str, body: dict[str, Any], request_id: str, header_id: str) -> ClientRequest:
    """Validate ``body`` for ``endpoint`` (a 400 naming the parameter) and read what later stages need."""
    model = model_of(body)
    if model is None:
        raise bad_request("you must provide a model parameter", param="model", code="missing_required_parameter")
    if endpoint == "chat":
        check_chat(body)
    else:
        check_embeddings(body)
    stream = endpoint == "chat" and body.get("stream") is True
    return ClientRequest(endpoint, model, body, request_id, header_id, stream, include_usage(body),
                         estimate_prompt_tokens(body), requested_max_tokens(body), choices_of(body))


def model_of(body: dict[str, Any]) -> str | None:
    model = body.get("model")
    return model if isinstance(model, str) and model else None


def check_chat(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array", param="messages",
                          code="missing_required_parameter" if messages is None else "invalid_type")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise bad_request(f"messages[{i}] must be an object with a 'role'", param=f"messages[{i}]",
                              code="invalid_type")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean", param="stream", code="invalid_type")


def check_embeddings(body: dict[str, Any]) -> None:
    inputs = body.get("input")
    if inputs is None:
        raise bad_request("you must provide an input parameter", param="input", code="missing_required_parameter")
    if not isinstance(inputs, str | list) or (isinstance(inputs, list) and not inputs):
        raise bad_request("'input' must be a string or a non-empty array", param="input", code="invalid_type")
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        raise bad_request("'encoding_format' must be 'float' or 'base64'", param="encoding_format",
                          code="invalid_value")


def include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def requested_max_tokens(body: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and value > 0:
            return value
    return None

