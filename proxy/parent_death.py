"""Workers of `gateway serve --workers N` end when their supervisor dies.

uvicorn's supervisor starts the workers and stops them on SIGTERM, but killed with SIGKILL it cannot, and
the orphans would go on serving the port: a restarted gateway could not bind it. So each worker asks
Linux to send it SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``), which drains it as any
SIGTERM does (in-flight requests finish, the ledger is flushed); where prctl is missing, a thread checks
``getppid()`` once a second instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import threading
import time
from typing import Any

SUPERVISOR_ENV = "GATEWAY_SUPERVISOR_PID"  # set by `gateway serve --workers N` for its workers
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
POLL_S = 1.0


def worker_app() -> Any:
    """The app factory the workers load: the parent watch first, then the app ``proxy.app:app_from_env`` builds."""
    watch_parent(os.environ)
    from proxy.app import app_from_env

    return app_from_env()


def watch_parent(env: dict[str, str] | os._Environ[str]) -> bool:
    """Have this process get SIGTERM once the supervisor named in ``env`` is gone; whether it is a worker."""
    named = env.get(SUPERVISOR_ENV, "")
    if not named.isdigit() or int(named) == os.getpid():
        return False  # a single-process server, or the supervisor itself
    supervisor = int(named)
    if not _death_signal(signal.SIGTERM):
        threading.Thread(target=_poll, args=(supervisor,), name="parent-watch", daemon=True).start()
    if os.getppid() != supervisor:  # it died before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def _death_signal(sig: int) -> bool:
    """Linux's PR_SET_PDEATHSIG for this process; whether it was set."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux (no libc or no prctl)
        return False


def _poll(supervisor: int) -> None:
    while os.getppid() == supervisor:
        time.sleep(POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)
