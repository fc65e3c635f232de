"""Server-Sent Events framing: the project's one parser of it, for every caller that reads SSE.

The rules, from the HTML standard's event-stream format, as the providers this gateway speaks use it:
a line ends in LF or CRLF; a blank line ends an event; ``data:`` lines join with LF; ``event:`` names
the event ("message" when none does); lines starting with ":" are comments; one space after the colon
is not part of the value; an event without data is not dispatched. A lone CR as a line end is not
recognised: no provider sends one, and recognising it would cost the pass-through path a third scan.

Every function takes bytes that begin at the start of a line (the start of a stream, or just after an
event's blank line), which is what lets the boundary functions work with plain substring searches.
"""

from __future__ import annotations

from collections.abc import Iterator

# A blank line is an empty line right after a line end: LF LF, or LF CR LF (the CRLF form of both).
_BLANK = b"\n\n"
_BLANK_CRLF = b"\n\r\n"


def first_event_end(data: bytes) -> int:
    """Where the first event in ``data`` ends, just past its blank line; ``len(data)`` if none ends in it."""
    if data[:1] == b"\n":
        return 1
    if data[:2] == b"\r\n":
        return 2
    lf, crlf = data.find(_BLANK), data.find(_BLANK_CRLF)
    ends = [at + n for at, n in ((lf, 2), (crlf, 3)) if at >= 0]
    return min(ends) if ends else len(data)


def last_event_end(data: bytes) -> int:
    """Where the last event completed in ``data`` ends: ``data[:i]`` is whole events only (0 if none)."""
    if data.endswith(_BLANK) or data.endswith(_BLANK_CRLF):  # the usual read: whole events, decided in O(1)
        return len(data)
    lf, crlf = data.rfind(_BLANK), data.rfind(_BLANK_CRLF)
    end = max(lf + 2 if lf >= 0 else 0, crlf + 3 if crlf >= 0 else 0)
    if end:
        return end
    if data[:1] == b"\n":
        return 1
    return 2 if data[:2] == b"\r\n" else 0


def closed(rest: bytes) -> bytes:
    """An unfinished last event, with the line end and blank line the stream did not send: used at EOF."""
    return rest + (b"\n" if rest.endswith(b"\n") else b"\n\n")


def parse_events(block: bytes) -> list[tuple[str, bytes]]:
    """The (event name, data) of each event in ``block``, which ends with a blank line."""
    events: list[tuple[str, bytes]] = []
    name, data = "", []
    for line in block.split(b"\n"):
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            if data:
                events.append((name or "message", b"\n".join(data)))
            name, data = "", []
            continue
        if line.startswith(b":"):
            continue  # comment
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value.decode("utf-8", "replace")
    return events


def iter_data(body: bytes) -> Iterator[bytes]:
    """The data of every event in a whole SSE body, in order; a last event cut off by the end counts."""
    if body:
        for _, data in parse_events(closed(body)):
            yield data


class SSEDecoder:
    """Incremental decoding: bytes arrive in arbitrary pieces, ``feed`` returns the events they completed."""

    def __init__(self) -> None:
        self.pending = b""  # the start of an event whose blank line has not arrived

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        data = self.pending + chunk if self.pending else chunk
        cut = last_event_end(data)
        self.pending = data[cut:]
        return parse_events(data[:cut]) if cut else []

    def flush(self) -> list[tuple[str, bytes]]:
        """At end of input: whatever is left, as if the stream had ended with a blank line."""
        rest, self.pending = self.pending, b""
        return parse_events(closed(rest)) if rest else []
