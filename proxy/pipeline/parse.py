"""The parse stage: a client's JSON body, validated for its endpoint and read once into a ClientRequest."""

from __future__ import annotations

import os
import re
import time
from typing import Any

from proxy.client_request import ClientRequest
from proxy.errors import bad_request
from proxy.pipeline.estimate import choices_of, estimate_prompt_tokens
from proxy.pipeline.validate import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    check_input,
    check_messages,
    check_model,
    check_params,
    check_prompt,
)

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
    model = check_model(body.get("model"))
    if endpoint == "chat":
        check_chat(body)
    elif endpoint == "completions":
        check_completions(body)
    else:
        check_embeddings(body)
    stream = endpoint != "embeddings" and body.get("stream") is True
    return ClientRequest(endpoint, model, body, request_id, header_id, stream, include_usage(body),
                         estimate_prompt_tokens(body), requested_max_tokens(body), choices_of(body))


def check_chat(body: dict[str, Any]) -> None:
    check_messages(body.get("messages"))
    check_params(body, CHAT)
    options = body.get("stream_options")
    flag = options.get("include_usage") if isinstance(options, dict) else None
    if flag is not None and not isinstance(flag, bool):
        raise bad_request("Invalid type for 'stream_options.include_usage': expected a boolean.",
                          param="stream_options.include_usage", code="invalid_type")


def check_completions(body: dict[str, Any]) -> None:
    check_prompt(body.get("prompt"))
    check_params(body, COMPLETIONS)


def check_embeddings(body: dict[str, Any]) -> None:
    check_input(body.get("input"))
    if body.get("messages") is not None:  # not an embeddings parameter; refused rather than half-read (token estimates)
        raise bad_request("Unrecognized request argument supplied: messages (embeddings take 'input')",
                          param="messages", code="unknown_parameter")
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        raise bad_request("'encoding_format' must be 'float' or 'base64'", param="encoding_format",
                          code="invalid_value")
    check_params(body, EMBEDDINGS)


def include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def requested_max_tokens(body: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and value > 0:
            return value
    return None

