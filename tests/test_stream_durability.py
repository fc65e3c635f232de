"""``[storage] durability = "strict"`` covers streams: the client sees a stream's last event and the
response's end only once its usage row is in the ledger's journal on disk.

With ``flush_interval_ms = 60000`` nothing but a strict wait journals a row during a test, so a row
found on disk right after the client read the end can only be there because the end waited for it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import tomllib
import uuid
from pathlib import Path

import anthropic
import httpx
import orjson
import pytest
from openai import OpenAI

from proxy.app import create_app
from proxy.config import parse_config
from proxy.pipeline.stream import split_last_event
from tests.conftest import GATEWAY_KEY, Running, base_config
from tests.pg import fetch_rows, ledger_config, wait_for
from tests.procs import GatewayProcess
from tests.servers import ServerThread

STRICT = 'durability = "strict"\nflush_interval_ms = 60000'
HI = [{"role": "user", "content": "hi"}]
CACHED = '[cache]\nbackend = "memory"\n'


def journaled(spill: Path, rid: str) -> bool:
    """Whether a row of request ``rid`` (the client's x-request-id) is in a journal file now."""
    needle = f'"request_id":"{rid}.'.encode()
    return any(needle in p.read_bytes() for p in spill.glob("usage-journal-*.jsonl"))


def journal_rows(spill: Path, rid: str) -> list[dict]:
    needle = f'"request_id":"{rid}.'.encode()
    return [orjson.loads(line) for p in spill.glob("usage-journal-*.jsonl") for line in p.read_bytes().splitlines()
            if needle in line]


@contextlib.contextmanager
def journal_held(gw: Running):
    """The gateway's strict waits held until the test lets them go: (a set when one is waiting, the gate)."""
    sink = gw.app.state.runtime.sink
    waiting, gate = threading.Event(), threading.Event()
    real = sink.durable

    async def held() -> None:
        waiting.set()
        await asyncio.to_thread(gate.wait, 20)  # in a thread: the test sets it from its own
        await real()

    sink.durable = held
    try:
        yield waiting, gate
    finally:
        gate.set()
        del sink.durable


def until(predicate, timeout: float = 10):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def stream_lines(url: str, rid: str):  # type: ignore[no-untyped-def]
    return httpx.stream("POST", url + "/v1/chat/completions", timeout=10,
                        headers={"authorization": f"Bearer {GATEWAY_KEY}", "x-request-id": rid},
                        json={"model": "gpt-test", "messages": HI, "stream": True,
                              "stream_options": {"include_usage": True}})


def sdk_stream(url: str, endpoint: str, rid: str) -> str:
    """Stream one answer through the endpoint's official SDK, to its end; the text it said."""
    headers = {"x-request-id": rid}
    if endpoint == "messages":
        claude = anthropic.Anthropic(base_url=url, api_key=GATEWAY_KEY, max_retries=0)
        with claude.messages.stream(model="gpt-test", max_tokens=50, messages=HI, extra_headers=headers) as s:
            text = "".join(s.text_stream)
            assert s.get_final_message().stop_reason == "end_turn"
        return text
    client = OpenAI(base_url=url + "/v1", api_key=GATEWAY_KEY, max_retries=0)
    if endpoint == "responses":
        events = list(client.responses.create(model="gpt-test", input="hi", stream=True, extra_headers=headers))
        assert events[-1].type == "response.completed"
        return events[-1].response.output_text
    chunks = list(client.chat.completions.create(model="gpt-test", messages=HI, stream=True,  # type: ignore[arg-type]
                                                 stream_options={"include_usage": True}, extra_headers=headers))
    assert chunks[-1].usage is not None
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


@pytest.fixture(params=["gateway", "h11", "httptools"])
def strict_gateway(request: pytest.FixtureRequest, fake_openai: Running, tmp_path: Path):
    """A strict-durability gateway in this process (under our protocol, whose direct writes end a stream
    outside ``send``, and under uvicorn's own), and its journal directory."""
    spill = tmp_path / "spill"
    storage = f'database_url = "sqlite:///{tmp_path / "gw.db"}"\nspill_dir = "{spill}"\n{STRICT}'
    config = parse_config(tomllib.loads(base_config(fake_openai.url, None, CACHED, storage=storage)), "test.toml",
                          dict(os.environ))
    kwargs = {} if request.param == "gateway" else {"http": request.param}
    app = create_app(config)
    server = ServerThread(app, **kwargs).start()
    yield Running(server, app), spill
    server.stop()


@pytest.mark.parametrize("endpoint", ["chat", "messages", "responses"])
def test_a_streams_row_is_on_disk_when_the_client_has_its_end(strict_gateway, endpoint: str) -> None:
    gw, spill = strict_gateway
    rid = f"sd-{endpoint}-{uuid.uuid4().hex[:8]}"
    assert sdk_stream(gw.url, endpoint, rid)
    assert journaled(spill, rid)  # no polling: it had to be there before the end reached the client


def test_a_cache_hits_replayed_stream_waits_for_its_row_too(strict_gateway) -> None:
    gw, spill = strict_gateway
    first, hit = (f"sd-cache-{n}-{uuid.uuid4().hex[:8]}" for n in range(2))
    text = sdk_stream(gw.url, "chat", first)
    assert sdk_stream(gw.url, "chat", hit) == text
    assert journaled(spill, hit)


def test_a_failed_streams_error_event_waits_for_its_row(strict_gateway) -> None:
    gw, spill = strict_gateway
    rid = f"sd-fail-{uuid.uuid4().hex[:8]}"
    with httpx.stream("POST", gw.url + "/v1/chat/completions", timeout=10,
                      headers={"authorization": f"Bearer {GATEWAY_KEY}", "x-request-id": rid},
                      json={"model": "a-error-stream", "messages": HI, "stream": True}) as r:
        body = r.read()
    assert b'"error"' in body
    assert journaled(spill, rid)


@pytest.mark.parametrize("endpoint", ["chat", "messages", "responses"])
def test_kill_9_right_after_the_end_of_a_stream_keeps_its_row(fake_openai: Running, tmp_path: Path,
                                                              endpoint: str) -> None:
    """A real `gateway serve` killed with SIGKILL as soon as the client has read the stream's end: the next
    gateway on the same storage recovers the row from the dead one's journal."""
    db = f"sqlite:///{tmp_path / 'usage.db'}"
    config = tmp_path / "gateway.toml"
    config.write_text(ledger_config(fake_openai.url, db, f'spill_dir = "{tmp_path / "spill"}"\n{STRICT}'))
    rid = f"sd-kill-{endpoint}-{uuid.uuid4().hex[:8]}"
    first = GatewayProcess(config, tmp_path)
    try:
        assert sdk_stream(first.url, endpoint, rid)
    finally:
        first.proc.kill()  # SIGKILL: no shutdown, nothing flushed
        first.proc.wait(timeout=10)
    second = GatewayProcess(config, tmp_path)  # replays the dead process's journal before it is ready
    try:
        rows = wait_for(lambda: [r for r in fetch_rows(db) if r["request_id"].startswith(rid + ".")], timeout=10)
    except AssertionError:
        raise AssertionError(f"the stream's row was lost to kill -9\n{first.output()[-2000:]}") from None
    finally:
        second.stop()
    assert [(r["status"], bool(r["stream"]), r["endpoint"]) for r in rows] == [(200, True, endpoint)]


def test_only_the_last_event_waits_for_the_journal(strict_gateway) -> None:
    """Everything before the stream's last event reaches the client while the journal write is held; the
    last event comes only once it is let go."""
    gw, spill = strict_gateway
    rid = f"sd-held-{uuid.uuid4().hex[:8]}"
    with journal_held(gw) as (waiting, gate), stream_lines(gw.url, rid) as r:
        lines = r.iter_lines()
        data = []
        while not data or '"usage":{' not in data[-1]:  # the usage chunk, the one before [DONE]
            line = next(lines)
            if line.startswith("data: "):
                data.append(line[6:])
        until(waiting.is_set)  # the row is written and its journal write is waited on ...
        assert len(journal_rows(spill, rid)) == 0  # ... and held: not on disk yet
        gate.set()
        rest = [line[6:] for line in lines if line.startswith("data: ")]
    assert rest == ["[DONE]"] and len(data) > 2
    assert len(journal_rows(spill, rid)) == 1


def test_a_client_leaving_while_its_end_waits_leaves_one_row(strict_gateway) -> None:
    gw, spill = strict_gateway
    rid = f"sd-left-{uuid.uuid4().hex[:8]}"
    with journal_held(gw) as (waiting, gate):
        with stream_lines(gw.url, rid) as r:
            lines = r.iter_lines()  # held: a dropped line generator closes the response (httpx), i.e. the client leaves
            for line in lines:
                if '"usage":{' in line:
                    break
            until(waiting.is_set)  # the end waits on the journal ...
        # ... and only then the client leaves (the with block closes the response)
    # The client hung up while the end waited: its row was submitted before the wait, once. Nobody waits
    # on it now, so the next strict wait (a whole answer's) journals it.
    whole = httpx.post(gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {GATEWAY_KEY}"},
                       json={"model": "gpt-test", "messages": HI}, timeout=10)
    assert whole.status_code == 200
    assert [(row["status"], row["stream"]) for row in journal_rows(spill, rid)] == [(200, True)]


@pytest.mark.parametrize("data,split", [
    (b"data: a\n\ndata: [DONE]\n\n", (b"data: a\n\n", b"data: [DONE]\n\n")),
    (b"data: [DONE]\n\n", (b"", b"data: [DONE]\n\n")),
    (b"event: x\r\ndata: 1\r\n\r\nevent: stop\r\ndata: 2\r\n\r\n",
     (b"event: x\r\ndata: 1\r\n\r\n", b"event: stop\r\ndata: 2\r\n\r\n")),
    (b"", (b"", b"")),
])
def test_split_last_event(data: bytes, split: tuple[bytes, bytes]) -> None:
    assert split_last_event(data) == split
