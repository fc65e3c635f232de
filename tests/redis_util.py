"""Real Redis for tests: the shared server at 127.0.0.1:6379, or a throwaway redis-server a test
starts and stops itself. Without Redis those tests skip, except under CI=true, where they fail."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

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
    """A redis-server of the test's own, on a free port; stop() and start() it at will."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server binary not found")
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
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
