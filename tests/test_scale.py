"""The scale-out proof, short (`make scale` runs it for 20 s and writes RESULTS.md): three `gateway serve
--workers 2` replicas, a three-master Redis Cluster, Postgres, one replica killed with SIGKILL mid-run and
restarted, under per-key rpm, tpm and budget limits that bind. Plus the checker itself, on made-up records,
so that each invariant is shown to fail when it is broken."""

from __future__ import annotations

from typing import Any

from tests.bench.scale import Plan, run
from tests.bench.scale_checks import Kill, check, gcra_allowance
from tests.pg import shared_pg_url

RPM_KEY = {"sk-r": {"name": "r-1", "rpm": 10}}


def test_three_replicas_redis_cluster_and_a_kill_keep_every_invariant(tmp_path):
    outcome = run(Plan.quick(5.0), tmp_path, shared_pg_url())
    counts = outcome.findings.counts
    assert not outcome.failures, "\n".join(outcome.failures)
    # the run did what it claims: limits bound, a replica was killed and came back, rows were counted
    assert {row.limit.split()[0] for row in outcome.findings.limits} == {"rpm", "tpm", "budget_usd"}
    assert all(row.limited > 0 and row.ok for row in outcome.findings.limits)
    assert outcome.kill is not None and outcome.kill.back > outcome.kill.at
    assert counts["rows"] >= counts["answered"] > 200
    assert len(outcome.cpu) == 2 and all(p.requests > 50 for p in outcome.cpu)


def _record(i: int, status: int | None = 200, outcome: str = "answered", sent: float = 100.0, key: str = "sk-r",
            gateway: str = "http://a", error: str | None = None) -> dict[str, Any]:
    return {"id": f"c-0-{i}", "key": key, "kind": "chat", "gateway": gateway, "outcome": outcome, "status": status,
            "error": error, "sent": sent, "ended": sent + 0.1, "tokens": 10}


def _rows(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["id"]: {"status": r["status"], "prompt_tokens": 6, "completion_tokens": 4, "cost_usd": 0.01}
            for r in records if r["outcome"] == "answered"}


def test_checker_passes_a_run_within_its_allowance():
    records = [_record(i, sent=100 + i * 0.01) for i in range(10)] + [_record(10 + i, 429) for i in range(5)]
    found = check(records, _rows(records), RPM_KEY, None)
    assert not found.failures and found.limits[0].ok and found.limits[0].admitted == 10


def test_checker_catches_an_admission_past_the_allowance():
    records = [_record(i, sent=100 + i * 0.01) for i in range(12)] + [_record(20, 429)]
    found = check(records, _rows(records), RPM_KEY, None)
    assert any("rpm = 10" in f for f in found.failures)
    assert gcra_allowance(10, 0.21) < 11  # 12 in 0.2 s is two too many for rpm = 10


def test_checker_catches_a_limit_that_never_bound():
    records = [_record(i) for i in range(3)]
    assert any("rpm = 10" in f for f in check(records, _rows(records), RPM_KEY, None).failures)


def test_checker_catches_a_missing_row_a_wrong_status_and_a_stray_row():
    records = [_record(i) for i in range(3)] + [_record(9, 429)]
    rows = _rows(records)
    del rows["c-0-0"]
    rows["c-0-1"]["status"] = 429
    rows["x-1"] = {"status": 200, "prompt_tokens": 1, "completion_tokens": 1, "cost_usd": 0.0}
    failures = "\n".join(check(records, rows, RPM_KEY, None).failures)
    assert "c-0-0" in failures and "has no row" in failures
    assert "its row says 429" in failures
    assert "match no request sent" in failures


def test_checker_catches_5xx_and_a_broken_stream():
    records = [_record(0, 502), _record(1, 200, error="upstream overloaded"), _record(2, 429)]
    failures = "\n".join(check(records, _rows(records), RPM_KEY, None).failures)
    assert "status 502" in failures and "upstream overloaded" in failures


def test_checker_allows_drops_only_at_the_killed_replica_while_in_flight():
    kill = Kill("http://b", at=100.05, back=103.0)
    records = [_record(0, None, "dropped", sent=100.0, gateway="http://b"),  # in flight at the kill: fine
               _record(1, None, "refused", sent=101.0, gateway="http://b"),  # while it was down: fine
               _record(2, None, "dropped", sent=100.0, gateway="http://a"),  # another replica: not fine
               _record(3, None, "refused", sent=104.0, gateway="http://b"),  # after it was back: not fine
               _record(4, 429)]
    failures = check(records, _rows(records), RPM_KEY, kill).failures
    assert [f.split()[0] for f in failures] == ["c-0-2", "c-0-3"]


def test_checker_allows_a_missing_row_only_under_batch_for_an_answer_in_the_journal_tick_before_the_kill():
    kill = Kill("http://b", at=200.0, back=203.0)
    records = [_record(0, sent=199.85, gateway="http://b"), _record(1, sent=199.85, gateway="http://b"),
               _record(2, sent=199.0, gateway="http://b"), _record(3, sent=199.85, gateway="http://a"),
               _record(4, 429)]
    for r in records[:4]:
        r["kind"] = "stream"
    records[1]["kind"] = "chat"
    rows = {i: row for i, row in _rows(records).items() if i == "c-0-4"}
    found = check(records, rows, RPM_KEY, kill, strict=True, tick_s=0.2)
    assert found.counts["rows lost at the kill"] == 0  # strict: a stream's end, too, waits for its row
    failures = "\n".join(found.failures)
    assert all(f"c-0-{i}" in failures for i in range(4))
    batch = check(records, rows, RPM_KEY, kill, strict=False, tick_s=0.2)
    assert batch.counts["rows lost at the kill"] == 2  # batch: answers in the last tick of the killed replica
    assert batch.lost[0].startswith("c-0-0 (stream, 200): the client read its end 50 ms before")
    failures = "\n".join(batch.failures)
    assert "c-0-2" in failures and "c-0-3" in failures and "c-0-0" not in failures and "c-0-1" not in failures
