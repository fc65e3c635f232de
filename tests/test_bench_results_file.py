"""`make bench` rewrites tests/bench/RESULTS.md but keeps the sections other runs wrote into it (make scale's)."""

from __future__ import annotations

from pathlib import Path

from tests.bench import scale_report
from tests.bench.results_file import merge, write_results

BENCH_OLD = "# `make bench` results\n\n- date: yesterday\n\n| row | rps |\n|---|---|\n| bare | 1 |\n"
BENCH_NEW = "# `make bench` results\n\n- date: today\n\n| row | rps |\n|---|---|\n| bare | 2 |\n"
SCALE = "## `make scale`\n\n| sent | answered |\n|---|---|\n| 10 | 10 |\n\nResult: **PASS**\n"


def test_a_bench_run_keeps_the_scale_section_scale_report_wrote(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text(BENCH_OLD)
    scale_report.replace_section(results, SCALE)  # as `make scale` writes it
    scale_block = results.read_text()[results.read_text().index(scale_report.BEGIN):]

    write_results(results, BENCH_NEW)

    text = results.read_text()
    assert text.startswith(BENCH_NEW) and "yesterday" not in text
    assert text.count(scale_report.BEGIN) == 1 and text.rstrip("\n").endswith(scale_report.END)
    assert scale_block in text  # kept as it was, byte for byte
    write_results(results, BENCH_NEW)  # a second run neither loses nor repeats it
    assert results.read_text() == text
    scale_report.replace_section(results, SCALE.replace("10 |", "11 |"))  # and make scale still finds it
    assert results.read_text().startswith(BENCH_NEW) and "| 11 | 11 |" in results.read_text()


def test_every_delimited_section_is_kept_in_order_unless_the_new_text_has_its_own() -> None:
    a = "<!-- a: begin (x) -->\nA1\n<!-- a: end -->"
    b = "<!-- other run: begin -->\nB\n<!-- other run: end -->"
    old = f"# old\n\n{a}\n\nbench text between\n\n{b}\ntrailing old text\n"
    assert merge(old, "# new\n") == f"# new\n\n{a}\n\n{b}\n"
    a2 = "<!-- a: begin -->\nA2\n<!-- a: end -->"
    assert merge(old, f"# new\n{a2}\n") == f"# new\n{a2}\n\n{b}\n"
    assert merge("", "# new\n") == merge("# old, no sections\n", "# new\n") == "# new\n"
    unclosed = "# old\n<!-- c: begin -->\nC\n"  # not a section: nothing to keep
    assert merge(unclosed, "# new\n") == "# new\n"


def test_the_file_is_created_when_missing(tmp_path: Path) -> None:
    write_results(tmp_path / "RESULTS.md", BENCH_NEW)
    assert (tmp_path / "RESULTS.md").read_text() == BENCH_NEW
