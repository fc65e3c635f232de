"""Nothing lost, nothing twice: a Postgres server that goes down and comes back (started and
stopped by the test itself with pg_ctl), and `gateway serve` stopped by SIGTERM with rows queued."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
from openai import OpenAI

from tests import pg
from tests.conftest import GATEWAY_KEY
from tests.pg import ledger_config, rows_by_id, wait_for
from tests.servers import free_port

pg_url, database_url, throwaway_pg = pg.pg_url, pg.database_url, pg.throwaway_pg  # fixtures


def _send(client: OpenAI, n: int, sent: list[str], stream: bool = False) -> None:
    for i in range(n):
        rid = f"o-{uuid.uuid4().hex[:12]}"
        messages = [{"role": "user", "content": f"during the outage {i}"}]
        if stream:
            list(client.chat.completions.create(model="gpt-test", messages=messages, stream=True,
                                                extra_headers={"x-request-id": rid}))
        else:
            client.chat.completions.create(model="gpt-test", messages=messages, extra_headers={"x-request-id": rid})
        sent.append(rid)


def test_postgres_outage_and_restart_every_row_arrives_exactly_once(fake_openai, make_gateway, throwaway_pg,
                                                                     tmp_path):
    schema = f"outage_{uuid.uuid4().hex[:8]}"
    asyncio.run(pg._execute(throwaway_pg.url, f"CREATE SCHEMA {schema}"))
    url = f"{throwaway_pg.url}?search_path={schema}"
    spill = tmp_path / "spill"
    config = ledger_config(fake_openai.url, url, f'spill_dir = "{spill}"\nqueue_max_rows = 5')
    gw = make_gateway(config)
    ledger = gw.app.state.ledger
    client = gw.client()
    sent: list[str] = []

    _send(client, 4, sent)
    rows_by_id(url, 4)

    throwaway_pg.stop()  # requests keep being answered while the database is gone
    _send(client, 12, sent)
    _send(client, 6, sent, stream=True)
    wait_for(lambda: ledger.spilled_rows_total >= 13)  # 18 rows, 5 may stay queued
    assert ledger.write_errors_total >= 1 and ledger.stats()["database_up"] is False

    throwaway_pg.start()
    _send(client, 3, sent)
    rows = rows_by_id(url, 25, timeout=20)
    assert sorted(rows) == sorted(sent)
    wait_for(lambda: ledger.replayed_rows_total == ledger.spilled_rows_total)
    assert ledger.stats()["database_up"] is True

    # Stopped while the database is down: what is queued goes to the spill file, and the next
    # gateway to start replays it once the database answers.
    throwaway_pg.stop()
    _send(client, 5, sent)
    gw.server.stop()
    assert sum(len(p.read_bytes().splitlines()) for p in spill.glob("usage-spill-*.jsonl")) == 5
    throwaway_pg.start()
    make_gateway(config)
    rows = rows_by_id(url, 30, timeout=20)
    assert sorted(rows) == sorted(sent)  # every request once: none lost, none twice
    wait_for(lambda: not list(spill.glob("usage-spill-*.jsonl")))


# The fake's "slow" model answers after 3 s: in flight when SIGTERM comes, and allowed to finish.
SLOW = """
[[models]]
name = "slow-ok"
targets = [{ provider = "fake", model = "slow", timeout_s = 10, max_retries = 0 }]
"""


def test_sigterm_drains_in_flight_requests_and_flushes_the_queue(fake_openai, database_url, tmp_path):
    # A ten-minute flush interval: every row is still queued when SIGTERM arrives.
    config = tmp_path / "gateway.toml"
    config.write_text(ledger_config(fake_openai.url, database_url,
                                    f'flush_interval_ms = 600000\nspill_dir = "{tmp_path / "spill"}"', extra=SLOW))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--config", str(config), "--port", str(port)],
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _ready(base) or proc.poll() is not None, timeout=20)
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        client = OpenAI(base_url=base + "/v1", api_key=GATEWAY_KEY, max_retries=0)
        sent: list[str] = []
        _send(client, 8, sent)
        _send(client, 4, sent, stream=True)

        slow: dict[str, object] = {}

        def in_flight() -> None:  # the fake sleeps 3 s before answering
            resp = client.chat.completions.with_raw_response.create(
                model="slow-ok", messages=[{"role": "user", "content": "slow"}],
                extra_headers={"x-request-id": "slow-1"})
            slow["status"] = resp.status_code

        thread = threading.Thread(target=in_flight)
        thread.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        thread.join(timeout=15)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = out.decode()
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status says why it ended.
    assert proc.returncode in (0, -signal.SIGTERM), log
    assert "Application shutdown complete" in log, log
    assert slow.get("status") == 200, log  # the in-flight request was answered, not cut
    rows = rows_by_id(database_url, 13, timeout=2)
    assert sorted(rows) == sorted([*sent, "slow-1"])
    assert rows["slow-1"]["status"] == 200
    assert "13 rows written, 0 spilled" in log
    assert not list((tmp_path / "spill").glob("usage-spill-*"))


def _ready(base: str) -> bool:
    try:
        return httpx.get(base + "/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False
