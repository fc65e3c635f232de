"""Processes and what /proc says about them: start pinned, CPU seconds, RSS, machine noise."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cpus() -> tuple[int | None, int | None]:
    """(server core, load core), or (None, None) when there is nothing to pin to."""
    if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        return None, None
    return 0, 1


def descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += parents.get(p, [])
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes (all their threads), from /proc/<pid>/stat."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5), counted from after "comm)"
    return ticks / CLK_TCK


def io_calls(pids: list[int]) -> tuple[int, int]:
    """Read- and write-family system calls of the processes so far: syscr and syscw of /proc/<pid>/io,
    which count read/readv and write/writev (what uvloop uses on sockets), not recv or send."""
    reads = writes = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/io").read_text().splitlines():
                name, _, value = line.partition(": ")
                if name == "syscr":
                    reads += int(value)
                elif name == "syscw":
                    writes += int(value)
        except OSError:
            continue
    return reads, writes


def status_kb(pids: list[int], key: str) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def pin(pids: list[int], cpu: int | None) -> None:
    """Move every thread of the processes to one core (what `taskset -a -p -c` does)."""
    if cpu is None:
        return
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                os.sched_setaffinity(int(tid), {cpu})
            except OSError:
                pass


SERVICES = ("redis-server", "postgres")  # what a governed gateway talks to, when they run on this machine


@contextlib.contextmanager
def services_on(cpu: int | None) -> Iterator[str]:
    """Move every thread of the local Redis and Postgres to ``cpu`` for the duration, then back to where
    they were. In a deployment they run on other hosts; here, under load, they must not take CPU from the
    gateway's core (so they go to the load core), or the governed rows would measure Redis and Postgres as
    much as the gateway. Yields what was done."""
    if cpu is None:
        yield "not moved (no pinning)"
        return
    saved: dict[int, set[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if Path(f"/proc/{entry}/comm").read_text().strip() not in SERVICES:
                continue
            for tid in os.listdir(f"/proc/{entry}/task"):
                mask = os.sched_getaffinity(int(tid))
                os.sched_setaffinity(int(tid), {cpu})
                saved[int(tid)] = mask
        except OSError:
            continue
    try:
        yield (f"local Redis and Postgres ({len(saved)} threads) moved to core {cpu} for the gateway rows"
               if saved else "local Redis and Postgres not found or not movable: they float")
    finally:
        for tid, mask in saved.items():
            try:
                os.sched_setaffinity(tid, mask)
            except OSError:
                pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Server:
    """One server process, started pinned to a core, logged to a file, stopped by its pid."""

    def __init__(self, name: str, cmd: list[str], port: int, ready_path: str, cpu: int | None,
                 env: dict[str, str], logdir: Path) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ready_path = ready_path
        self.log_path = logdir / f"{name}.log"
        prefix = ["taskset", "-c", str(cpu)] if cpu is not None else []
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(prefix + cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=logdir)  # whatever it writes (SQLite, spill files) stays in the run's temp dir
        self._pids: list[int] | None = None

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                status, _ = http_get(self.url + self.ready_path, timeout=1)
                if status < 500:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s: {self.log_tail()}")

    @property
    def pids(self) -> list[int]:
        if self._pids is None:  # the tree is fixed once the server is up (uvicorn with one worker)
            self._pids = descendants(self.proc.pid)
        return self._pids

    def cpu(self) -> float:
        return cpu_seconds(self.pids)

    def io_calls(self) -> tuple[int, int]:
        return io_calls(self.pids)

    def log_tail(self, lines: int = 6) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # graceful: lets the gateway flush what it holds
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


class Noise:
    """How much CPU the rest of the machine took during the run: the numbers' error bar on a shared box."""

    def __init__(self) -> None:
        self.busy0, self.steal0 = self._stat()
        self.ours0 = self._ours()
        self.t0 = time.monotonic()
        self.load0 = os.getloadavg()[0]

    @staticmethod
    def _stat() -> tuple[float, float]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
        return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK

    @staticmethod
    def _ours() -> float:
        t = os.times()  # children: every process this driver started and waited for (servers, wrk)
        return t.user + t.system + t.children_user + t.children_system

    def summary(self) -> str:
        busy, steal = self._stat()
        wall = (time.monotonic() - self.t0) * (os.cpu_count() or 1)
        others = max(0.0, (busy - self.busy0) - (self._ours() - self.ours0))
        return (f"other processes used {others / wall:.0%} of the machine's CPU during the run, hypervisor steal "
                f"{(steal - self.steal0) / wall:.0%}; load average {self.load0:.2f} at the start, "
                f"{os.getloadavg()[0]:.2f} at the end")
