"""Real Redis for tests: the shared server at 127.0.0.1:6379, or a throwaway redis-server a test
starts and stops itself. Without Redis those tests skip, except under CI=true, where they fail."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.servers import free_port

SHARED_URL = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: Redis tests must run, not skip)")
    pytest.skip(reason)


def shared_redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(SHARED_URL, socket_timeout=1, socket_connect_timeout=1).ping()
    except Exception as exc:
        unavailable(f"Redis not reachable at {SHARED_URL}: {exc}")
    return SHARED_URL


class RedisServer:
    """A redis-server of the test's own, on a free port; stop() and start() it at will. ``tls`` and
    ``unix`` make it listen over TLS or on a unix socket instead; ``args`` adds redis-server options."""

    def __init__(self, *args: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server binary not found")
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args = list(args)
        self.unixsocket: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def tls(self, cert: Path, key: Path, ca: Path, auth_clients: str = "no") -> RedisServer:
        """Only TLS on the port: certificate and key of the server, the CA it checks client certificates with."""
        self.args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert), "--tls-key-file",
                      str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", auth_clients]
        self.url = f"rediss://127.0.0.1:{self.port}/0"
        return self

    def unix(self, path: Path) -> RedisServer:
        """Only the unix socket at ``path``: no TCP port."""
        self.args += ["--port", "0", "--unixsocket", str(path), "--unixsocketperm", "700"]
        self.unixsocket = path
        self.url = f"unix://{path}"
        return self

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", *self.args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.unixsocket is not None:
                    with socket.socket(socket.AF_UNIX) as s:
                        s.connect(str(self.unixsocket))
                        return self
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


class RedisSentinel:
    """A redis-server --sentinel of the test's own, monitoring the master at ``master_port`` as ``service``."""

    def __init__(self, workdir: Path, master_port: int, service: str = "mymaster") -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server binary not found")
        self.binary = binary
        self.port = free_port()
        self.service = service
        self.conf = workdir / f"sentinel-{self.port}.conf"  # the sentinel rewrites it: in the tmp dir
        self.conf.write_text(f"port {self.port}\nbind 127.0.0.1\n"
                             f"sentinel monitor {service} 127.0.0.1 {master_port} 1\n"
                             f"sentinel down-after-milliseconds {service} 1000\n"
                             f"sentinel failover-timeout {service} 10000\n")
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisSentinel:
        self.proc = subprocess.Popen([self.binary, str(self.conf), "--sentinel"], cwd=self.workdir,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while self.master() is None:
            if time.monotonic() > deadline:
                raise RuntimeError("redis sentinel did not start")
            time.sleep(0.05)
        return self

    def master(self) -> int | None:
        """The port of the master the sentinel names now, or None when it does not answer yet."""
        import redis

        try:
            addr = redis.Redis(port=self.port, socket_timeout=1).sentinel_get_master_addr_by_name(self.service)
        except redis.RedisError:
            return None
        return int(addr[1]) if addr else None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free and valid too: ephemeral ports are too high."""
    for _ in range(200):
        port = random.randint(20000, 29999)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


class RedisCluster:
    """Three redis-server nodes of the test's own, joined into a Redis Cluster (no replicas)."""

    def __init__(self, workdir: Path) -> None:
        self.binary = shutil.which("redis-server")
        self.cli = shutil.which("redis-cli")
        if self.binary is None or self.cli is None:
            unavailable("redis-server or redis-cli not found")
        self.workdir = workdir
        self.ports = [_cluster_port() for _ in range(3)]
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> RedisCluster:
        for port in self.ports:
            self.procs.append(subprocess.Popen(
                [str(self.binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--cluster-enabled", "yes", "--cluster-config-file", str(self.workdir / f"nodes-{port}.conf")],
                cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in self.ports:
            self._wait(lambda p=port: self.run(p, "PING") == "PONG")
        subprocess.run([str(self.cli), "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=30)
        for port in self.ports:
            self._wait(lambda p=port: "cluster_state:ok" in self.run(p, "CLUSTER", "INFO"))
        return self

    def run(self, port: int, *args: str) -> str:
        out = subprocess.run([str(self.cli), "-p", str(port), *args], capture_output=True, text=True, timeout=10)
        return out.stdout.strip()

    @staticmethod
    def _wait(ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 20
        while not ready():
            if time.monotonic() > deadline:
                raise RuntimeError("redis cluster did not come up")
            time.sleep(0.1)

    def owner(self, slot: int) -> int:
        """The port of the node serving ``slot``."""
        for port in self.ports:
            myself = next(line for line in self.run(port, "CLUSTER", "NODES").splitlines() if "myself" in line)
            for part in myself.split()[8:]:
                low, _, high = part.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    return port
        raise RuntimeError(f"no node serves slot {slot}")

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(timeout=10)
