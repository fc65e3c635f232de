"""What the server allows a client connection ([server] idle/header/body timeouts, max_connections),
the answers it writes itself when a connection breaks them, and the file-descriptor budget behind
``max_connections``.

These answers are written by the protocol, not the app: a whole HTTP/1.1 response with an OpenAI
error body and ``connection: close``, because the connection ends right after it.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass
from http import HTTPStatus

import orjson

from proxy.settings import ServerConfig

log = logging.getLogger("gateway")

# Descriptors a process needs besides client sockets: upstream pools, the database, logs, spill files.
FD_HEADROOM = 1024


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    idle_timeout_s: float = 5.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 10_000

    @classmethod
    def of(cls, server: ServerConfig) -> ConnectionLimits:
        return cls(server.idle_timeout_s, server.header_timeout_s, server.body_timeout_s, server.max_connections)


def error_body(message: str, type: str, code: str, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


def closing_answer(status: int, message: str, code: str, type: str = "invalid_request_error") -> bytes:
    """A whole response that ends the connection: the status, an OpenAI error body, ``connection: close``."""
    body = error_body(message, type, code)
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode("ascii") + body


def too_many_connections(limit: int) -> bytes:
    return closing_answer(503, f"The gateway is at its limit of {limit} open connections; retry shortly.",
                          "too_many_connections", "service_unavailable_error")


def header_timeout(seconds: float) -> bytes:
    return closing_answer(408, f"The request headers did not arrive within {seconds:g} s.", "request_timeout")


def body_timeout(seconds: float) -> bytes:
    return closing_answer(408, f"The request body did not arrive within {seconds:g} s.", "request_timeout")


def invalid_http(message: str) -> bytes:
    return closing_answer(400, message, "invalid_http")


def ensure_fd_budget(max_connections: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards ``max_connections`` plus headroom (up to the hard
    limit), so clients are refused by ``max_connections`` with a 503 before the process runs out of
    descriptors, where every accept and upstream connect would fail. Returns the soft limit; warns when
    it is still too low for ``max_connections``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + FD_HEADROOM
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < want:
        log.warning("[server] max_connections = %d needs about %d file descriptors but the limit is %d: "
                    "lower max_connections or raise the limit (ulimit -n)", max_connections, want, soft)
    return soft
