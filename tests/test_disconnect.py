"""A client that goes away mid-stream makes the gateway close the upstream request at once."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.conftest import GATEWAY_KEY, ledger_rows


def test_client_disconnect_closes_upstream(gateway, fake_openai):
    outcomes = fake_openai.app.state.fake.stream_outcomes
    before = len(outcomes)
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", headers={"authorization": f"Bearer {GATEWAY_KEY}"},
                      json={"model": "a-slow-stream", "messages": [{"role": "user", "content": "go"}],
                            "stream": True}, timeout=10) as r:
        assert r.status_code == 200
        seen = 0
        for line in r.iter_lines():
            if line.startswith("data:"):
                seen += 1
            if seen == 3:
                break
    started = time.monotonic()
    # The full stream would take 20 s; the upstream must see the hang-up within a second or two.
    while len(outcomes) == before and time.monotonic() - started < 5:
        time.sleep(0.05)
    assert outcomes[before:] == ["client_gone"]
    assert time.monotonic() - started < 3


def test_client_leaving_a_whole_body_request_stops_the_upstream_call_and_records_499(make_gateway, fake_openai,
                                                                                      tmp_path):
    import uuid

    from tests.conftest import base_config

    db = tmp_path / "gw.db"
    alias = '[[models]]\nname = "hang"\ntargets = [{ provider = "fake", model = "hang-3000" }]\n'
    gw = make_gateway(base_config(fake_openai.url, db, alias))
    outcomes = fake_openai.app.state.fake.call_outcomes
    before = len(outcomes)
    rid = f"leaver-{uuid.uuid4().hex[:8]}"
    with pytest.raises(httpx.ReadTimeout):  # the client gives up after 0.3 s and closes its connection
        httpx.post(gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {GATEWAY_KEY}",
                                                             "x-request-id": rid},
                   json={"model": "hang", "messages": [{"role": "user", "content": "go"}]}, timeout=0.3)
    started = time.monotonic()
    while len(outcomes) == before and time.monotonic() - started < 5:
        time.sleep(0.05)
    assert outcomes[before:] == ["client_gone"]  # the upstream saw the hang-up, long before its 3 s answer
    assert time.monotonic() - started < 0.8  # not by the provider's timeout_s (1.5 s, so 1.2 s after the client left)
    rows = ledger_rows(db, "SELECT status, error_type, provider, prompt_tokens > 0, usage_estimated "
                           "FROM usage_log WHERE request_id LIKE ?", (rid + "%",))
    assert rows == [(499, "client_disconnect", "fake", 1, 1)]  # the prompt had reached the upstream
    ok = httpx.post(gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {GATEWAY_KEY}"},
                    json={"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}, timeout=5)
    assert ok.status_code == 200  # the pooled upstream connections are still good


def test_client_leaving_mid_upload_leaves_a_499_row_not_an_internal_error(make_gateway, fake_openai, tmp_path, caplog):
    import socket
    import uuid

    from tests.conftest import base_config

    db = tmp_path / "gw.db"
    gw = make_gateway(base_config(fake_openai.url, db))
    rid = f"upload-{uuid.uuid4().hex[:8]}"
    with socket.create_connection(("127.0.0.1", gw.server.port), timeout=5) as sock:
        sock.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {GATEWAY_KEY}\r\n"
                      f"x-request-id: {rid}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                      '{"model": "gpt-test", "mess').encode())
        time.sleep(0.2)  # the gateway is now waiting for the rest of the body
    rows = ledger_rows(db, "SELECT status, error_type FROM usage_log WHERE request_id LIKE ?", (rid + "%",))
    assert rows == [(499, "client_disconnect")]
    assert "unhandled error" not in caplog.text


class SlowRedis:
    """Just enough of Redis for the limits script, answering it only after ``delay_s``: NOSCRIPT to
    EVALSHA of a script not loaded yet, its SHA1 to SCRIPT LOAD, then a granted verdict (a bulk string
    of remaining/reset pairs) to EVALSHA or EVAL."""

    def __init__(self, delay_s: float, pairs: int) -> None:
        import threading

        self.delay_s = delay_s
        self.reply = " ".join(["999", "0.06"] * pairs).encode()
        self.port = 0
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import asyncio
        import hashlib

        loaded: set[bytes] = set()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    count = int((await reader.readline())[1:])
                    args = []
                    for _ in range(count):
                        size = int((await reader.readline())[1:])
                        args.append((await reader.readexactly(size + 2))[:-2])
                    command = b" ".join(args[:2]).upper()
                    if command.startswith(b"EVALSHA") and args[1] not in loaded:
                        writer.write(b"-NOSCRIPT No matching script.\r\n")
                    elif command == b"SCRIPT LOAD":
                        sha = hashlib.sha1(args[2]).hexdigest().encode()
                        loaded.add(sha)
                        writer.write(b"$%d\r\n%s\r\n" % (len(sha), sha))
                    elif command.startswith((b"EVALSHA", b"EVAL")):
                        await asyncio.sleep(self.delay_s)
                        writer.write(b"$%d\r\n%s\r\n" % (len(self.reply), self.reply))
                    elif command.startswith(b"INFO"):
                        info = b"# Cluster\r\ncluster_enabled:0\r\n"
                        writer.write(b"$%d\r\n%s\r\n" % (len(info), info))
                    else:
                        writer.write(b"+PONG\r\n")
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                writer.close()

        async def main() -> None:
            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            self.ready.set()
            await asyncio.Event().wait()

        asyncio.run(main())

    def start(self) -> SlowRedis:
        self.thread.start()
        self.ready.wait(5)
        return self


def test_client_leaving_during_the_limits_check_never_reaches_the_upstream(make_gateway, fake_openai):
    import socket

    from tests.test_limits import limits_config

    redis = SlowRedis(delay_s=0.4, pairs=1).start()
    text, secret, _ = limits_config(fake_openai.url, f"redis://127.0.0.1:{redis.port}/0", key_extra="rpm = 1000")
    name = secret.removeprefix("sk-")
    gw = make_gateway(text)
    counts = fake_openai.app.state.fake.counts
    before = counts.get("delay-400", 0)
    body = json.dumps({"model": f"slow-{name}", "messages": [{"role": "user", "content": "hi"}]}).encode()
    with socket.create_connection(("127.0.0.1", gw.server.port), timeout=5) as sock:
        sock.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body)
        time.sleep(0.1)  # the limits check is under way (it takes 0.4 s)
    time.sleep(0.8)
    assert counts.get("delay-400", 0) == before  # the upstream was never called
    answered = httpx.post(gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {secret}"},
                          json={"model": f"slow-{name}", "messages": [{"role": "user", "content": "hi"}]},
                          timeout=5)
    assert answered.status_code == 200 and counts.get("delay-400", 0) == before + 1  # a client that stays


def test_client_leaving_while_the_stream_waits_for_its_first_token_stops_the_upstream(make_gateway, fake_openai,
                                                                                       tmp_path):
    """The stream's head and keep-alive comments are out, the upstream has not sent a token: the
    hang-up must reach the upstream now (the server protocol's hook), not when a token would come."""
    import uuid

    from tests.conftest import base_config

    db = tmp_path / "gw.db"
    alias = ('[[models]]\nname = "stalled"\nkeepalive_s = 0.1\n'
             'targets = [{ provider = "fake", model = "stall-3000", first_byte_timeout_s = 10 }]\n')
    gw = make_gateway(base_config(fake_openai.url, db, alias))
    outcomes = fake_openai.app.state.fake.stream_outcomes
    before = len(outcomes)
    rid = f"stalled-{uuid.uuid4().hex[:8]}"
    with httpx.stream("POST", gw.url + "/v1/chat/completions",
                      headers={"authorization": f"Bearer {GATEWAY_KEY}", "x-request-id": rid},
                      json={"model": "stalled", "messages": [{"role": "user", "content": "go"}], "stream": True},
                      timeout=10) as r:
        assert r.status_code == 200
        assert next(line for line in r.iter_lines() if line) == ": keep-alive"
    started = time.monotonic()
    while len(outcomes) == before and time.monotonic() - started < 5:
        time.sleep(0.02)
    assert outcomes[before:] == ["client_gone"]
    assert time.monotonic() - started < 1.0  # the stall would have lasted 3 s
    rows = ledger_rows(db, "SELECT status, error_type FROM usage_log WHERE request_id LIKE ?", (rid + ".%",))
    assert rows == [(499, "client_disconnect")]


def test_a_request_cut_off_by_shutdown_still_leaves_its_row(fake_openai, tmp_path):
    """The server's shutdown grace period (2 s here) runs out while a request waits on its upstream:
    the request is cancelled, and the upstream call it had made may be billed, so it keeps its row."""
    import sqlite3
    import threading
    import uuid

    from tests.conftest import base_config, start_gateway

    db = tmp_path / "gw.db"
    alias = '[[models]]\nname = "long"\ntargets = [{ provider = "fake", model = "hang-6000", timeout_s = 10 }]\n'
    gw = start_gateway(base_config(fake_openai.url, db, alias))
    rid = f"cut-{uuid.uuid4().hex[:8]}"
    answers: list = []

    def call() -> None:
        try:
            answers.append(httpx.post(gw.url + "/v1/chat/completions",
                                      headers={"authorization": f"Bearer {GATEWAY_KEY}", "x-request-id": rid},
                                      json={"model": "long", "messages": [{"role": "user", "content": "go"}]},
                                      timeout=10))
        except httpx.HTTPError as e:
            answers.append(e)

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.3)
    gw.server.stop()  # waits for the grace period, the cancel and the ledger's last flush
    caller.join(timeout=10)
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT status, error_type, provider, prompt_tokens > 0 FROM usage_log "
                            "WHERE request_id LIKE ?", (rid + ".%",)).fetchall()
    assert rows == [(503, "gateway_shutdown", "fake", 1)]
