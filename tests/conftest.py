from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from proxy.app import create_app
from proxy.config import parse_config
from proxy.settings import StorageConfig
from proxy.storage import sqlite_path
from tests.fakes.openai_server import make_app as make_fake_openai
from tests.servers import ServerThread

ROOT = Path(__file__).resolve().parent.parent
PROVIDER_KEY = "sk-provider-secret-123"
GATEWAY_KEY = "sk-test-key"
LIMITED_KEY = "sk-limited-key"

FAKE_KINDS = ["ok", "fail-400", "fail-401", "fail-404", "fail-429", "fail-500", "fail-503", "not-json", "slow",
              "tools", "cut-stream", "error-stream", "split-stream", "comment-stream", "slow-stream", "leak-key",
              "burst-stream"]


class Running:
    """A started server plus what a test needs to reach it."""

    def __init__(self, server: ServerThread, app: Any) -> None:
        self.server = server
        self.app = app
        self.url = server.url

    def client(self, key: str = GATEWAY_KEY, **kwargs: Any) -> OpenAI:
        return OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, **kwargs)


# Build and tool caches are not the tests' doing; anything else new in the checkout is.
_NOT_OURS = [".venv", ".pytest_cache", ".ruff_cache", "**/__pycache__/**", "**/*.egg-info/**"]


def _checkout_status() -> set[str] | None:
    """Every path git sees as changed, untracked or ignored in the checkout, file by file; None without git."""
    excludes = [f":(exclude,glob){p}" if "*" in p else f":(exclude){p}" for p in _NOT_OURS]
    try:
        done = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all", "--", ".",
                               *excludes], cwd=ROOT, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return set(done.stdout.splitlines()) if done.returncode == 0 else None


@pytest.hookimpl(trylast=True)  # after pytest's tmp_path plugin has set up its factory
def pytest_configure(config: pytest.Config) -> None:
    """Hypothesis keeps caches (constants found in the source, unicode tables) in ./.hypothesis, written
    already while tests are collected: point it at this session's temporary directory instead."""
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(config._tmp_path_factory.mktemp("hypothesis"))  # type: ignore[attr-defined]


@pytest.fixture(scope="session", autouse=True)
def checkout_stays_clean(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fails the run when the tests left files in the checkout (a ledger, a spill dir, a log...): tests
    write only under their tmp_path. Subprocesses get TMPDIR there too, so a gateway's run dir (pid files
    for `gateway reload`) does not pile up in the system's temp dir."""
    before = _checkout_status()
    tmpdir = tmp_path_factory.mktemp("tmpdir")
    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmpdir)
    yield
    if old is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = old
    after = _checkout_status()
    if before is None or after is None:
        return
    gained = sorted(after - before)
    assert not gained, (f"the tests wrote into the checkout {ROOT} (or someone changed it while they ran):\n"
                        + "\n".join(gained))


@pytest.fixture(scope="session")
def fake_openai() -> Iterator[Running]:
    app = make_fake_openai()
    server = ServerThread(app).start()
    yield Running(server, app)
    server.stop()


def base_config(fake_url: str, db_path: str | Path | None, extra: str = "", *, storage: str | None = None) -> str:
    """The shared test config. Its [storage] table puts the SQLite ledger at ``db_path`` and the spill dir
    beside it, so ``db_path`` belongs in the test's temporary directory; ``storage`` replaces the table's
    lines instead (then it must name both database_url and spill_dir)."""
    if storage is None:
        assert db_path is not None, "base_config needs db_path (in the test's tmp_path) or storage"
        db = Path(db_path)
        storage = f'database_url = "sqlite:///{db}"\nspill_dir = "{db.parent / "spill"}"'
    models = "\n".join(
        f'[[models]]\nname = "a-{kind}"\ntargets = [{{ provider = "fake", model = "{kind}" }}]\n' for kind in FAKE_KINDS
    )
    return f"""
[server]
require_auth = true

[storage]
{storage}

[providers.fake]
kind = "openai"
base_url = "{fake_url}/v1"
api_key = "{PROVIDER_KEY}"
timeout_s = 1.5

[providers.local]
kind = "echo"

[providers.nowhere]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key = "x"

[[models]]
name = "gpt-test"
targets = [{{ provider = "fake", model = "ok", input_per_mtok = 1.0, output_per_mtok = 2.0 }}]

[[models]]
name = "echo"
targets = [{{ provider = "local", model = "echo-1" }}]

[[models]]
name = "unreachable"
targets = [{{ provider = "nowhere", model = "m" }}]

{models}
{extra}

[[keys]]
name = "team"
key = "{GATEWAY_KEY}"

[[keys]]
name = "limited"
key = "{LIMITED_KEY}"
models = ["gpt-*", "echo"]
"""


