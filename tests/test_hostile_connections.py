"""Slow, idle and too many clients against a real `gateway serve` with small [server] limits: each is
answered (408, 503) or closed within a deadline, and clients within the limits are still served."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import GATEWAY_KEY, base_config
from tests.hostile import Closed, RawConnection, assert_openai_error, close_all, request
from tests.procs import GatewayProcess

DEADLINE_S = 8  # generous beside the 0.5-1 s limits: the machine may be busy


def _serve(tmp: Path, fake_url: str, limits: str) -> GatewayProcess:
    text = base_config(fake_url, tmp / "gw.db").replace("[server]\n", "[server]\n" + limits, 1)
    path = tmp / "gateway.toml"
    path.write_text(text)
    return GatewayProcess(path, tmp)


@pytest.fixture(scope="module")
def strict(fake_openai, tmp_path_factory) -> Iterator[GatewayProcess]:
    """Short timeouts: idle 0.5 s, headers 1 s, body 1 s."""
    gw = _serve(tmp_path_factory.mktemp("strict"), fake_openai.url,
                "idle_timeout_s = 0.5\nheader_timeout_s = 1\nbody_timeout_s = 1\n")
    yield gw
    gw.stop()


def _assert_408s(conns: list[RawConnection]) -> None:
    """Each connection that got an answer before its close got a 408 saying so; a trickle racing the
    close may have reset a few before they read it, but most must have it."""
    answered = [c for c in conns if c.buffer]
    assert len(answered) >= (len(conns) + 1) // 2
    for c in answered:
        response = c.read_response()
        assert response.status == 408 and response.closes
        assert assert_openai_error(response)["code"] == "request_timeout"


def test_slow_loris_connections_get_a_408_and_are_closed(strict):
    conns = [RawConnection(strict.port) for _ in range(20)]
    try:
        for c in conns:
            c.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        # a header line now and then, never the blank line that ends the headers
        still_open = close_all(conns, DEADLINE_S, trickle=b"x-trickle: 1\r\n")
        assert not still_open, f"{len(still_open)} of {len(conns)} trickling connections still open"
        _assert_408s(conns)
    finally:
        for c in conns:
            c.close()


def test_a_connection_that_sends_nothing_is_closed(strict):
    conns = [RawConnection(strict.port) for _ in range(20)]
    try:
        assert not close_all(conns, DEADLINE_S), "an idle connection was never closed"
        assert all(c.buffer == b"" for c in conns)  # nothing was asked: nothing is answered
    finally:
        for c in conns:
            c.close()


def test_a_trickled_body_gets_a_408(strict):
    conns = [RawConnection(strict.port) for _ in range(5)]
    try:
        for c in conns:
            c.send(f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {GATEWAY_KEY}\r\n"
                   "content-type: application/json\r\ncontent-length: 200\r\n\r\n{".encode())
        assert not close_all(conns, DEADLINE_S, trickle=b" "), "a connection trickling its body was never closed"
        _assert_408s(conns)
    finally:
        for c in conns:
            c.close()


def test_a_kept_alive_connection_serves_requests_within_the_limits(strict):
    c = RawConnection(strict.port)
    try:
        for _ in range(3):
            c.send(request("GET", "/healthz"))
            assert c.read_response().status == 200
            time.sleep(0.2)  # under idle_timeout_s between requests
    finally:
        c.close()


def test_connections_past_max_connections_get_a_503_and_are_closed(fake_openai, tmp_path):
    gw = _serve(tmp_path, fake_openai.url, "idle_timeout_s = 30\nmax_connections = 20\n")
    held: list[RawConnection] = []
    try:
        time.sleep(0.3)  # the start-up readiness probe's connection is gone
        for _ in range(20):  # each one served, so each is counted before the next
            c = RawConnection(gw.port)
            held.append(c)
            c.send(request("GET", "/healthz"))
            assert c.read_response().status == 200
        extra = [RawConnection(gw.port) for _ in range(5)]
        try:
            for c in extra:
                assert c.closed_within(DEADLINE_S), "a connection past max_connections was kept open"
                response = c.read_response()
                assert response.status == 503 and response.closes
                assert assert_openai_error(response)["code"] == "too_many_connections"
        finally:
            for c in extra:
                c.close()
        held[0].send(request("GET", "/healthz"))  # the ones within the limit are still served
        assert held[0].read_response().status == 200
        held.pop().close()
        deadline = time.monotonic() + DEADLINE_S
        while True:  # a freed slot is taken by the next client
            c = RawConnection(gw.port)
            try:
                c.send(request("GET", "/healthz"))
                if c.read_response().status == 200:
                    break
            except (Closed, OSError):
                pass
            finally:
                c.close()
            assert time.monotonic() < deadline, "no connection was served after one was freed"
            time.sleep(0.1)
    finally:
        for c in held:
            c.close()
        gw.stop()
    assert "Traceback" not in gw.output()


def test_many_idle_sockets_do_not_exhaust_the_process(fake_openai, tmp_path):
    """Far more idle sockets than max_connections: the excess are refused at once, the rest time out, and
    a request afterwards is served (the process never ran out of file descriptors)."""
    gw = _serve(tmp_path, fake_openai.url, "idle_timeout_s = 0.5\nmax_connections = 50\n")
    socks: list[socket.socket] = []
    try:
        for _ in range(400):
            socks.append(socket.create_connection(("127.0.0.1", gw.port), timeout=5))
        deadline = time.monotonic() + DEADLINE_S
        for s in socks:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ConnectionResetError):
                while s.recv(4096):
                    pass  # a 503 for the excess, nothing for the rest, then the close
        c = RawConnection(gw.port)
        try:
            c.send(request("GET", "/healthz"))
            assert c.read_response().status == 200
        finally:
            c.close()
    finally:
        for s in socks:
            s.close()
        gw.stop()


def test_the_server_limits_are_read_from_the_config_and_checked():
    import tomllib

    from proxy.config import parse_config
    from proxy.connection_limits import ConnectionLimits
    from proxy.settings import ConfigError

    def server(lines: str):
        raw = tomllib.loads(f'[server]\nrequire_auth = false\n{lines}\n[storage]\nspill_dir = "/nonexistent"\n')
        return parse_config(raw, "t.toml", {}).server

    assert ConnectionLimits.of(server("")) == ConnectionLimits(5.0, 10.0, 30.0, 10_000)
    assert ConnectionLimits.of(server("idle_timeout_s = 1\nheader_timeout_s = 2\nbody_timeout_s = 3.5\n"
                                      "max_connections = 7")) == ConnectionLimits(1.0, 2.0, 3.5, 7)
    for bad in ("idle_timeout_s = 0", "header_timeout_s = -1", "body_timeout_s = \"x\"", "max_connections = 0",
                "max_connections = 1.5"):
        with pytest.raises(ConfigError):
            server(bad)
