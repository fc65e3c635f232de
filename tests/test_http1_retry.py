"""Retries told apart by where the connection failed: a request that never reached the upstream is
always safe to send again; one that was sent (and may have been billed) is sent again only where
``retry_on`` says so. Each case against an upstream that closes the connection at that point."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import openai
import pytest

from proxy.http1 import Pool
from proxy.http1_connect import NotSent
from tests.fakes.raw_http import CHAT_BODY, RawUpstream, answer, free_port
from tests.test_http1_bodies import config


@pytest.fixture
def raw() -> Iterator[list[RawUpstream]]:
    started: list[RawUpstream] = []
    yield started
    for server in started:
        server.stop()


def ask(gw) -> str:
    return gw.client().chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}]
                                               ).choices[0].message.content


def failure(gw) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        ask(gw)
    return info.value


async def drop_after_request(conn, n, head, body, writer):
    return False  # read the whole request, then close without a byte of answer


async def drop_mid_answer(conn, n, head, body, writer):
    writer.write(answer(CHAT_BODY)[:-20])  # the head and most of the body, then the connection drops
    await writer.drain()
    return False


@pytest.mark.parametrize("handler", [drop_after_request, drop_mid_answer])
def test_a_request_that_was_sent_is_retried_only_where_retry_on_says(make_gateway, tmp_path, raw, handler):
    strict = RawUpstream(handler).start()
    raw.append(strict)
    gw = make_gateway(config(tmp_path, strict.url, target_extra=", retry_on = [429]"))
    error = failure(gw)
    assert error.status_code == 502 and error.code == "upstream_connection_error"
    assert strict.requests == 1  # may have been billed: not sent again

    lenient = RawUpstream(handler).start()
    raw.append(lenient)
    gw = make_gateway(config(tmp_path / "b", lenient.url))  # the default retry_on has "connection"
    assert failure(gw).status_code == 502
    assert lenient.requests == 3  # max_retries = 2


def test_a_request_that_never_reached_the_upstream_is_retried_whatever_retry_on_says(make_gateway, tmp_path, raw):
    """The TLS handshake fails (the server hangs up at once): no byte of the request left the gateway."""
    server = RawUpstream(drop_after_request, on_accept=lambda n: False).start()
    raw.append(server)
    gw = make_gateway(config(tmp_path, server.url.replace("http://", "https://"), target_extra=", retry_on = [429]"))
    error = failure(gw)
    assert error.status_code == 502 and error.code == "upstream_connection_error"
    assert (server.accepted, server.requests) == (3, 0)


def test_no_retries_means_none_even_for_a_request_never_sent(make_gateway, tmp_path, raw):
    server = RawUpstream(drop_after_request, on_accept=lambda n: False).start()
    raw.append(server)
    text = config(tmp_path, server.url.replace("http://", "https://")).replace("max_retries = 2", "max_retries = 0")
    assert failure(make_gateway(text)).status_code == 502
    assert server.accepted == 1


@pytest.mark.parametrize("when", ["before-reuse", "after-request"])
def test_a_pooled_connection_the_upstream_closed_is_replaced_transparently(make_gateway, tmp_path, raw, when):
    """Keep-alive: the upstream closes the first connection after one answer: with the answer (found
    closed in the pool) or on reading the second request (before any byte of its answer). Either way
    the request goes out again on a fresh connection, even with no retries allowed."""
    async def handler(conn, n, head, body, writer):
        if conn == 1 and n == 2:
            return False  # "after-request": read the request, answered nothing
        writer.write(answer(CHAT_BODY))
        return not (conn == 1 and when == "before-reuse")

    server = RawUpstream(handler).start()
    raw.append(server)
    text = config(tmp_path, server.url, target_extra=", retry_on = [429]").replace("max_retries = 2",
                                                                                    "max_retries = 0")
    gw = make_gateway(text)
    assert ask(gw) == "raw hello"
    if when == "before-reuse":  # let the close reach the pool first (what this case is about)
        deadline = time.monotonic() + 5
        while server.tasks and time.monotonic() < deadline:
            time.sleep(0.01)
    assert ask(gw) == "raw hello"
    assert server.accepted == 2
    assert server.requests == (3 if when == "after-request" else 2)


def test_refused_and_unresolvable_connects_are_not_sent():
    async def run() -> list[BaseException]:
        errors = []
        for url in (f"http://127.0.0.1:{free_port()}", "http://name.invalid"):
            pool = Pool(url)
            try:
                await pool.request("POST", "/v1/x", {}, b"{}", 5, 5)
            except NotSent as exc:
                errors.append(exc.__cause__)
        return errors

    refused, unresolvable = asyncio.run(run())
    assert isinstance(refused, ConnectionRefusedError)
    assert isinstance(unresolvable, OSError)
