"""Reading and checking client requests: body size, JSON, required fields, request ids."""

from __future__ import annotations

import os
import re
import time
from typing import Any

import orjson
from starlette.requests import Request

from proxy.errors import GatewayError, bad_request

_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def request_ids(request: Request) -> tuple[str, str]:
    """(the id for the x-request-id header, the usage row's unique id).

    The header echoes the client's x-request-id when it is a sane token. The row id must be unique
    (it is the ledger's primary key, and a replayed row must not be counted twice), so a client id
    gets a random suffix there: a client reusing its id cannot drop or dodge usage rows.

    The gateway's own ids lead with the time in milliseconds (as UUIDv7 does), then 64 random bits:
    they sort in the order requests came, so each batch of rows lands at the right edge of the
    ledger's primary-key index. A random id scatters a batch over the whole index: in SQLite every
    row then rewrote its own page, and the read and write calls per request grew with the table
    (from 6 to 11 per 5-chunk stream over 18 s of load, with `make bench`'s bare gateway).
    """
    given = request.headers.get("x-request-id")
    if given and _CLIENT_REQUEST_ID.fullmatch(given):
        return given, f"{given}.{os.urandom(6).hex()}"
    rid = f"req_{time.time_ns() // 1_000_000:012x}{os.urandom(8).hex()}"
    return rid, rid


def too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"Request body is larger than the gateway's limit of {limit} bytes.",
                        code="request_too_large")


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise too_large(limit)
    # Straight from ``receive``: Starlette's ``request.stream()`` is an async generator (registered
    # with the loop, stepped once per message) on every request's path, for the same loop as this.
    receive = request.receive
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect: the client hung up mid-upload;
            raise GatewayError(499, "The client closed the connection while sending the request body.",
                               "client_error", "client_disconnect")  # its row says 499, not a gateway bug
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    raw = b"".join(chunks)
    if not raw:
        raise bad_request("Request body is empty; expected a JSON object.", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise bad_request(f"Request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("Request body must be a JSON object.", code="invalid_json")
    return body


def require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("you must provide a model parameter", param="model", code="missing_required_parameter")
    return model


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


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """About four characters a token over all text in the request: used only when no usage arrives."""
    chars = 0
    for m in body.get("messages") or ():
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(p.get("text") or "") for p in content if isinstance(p, dict))
    inputs = body.get("input")
    if isinstance(inputs, str):
        chars += len(inputs)
    elif isinstance(inputs, list):
        chars += sum(len(i) if isinstance(i, str) else 4 for i in inputs)
    return (chars + 3) // 4


def requested_max_tokens(body: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and value > 0:
            return value
    return None
