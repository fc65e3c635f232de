"""The one SSE parser: boundaries, fields, and incremental decoding however the bytes are split."""

from __future__ import annotations

import random

import pytest

from adapters.sse_decoder import (
    SSEDecoder,
    closed,
    first_event_end,
    iter_data,
    last_event_end,
    parse_events,
)

# Anthropic's framing (named events) and OpenAI's (data only), as the wire-format reference shows them.
ANTHROPIC = (b'event: message_start\ndata: {"type":"message_start"}\n\n'
             b'event: ping\ndata: {"type":"ping"}\n\n'
             b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
ANTHROPIC_EVENTS = [("message_start", b'{"type":"message_start"}'), ("ping", b'{"type":"ping"}'),
                    ("message_stop", b'{"type":"message_stop"}')]


def decode_in_pieces(raw: bytes, cuts: list[int]) -> list[tuple[str, bytes]]:
    decoder = SSEDecoder()
    events: list[tuple[str, bytes]] = []
    for start, stop in zip([0, *cuts], [*cuts, len(raw)], strict=True):
        events += decoder.feed(raw[start:stop])
    return events + decoder.flush()


def test_named_events_and_default_name():
    assert parse_events(ANTHROPIC) == ANTHROPIC_EVENTS
    assert parse_events(b"data: [DONE]\n\n") == [("message", b"[DONE]")]


def test_field_rules():
    block = (b": a comment\n"
             b"data:no space\n\n"
             b"data:  two spaces\n\n"  # only the first space is framing
             b"data: line one\ndata: line two\n\n"  # data lines join with LF
             b"event: lonely\n\n"  # no data: not dispatched, and its name does not leak into the next
             b"id: 7\nretry: 10\ndata: x\n\n")
    assert parse_events(block) == [("message", b"no space"), ("message", b" two spaces"),
                                   ("message", b"line one\nline two"), ("message", b"x")]


def test_crlf_is_the_same_stream():
    assert parse_events(ANTHROPIC.replace(b"\n", b"\r\n")) == ANTHROPIC_EVENTS


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_every_split_gives_the_same_events(newline):
    raw = ANTHROPIC.replace(b"\n", newline)
    for cut in range(len(raw) + 1):
        assert decode_in_pieces(raw, [cut]) == ANTHROPIC_EVENTS, cut
    rng = random.Random(5)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(raw)), rng.randint(1, 12)))
        assert decode_in_pieces(raw, cuts) == ANTHROPIC_EVENTS, cuts


def test_an_event_is_dispatched_at_its_blank_line_not_at_a_read_boundary():
    decoder = SSEDecoder()
    assert decoder.feed(b"event: content_block_delta\n") == []
    assert decoder.feed(b"data: {\"a\":\n") == []
    assert decoder.feed(b"data: 1}\n") == []
    assert decoder.feed(b"\n") == [("content_block_delta", b'{"a":\n1}')]


def test_flush_ends_a_cut_off_event():
    for tail in (b"data: x", b"data: x\n", b"data: x\r", b"data: x\r\n"):
        decoder = SSEDecoder()
        assert decoder.feed(b"data: a\n\n" + tail) == [("message", b"a")]
        assert decoder.flush() == [("message", b"x")], tail
        assert decoder.flush() == []


def test_first_event_end():
    assert first_event_end(b"data: a\n\ndata: b\n\n") == len(b"data: a\n\n")
    assert first_event_end(b"data: a\r\n\r\ndata: b\r\n\r\n") == len(b"data: a\r\n\r\n")
    assert first_event_end(b"data: a\r\n\ndata: b\n\n") == len(b"data: a\r\n\n")  # mixed line ends
    assert first_event_end(b"data: a\ndata: b\n") == len(b"data: a\ndata: b\n")  # none ends: all of it
    assert first_event_end(b"\ndata: b\n\n") == 1  # a blank line first ends an event begun earlier
    assert first_event_end(b"\r\ndata: b\n\n") == 2
    assert first_event_end(b"") == 0


def test_last_event_end():
    assert last_event_end(b"data: a\n\ndata: b\n\ndata: c") == len(b"data: a\n\ndata: b\n\n")
    assert last_event_end(b"data: a\r\n\r\ndata: b\r\n") == len(b"data: a\r\n\r\n")
    assert last_event_end(b"data: a\n") == 0
    assert last_event_end(b"\n") == 1
    assert last_event_end(b"\r\ndata: c") == 2
    assert last_event_end(b"") == 0


def test_boundaries_agree_with_the_decoder():
    """Cutting at first_event_end one event at a time, as the dispatcher does, gives the decoder's events."""
    raw = (ANTHROPIC + b"data: a\r\n\r\n: c\n\ndata: b\n\n").replace(b"message_stop", b"stop")
    pieces = []
    rest = raw
    while rest:
        cut = first_event_end(rest)
        pieces.append(rest[:cut])
        rest = rest[cut:]
    assert b"".join(pieces) == raw
    assert [e for piece in pieces for e in parse_events(piece)] == parse_events(raw)
    assert all(len(parse_events(piece)) <= 1 for piece in pieces)


def test_closed():
    assert closed(b"data: x") == b"data: x\n\n"
    assert closed(b"data: x\n") == b"data: x\n\n"


def test_iter_data_of_a_whole_body():
    body = (b'data: {"choices":[]}\n\n: keep-alive\n\n'
            b'data: {"a":1}\r\n\r\n'
            b"data: [DONE]")  # cut off before its blank line
    assert list(iter_data(body)) == [b'{"choices":[]}', b'{"a":1}', b"[DONE]"]
    assert list(iter_data(b"")) == []
