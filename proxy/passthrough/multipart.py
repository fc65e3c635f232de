"""A client's multipart upload, read just far enough to find its ``model`` field, then streamed on.

The parts before ``model`` (and the ``model`` part itself) are held, at most ``[server] max_body_mb``
of them; the ``model`` value is rewritten to the target's upstream model in that prefix, and the rest
of the body goes upstream as the client sends it, never held whole. The OpenAI Python SDK sends its
form fields before the file, so the prefix is a few hundred bytes; a client that sends the file first
(the Node SDK, when ``file`` is the first member it is given) has it held up to the limit, and past it
gets a 400 asking for ``model`` first.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from proxy.errors import GatewayError, bad_request

Receive = Callable[[], Awaitable[dict[str, Any]]]

_BOUNDARY = re.compile(r'boundary=(?:"([^"]{1,200})"|([^\s;"]{1,200}))', re.IGNORECASE)
_NAME = re.compile(rb'\bname="([^"]*)"', re.IGNORECASE)
_FILENAME = re.compile(rb'\bfilename\*?=', re.IGNORECASE)
MAX_PART_HEADERS = 16 * 1024  # a part's headers past this are not a form field's
MAX_FIELD = 4096  # text fields kept for usage (n, response_format): longer ones are not read


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a ``multipart/form-data`` body; a 400 for any other content type."""
    if not content_type or not content_type.lower().startswith("multipart/form-data"):
        raise bad_request("This endpoint takes a multipart/form-data body.", code="invalid_content_type")
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise bad_request("The multipart/form-data content type has no boundary.", code="invalid_content_type")
    return (match.group(1) or match.group(2)).encode("latin-1")


def client_gone_uploading() -> GatewayError:
    return GatewayError(499, "The client closed the connection while sending the request body.", "client_error",
                        "client_disconnect")


class Scanner:
    """Finds the parts of a multipart body as it grows: their names, small text values, and where the
    ``model`` value is. ``feed`` takes the whole prefix so far and resumes where it stopped."""

    def __init__(self, boundary: bytes) -> None:
        self.delimiter = b"--" + boundary
        self.pos = 0
        self.part: tuple[str, bool, int] | None = None  # (name, is a file, where its value starts)
        self.fields: dict[str, str] = {}
        self.model_span: tuple[int, int] | None = None
        self.ended = False

    def feed(self, buf: bytearray) -> None:
        delimiter = self.delimiter
        while not self.ended:
            if self.part is None:
                at = buf.find(delimiter, self.pos)
                if at < 0:
                    return
                after = at + len(delimiter)
                if len(buf) < after + 2:
                    return
                if buf[after:after + 2] == b"--":
                    self.ended = True
                    return
                head_end = buf.find(b"\r\n\r\n", after)
                if head_end < 0:
                    if len(buf) - after > MAX_PART_HEADERS:
                        raise bad_request("A multipart part's headers are too long.", code="invalid_multipart")
                    return
                headers = bytes(buf[after:head_end])
                name = _NAME.search(headers)
                self.part = (name.group(1).decode("utf-8", "replace") if name else "",
                             _FILENAME.search(headers) is not None, head_end + 4)
                self.pos = head_end + 4
            name, is_file, start = self.part
            end = buf.find(b"\r\n" + delimiter, self.pos)
            if end < 0:  # the value goes on: look again from where a delimiter could still begin
                self.pos = max(start, len(buf) - len(delimiter) - 2)
                return
            if not is_file and end - start <= MAX_FIELD:
                self.fields[name] = bytes(buf[start:end]).decode("utf-8", "replace")
                if name == "model" and self.model_span is None:
                    self.model_span = (start, end)
            self.part = None
            self.pos = end + 2


class Upload:
    """The client's body: the prefix read so far, then the rest from ``receive`` as it comes. One-shot:
    once sent upstream it is gone, so a request with an upload has one attempt."""

    def __init__(self, receive: Receive, prefix: bytearray, more: bool, length: int | None,
                 fields: dict[str, str], model_span: tuple[int, int] | None) -> None:
        self.receive = receive
        self.prefix = prefix
        self.more = more  # the client has more to send
        self.length = length  # the client's Content-Length, if it sent one
        self.fields = fields
        self.model_span = model_span
        self.consumed = False

    def with_model(self, model: str | None) -> tuple[AsyncIterator[bytes], int | None]:
        """The body to send, with the ``model`` value replaced, and its length when known."""
        prefix, length = self.prefix, self.length
        if model is not None and self.model_span is not None:
            start, end = self.model_span
            value = model.encode()
            prefix = prefix[:start] + value + prefix[end:]
            if length is not None:
                length += len(value) - (end - start)
        return self._pieces(bytes(prefix)), length

    async def _pieces(self, prefix: bytes) -> AsyncIterator[bytes]:
        self.consumed = True
        if prefix:
            yield prefix
        while self.more:
            message = await self.receive()
            if message["type"] != "http.request":
                raise client_gone_uploading()
            self.more = message.get("more_body", False)
            yield message.get("body", b"")


async def read_upload(receive: Receive, content_type: str | None, content_length: str | None, limit: int,
                      want_model: bool) -> Upload:
    """Read the body until its ``model`` field is in (``want_model``), else not at all: a 400 naming
    ``model`` when it is missing, or not within the first ``limit`` bytes."""
    boundary = boundary_of(content_type)
    length = int(content_length) if content_length and content_length.isdigit() else None
    buf = bytearray()
    more = True
    scanner = Scanner(boundary)
    while want_model and more and scanner.model_span is None and not scanner.ended:
        message = await receive()
        if message["type"] != "http.request":
            raise client_gone_uploading()
        more = message.get("more_body", False)
        buf += message.get("body", b"")
        scanner.feed(buf)
        if scanner.model_span is None and len(buf) > limit:
            raise bad_request(f"No 'model' field in the first {limit} bytes of the multipart body: send the "
                              "'model' field before the file.", param="model", code="missing_required_parameter")
    if want_model and scanner.model_span is None:
        raise bad_request("Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
    return Upload(receive, buf, more, length, scanner.fields, scanner.model_span)
