"""Crash faults for the usage ledger: `gateway serve` killed with SIGKILL under load, with its Postgres
up or stopped, then a new gateway on the same storage. Every request that got an answer must have
exactly one row: in strict durability always; in batch durability all but those answered in the last
flush interval before the kill (the documented window)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests import pg
from tests.conftest import GATEWAY_KEY
from tests.pg import fetch_rows, ledger_config, wait_for
from tests.procs import GatewayProcess

throwaway_pg = pg.throwaway_pg  # fixture

THREADS = 6
FLUSH_S = 0.2  # flush_interval_ms = 200, the default
SLACK_S = 1.0  # a loaded 2-core machine may run a journal tick late: the window checked is FLUSH_S + this


class Load:
    """Threads sending whole-body chat requests until stopped (or the gateway dies), noting which got
    an answer and when."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answered: dict[str, float] = {}  # request id -> when its answer arrived (monotonic)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(n,)) for n in range(THREADS)]

    def _run(self, n: int) -> None:
        with httpx.Client(timeout=5) as client:
            i = 0
            while not self.stop.is_set():
                rid = f"k{n}-{i}-{uuid.uuid4().hex[:6]}"
                i += 1
                try:
                    r = client.post(self.url + "/v1/chat/completions",
                                    headers={"authorization": f"Bearer {GATEWAY_KEY}", "x-request-id": rid},
                                    json={"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]})
                except httpx.HTTPError:
                    return  # the gateway is gone
                if r.status_code == 200:
                    with self.lock:
                        self.answered[rid] = time.monotonic()

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)


def _schema_url(server: pg.ThrowawayPostgres) -> str:
    schema = f"crash_{uuid.uuid4().hex[:8]}"
    asyncio.run(pg._execute(server.url, f"CREATE SCHEMA {schema}"))
    return f"{server.url}?search_path={schema}"


def _rows_per_request(url: str) -> Counter[str]:
    return Counter(r["request_id"].rsplit(".", 1)[0] for r in fetch_rows(url))


@pytest.mark.parametrize("durability,outage", [("strict", False), ("strict", True), ("batch", True)])
def test_kill_9_under_load_loses_no_answered_request(fake_openai, throwaway_pg, tmp_path: Path, durability: str,
                                                     outage: bool):
    url = _schema_url(throwaway_pg)
    config = tmp_path / "gateway.toml"
    config.write_text(ledger_config(fake_openai.url, url,
                                    f'spill_dir = "{tmp_path / "spill"}"\ndurability = "{durability}"'))
    first = GatewayProcess(config, tmp_path)
    try:
        with Load(first.url) as load:
            wait_for(lambda: len(load.answered) >= 50, timeout=20)
            if outage:
                throwaway_pg.stop()  # the gateway keeps answering; its rows wait for the database
                answered_before = len(load.answered)
                time.sleep(2.5)
                assert len(load.answered) >= answered_before + 100, first.output()
            else:
                time.sleep(1.0)
            first.proc.kill()  # SIGKILL: no shutdown, no atexit, nothing flushed
            killed_at = time.monotonic()
            first.proc.wait(timeout=10)
    finally:
        if first.proc.poll() is None:
            first.proc.kill()
        if outage:
            throwaway_pg.start()
    answered = dict(load.answered)
    assert len(answered) >= 100, first.output()

    second = GatewayProcess(config, tmp_path)  # adopts the dead process's journal and replays it at start
    try:
        if durability == "strict":
            must_have = set(answered)
        else:  # batch: only the last flush interval before the kill may be lost
            must_have = {rid for rid, at in answered.items() if at < killed_at - FLUSH_S - SLACK_S}
            assert len(must_have) >= 100
        counts = wait_for(lambda: (c := _rows_per_request(url)) and must_have <= set(c) and c, timeout=20)
    except AssertionError:
        counts = _rows_per_request(url)
        missing = must_have - set(counts)
        raise AssertionError(f"{len(missing)} of {len(must_have)} answered requests have no row "
                             f"({durability}, outage={outage})\n{first.output()[-3000:]}") from None
    finally:
        second.stop()
    assert max(counts.values()) == 1  # replays never count a request twice
    assert not list((tmp_path / "spill").glob("usage-journal-*")), "the replayed journal was not deleted"
