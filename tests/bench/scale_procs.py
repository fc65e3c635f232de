"""The processes of `make scale`: the fake OpenAI upstream, `gateway serve --workers 2` replicas (each in
its own process group, so SIGKILL takes the whole replica as a container runtime would), the client
processes, and the CPU time of a process tree read from /proc."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def wait_http(url: str, proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)


class Upstream:
    """tests/fakes/openai_server.py under uvicorn, in a process of its own (its CPU is not the gateways')."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = workdir / "upstream.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--factory", "tests.fakes.openai_server:make_app", "--host",
                 "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        # the fake has no GET route: any HTTP answer (405) means it is up
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.url + "/v1/chat/completions", timeout=1)
            except urllib.error.HTTPError:
                return
            except (urllib.error.URLError, OSError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fake upstream did not start:\n{self.log.read_text(errors='replace')}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


class Replica:
    """`gateway serve --workers N` on a port; start() again after kill() is the restart."""

    def __init__(self, config: Path, port: int, workdir: Path, workers: int) -> None:
        self.config, self.port, self.workdir, self.workers = config, port, workdir, workers
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.cpu_lost = 0.0  # CPU seconds of incarnations that were killed

    def start(self) -> Replica:
        self.starts += 1
        log = self.workdir / f"gateway-{self.port}-{self.starts}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("GATEWAY_CONFIG", None)
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "proxy.cli", "serve", "--config", str(self.config), "--port", str(self.port),
                 "--workers", str(self.workers)],
                cwd=self.workdir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(self.url + "/readyz", self.proc, f"gateway on port {self.port}", log)
        return self

    def pids(self) -> list[int]:
        return descendants(self.proc.pid) if self.proc is not None and self.proc.poll() is None else []

    def cpu(self) -> float:
        """CPU seconds of this replica so far, its killed incarnations included."""
        return self.cpu_lost + cpu_seconds(self.pids())

    def kill(self) -> None:
        """SIGKILL to the replica's whole process group: supervisor and workers die at once, mid-request."""
        assert self.proc is not None
        self.cpu_lost += cpu_seconds(self.pids())
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in _group(self.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc is not None:
            for pid in _group(self.proc.pid):  # a worker left behind must not outlive the run
                os.kill(pid, signal.SIGKILL)


def _group(pgid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes (all their threads), from /proc/<pid>/stat."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def run_clients(specs: list[dict], workdir: Path, during: list[tuple[float, object]] | None = None) -> list[dict]:
    """Start one client process per spec; once all have imported the SDK (each writes ``<out>.ready``), give
    them one moment to start sending together (``<out>.go`` holds it), run ``during``'s callables at their
    offsets from that moment while they send, and return every request's JSON record."""
    procs = []
    for spec in specs:
        out = workdir / f"client-{spec['name']}.jsonl"
        log = (workdir / f"client-{spec['name']}.log").open("wb")
        procs.append((subprocess.Popen([sys.executable, "-m", "tests.bench.scale_client", "--spec",
                                        orjson.dumps(spec).decode(), "--out", str(out)],
                                       cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), out, log))
    deadline = time.monotonic() + 120  # a loaded machine imports slowly
    while not all(Path(f"{out}.ready").exists() for _, out, _ in procs):
        if time.monotonic() > deadline or any(proc.poll() is not None for proc, _, _ in procs):
            break  # the failing client's output is reported below
        time.sleep(0.05)
    start_at = time.time() + 0.2
    for _, out, _ in procs:
        Path(f"{out}.go").write_text(repr(start_at))
    for offset, action in during or []:
        time.sleep(max(0.0, start_at + offset - time.time()))
        action()  # type: ignore[operator]
    records = []
    for proc, out, log in procs:
        code = proc.wait(timeout=max(s["duration_s"] for s in specs) + 120)
        log.close()
        if code != 0:
            raise RuntimeError(f"client {out.name} failed ({code}):\n{Path(log.name).read_text(errors='replace')}")
        records += [orjson.loads(line) for line in out.read_bytes().splitlines() if line]
    return records
