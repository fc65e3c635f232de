"""Incremental Server-Sent Events decoding for translating adapters (Anthropic, Gemini).

Bytes arrive in arbitrary pieces; ``feed`` returns the events completed so far as (event, data)
pairs. Handles LF and CRLF line endings, comment lines, and multi-line ``data:`` fields.
"""

from __future__ import annotations


class SSEDecoder:
    def __init__(self) -> None:
        self.pending = b""
        self.event = ""
        self.data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        data = self.pending + chunk if self.pending else chunk
        cut = data.rfind(b"\n") + 1
        self.pending = data[cut:]
        return self._lines(data[:cut]) if cut else []

    def flush(self) -> list[tuple[str, bytes]]:
        """At end of input: whatever is left, as if the stream had ended with a blank line."""
        rest, self.pending = self.pending, b""
        return self._lines(rest + b"\n\n") if rest or self.data else []

    def _lines(self, block: bytes) -> list[tuple[str, bytes]]:
        events: list[tuple[str, bytes]] = []
        for line in block.split(b"\n"):
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self.data:
                    events.append((self.event or "message", b"\n".join(self.data)))
                self.event, self.data = "", []
                continue
            if line.startswith(b":"):
                continue  # comment
            field, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if field == b"data":
                self.data.append(value)
            elif field == b"event":
                self.event = value.decode("utf-8", "replace")
        return events
