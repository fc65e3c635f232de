"""The parse stage: a client's JSON body, validated for its endpoint and read once into a ClientRequest."""

from __future__ import annotations

import os
import re
import time
from typing import Any

from adapters.errors import APIError
from adapters.inbound import anthropic_messages, openai_responses
from proxy.client_request import ClientRequest
from proxy.errors import bad_request
from proxy.frontend import MessagesFrontend, ResponsesFrontend
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


def parse(endpoint: str, body: dict[str, Any], request_id: str, header_id: str,
          api_headers: dict[str, str] | None = None) -> ClientRequest:
    """Validate ``body`` for ``endpoint`` (a 400 naming the parameter) and read what later stages need."""
    if endpoint == "messages":
        return parse_messages(body, request_id, header_id, api_headers or {})
    if endpoint == "responses":
        return parse_responses(body, request_id, header_id)
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


def parse_messages(body: dict[str, Any], request_id: str, header_id: str, api_headers: dict[str, str]
                   ) -> ClientRequest:
    """An Anthropic Messages request: checked as Anthropic does, then read as the chat request it asks for."""
    anthropic_messages.check_request(body)
    model = check_model(body["model"])
    chat, untranslatable = _translated(anthropic_messages.to_chat, body)
    frontend = MessagesFrontend(body, api_headers.get("anthropic-beta"), untranslatable)
    # include_usage: the usage chunk of the target's stream becomes message_delta's usage
    return ClientRequest("messages", model, chat, request_id, header_id, body.get("stream") is True, True,
                         estimate_prompt_tokens(chat), requested_max_tokens(chat), 1, frontend)


def parse_responses(body: dict[str, Any], request_id: str, header_id: str) -> ClientRequest:
    """An OpenAI Responses request: checked, then read as the chat request it asks for."""
    openai_responses.check_request(body)
    model = check_model(body["model"])
    chat, untranslatable = _translated(openai_responses.to_chat, body)
    return ClientRequest("responses", model, chat, request_id, header_id, body.get("stream") is True, True,
                         estimate_prompt_tokens(chat), requested_max_tokens(chat), 1,
                         ResponsesFrontend(body, untranslatable))


def _translated(to_chat: Any, body: dict[str, Any]) -> tuple[dict[str, Any], APIError | None]:
    """The chat form of a body, or why it has none: then only a target that speaks the client's API
    itself can serve it (the 400 is raised at dispatch for any other), and the estimates see no prompt."""
    try:
        return to_chat(body), None
    except APIError as e:
        return {"model": body["model"], "messages": []}, e


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

