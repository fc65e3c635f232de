"""`gateway serve --workers N` whose supervisor alone is killed with SIGKILL: its workers must not stay
orphaned on the port. Each drains and exits, and a new gateway binds the same port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from proxy.parent_death import SUPERVISOR_ENV, watch_parent
from tests.conftest import Running, base_config
from tests.procs import GatewayProcess
from tests.servers import free_port


def workers_of(pid: int) -> set[int]:
    """The live worker processes of supervisor ``pid`` (from /proc: its children that multiprocessing
    spawned, not its resource tracker; zombies are not alive)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if int(ppid) == pid and state != "Z" and b"spawn_main" in command:
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def until(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)
    return result


def test_workers_exit_and_free_the_port_when_the_supervisor_is_sigkilled(fake_openai: Running, tmp_path: Path):
    config = tmp_path / "gateway.toml"
    config.write_text(base_config(fake_openai.url, tmp_path / "gw.db"))
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("GATEWAY_CONFIG", None)
    log = tmp_path / "supervisor.log"
    with log.open("wb") as out:
        supervisor = subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--config", str(config),
                                       "--port", str(port), "--workers", "2"], cwd=tmp_path, env=env, stdout=out,
                                      stderr=subprocess.STDOUT)
    workers: set[int] = set()
    try:
        workers = until(lambda: len(w := workers_of(supervisor.pid)) == 2 and w, 30, "two workers")
        until(lambda: _ready(port), 30, f"the workers answer\n{log.read_text()}")
        supervisor.kill()  # SIGKILL to the supervisor only: it cannot stop its workers itself
        supervisor.wait(timeout=10)
        until(lambda: not any(alive(pid) for pid in workers), 30,
              f"the orphaned workers {workers} exit\n{log.read_text()[-3000:]}")
        until(lambda: port_free(port), 10, f"port {port} is free")
        assert "Shutting down" in log.read_text()  # they drained as on SIGTERM, not killed outright
        again = GatewayProcess(config, tmp_path, port=port)  # a restart binds the same port
        again.stop()
    finally:
        if supervisor.poll() is None:
            workers |= workers_of(supervisor.pid)
            supervisor.kill()
        for pid in workers:  # only if the test failed: the orphans it made must not outlive it
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_only_a_worker_watches_its_parent() -> None:
    assert not watch_parent({})  # a single-process server
    assert not watch_parent({SUPERVISOR_ENV: str(os.getpid())})  # the supervisor itself
    assert not watch_parent({SUPERVISOR_ENV: "not-a-pid"})
