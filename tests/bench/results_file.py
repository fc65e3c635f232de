"""Writing tests/bench/RESULTS.md: `make bench` owns the file, but other runs keep their own sections in it
(`make scale`'s, between ``<!-- make scale: begin ... -->`` and ``<!-- make scale: end -->``), and a bench
run must not erase them. Imported by run.py (as ``results_file``) and by its unit test; no sibling imports."""

from __future__ import annotations

import re
from pathlib import Path

# ``<!-- NAME: begin ... -->`` ... ``<!-- NAME: end -->``, NAME being anything but a colon or ``>``.
SECTION = re.compile(r"<!-- (?P<name>[^:>]+?): begin\b.*?-->.*?<!-- (?P=name): end -->", re.DOTALL)


def sections(text: str) -> dict[str, str]:
    """Each delimited section of ``text``, markers included, by name, in the order they appear."""
    return {m["name"]: m[0] for m in SECTION.finditer(text)}


def merge(old: str, new: str) -> str:
    """``new`` (the bench's whole report) followed by every delimited section of ``old`` that ``new`` does
    not have itself, each as it was, in its order."""
    ours = sections(new)
    kept = [block for name, block in sections(old).items() if name not in ours]
    if not kept:
        return new
    return new.rstrip("\n") + "\n\n" + "\n\n".join(kept) + "\n"


def write_results(path: Path, text: str) -> None:
    """Write the bench's report to ``path``, keeping the other runs' sections of the file it replaces."""
    old = path.read_text() if path.exists() else ""
    path.write_text(merge(old, text))