def storage_table(tmp: Path) -> str:
    """A [storage] table keeping the SQLite ledger (tmp/gw.db) and the spill dir in ``tmp``, the test's
    temporary directory."""
    return f'[storage]\ndatabase_url = "sqlite:///{tmp / "gw.db"}"\nspill_dir = "{tmp / "spill"}"\n'


def ledger_rows(db: str | Path, sql: str, params: tuple, at_least: int = 1, timeout_s: float = 10) -> list[tuple]:
    """Rows from a gateway's SQLite usage ledger, polled until ``at_least`` are there (or ``timeout_s``
    passed): the ledger writes in batches, off the request path."""
    import sqlite3

    rows: list[tuple] = []
    deadline = time.monotonic() + timeout_s
    while len(rows) < at_least and time.monotonic() < deadline:
        time.sleep(0.1)
        with sqlite3.connect(db) as conn:
            rows = conn.execute(sql, params).fetchall()
    return rows


def stream_data(url: str, model: str, request_id: str) -> list[str]:
    """POST a streamed chat request with the team key; the payloads of its ``data:`` lines."""
    import httpx

    with httpx.stream("POST", url + "/v1/chat/completions",
                      headers={"authorization": f"Bearer {GATEWAY_KEY}", "x-request-id": request_id},
                      json={"model": model, "messages": [{"role": "user", "content": "go"}], "stream": True},
                      timeout=10) as r:
        assert r.status_code == 200
        return [line[6:] for line in r.iter_lines() if line.startswith("data: ")]


def assert_outside_checkout(storage: StorageConfig) -> None:
    """A gateway a test starts keeps its ledger file and spill dir out of the checkout (a relative path
    lands in the working directory, where the user's own `gateway usage` would read the test's rows)."""
    in_memory = storage.database_url.startswith("sqlite") and sqlite_path(storage.database_url) == ":memory:"
    places = [] if in_memory or not storage.database_url.startswith("sqlite") else [
        ("database_url", sqlite_path(storage.database_url))]
    places.append(("spill_dir", storage.spill_dir))
    for name, path in places:
        resolved = Path(path).resolve()
        if not Path(path).is_absolute() or resolved == ROOT or ROOT in resolved.parents:
            raise AssertionError(f"test config: [storage] {name} = {path!r} is in the checkout; "
                                 "put it in the test's tmp_path")


def start_gateway(toml_text: str, env: dict[str, str] | None = None) -> Running:
    config = parse_config(__import__("tomllib").loads(toml_text), "test.toml", env or dict(os.environ))
    assert_outside_checkout(config.storage)
    app = create_app(config)
    return Running(ServerThread(app).start(), app)


@pytest.fixture(scope="session")
def gateway(fake_openai: Running, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    db = tmp_path_factory.mktemp("gw") / "gw.db"
    running = start_gateway(base_config(fake_openai.url, db))
    yield running
    running.server.stop()


@pytest.fixture
def make_gateway() -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def make(toml_text: str, env: dict[str, str] | None = None) -> Running:
        running = start_gateway(toml_text, env)
        started.append(running)
        return running

    yield make
    for running in started:
        running.server.stop()


@pytest.fixture
def client(gateway: Running) -> OpenAI:
    return gateway.client()
