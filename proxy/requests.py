"""Reading an HTTP request's JSON body within the size limit: the edge before the parse stage."""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from starlette.requests import Request

from proxy.errors import GatewayError, bad_request

# orjson reads 1,024 levels but writes only 254, and a body's values are written again nested a few
# levels deeper (adapters' request shapes, stored key settings, log lines): deeper bodies are refused.
MAX_JSON_DEPTH = 240


def too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"Request body is larger than the gateway's limit of {limit} bytes (decoded, "
                        "when it came gzip or deflate encoded).", code="request_too_large")


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
    encoding = request.headers.get("content-encoding")
    if encoding:
        raw = decoded(raw, encoding, limit)
    if not raw:
        raise bad_request("Request body is empty; expected a JSON object.", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise bad_request(f"Request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("Request body must be a JSON object.", code="invalid_json")
    # A body can only be nested as deep as it has brackets: counting them (in C) spares the walk.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH:
        deep = too_deep(body)
        if deep is not None:
            raise bad_request(f"Request body is nested deeper than {MAX_JSON_DEPTH} levels (in '{deep}').",
                              param=deep, code="invalid_json")
    return body


def decoded(raw: bytes, encoding: str, limit: int) -> bytes:
    """A body sent with ``Content-Encoding`` gzip or deflate (or a list of them, applied in order),
    decoded to at most ``limit`` bytes: a body that inflates past it is a 413 however small it came."""
    for coding in reversed([c.strip().lower() for c in encoding.split(",") if c.strip()]):
        if coding == "identity":
            continue
        if coding in ("gzip", "x-gzip"):
            raw = _inflate(raw, 16 + zlib.MAX_WBITS, coding, limit)
        elif coding == "deflate":
            try:
                raw = _inflate(raw, zlib.MAX_WBITS, coding, limit)  # the zlib stream HTTP means by deflate
            except GatewayError as e:
                if e.status != 400:
                    raise
                raw = _inflate(raw, -zlib.MAX_WBITS, coding, limit)  # raw deflate, as some clients send it
        else:
            raise GatewayError(415, f"Content-Encoding {coding!r} is not supported: send the body as is, or "
                               "gzip or deflate encoded.", code="unsupported_content_encoding")
    return raw


def _inflate(raw: bytes, wbits: int, coding: str, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(raw, limit + 1)  # never more than one byte past the limit is made
    except zlib.error:
        raise bad_request(f"Request body is not valid {coding} data (Content-Encoding: {coding}).",
                          code="invalid_body_encoding") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise too_large(limit)
    if not inflater.eof:
        raise bad_request(f"Request body ends inside its {coding} data (Content-Encoding: {coding}).",
                          code="invalid_body_encoding")
    return out


def too_deep(body: dict[str, Any], limit: int = MAX_JSON_DEPTH) -> str | None:
    """The top-level key under which ``body`` nests JSON containers more than ``limit`` deep (the body
    itself is level 1), else None."""
    for key, value in body.items():
        stack: list[tuple[Any, int]] = [(value, 2)]
        while stack:
            node, depth = stack.pop()
            if isinstance(node, dict):
                node = node.values()
            elif not isinstance(node, list):
                continue
            if depth > limit:
                return key
            stack.extend((child, depth + 1) for child in node if isinstance(child, dict | list))
    return None
