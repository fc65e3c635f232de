"""Hot reload: SIGHUP (or `gateway reload`) re-reads gateway.toml and swaps in a new Runtime.

In-flight requests finish on the runtime they started on; it is closed once they have drained. An
invalid file is refused with a log line naming the error, and the old config keeps serving.
Each serving process records its pid under a run directory keyed by port, which is how
`gateway reload` finds every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import tempfile
from pathlib import Path
from typing import Any

from proxy.config import ConfigError, load_config
from proxy.runtime import Runtime

log = logging.getLogger("gateway.reload")
DRAIN_MAX_S = 3600.0


def run_dir(port: int | str) -> Path:
    return Path(tempfile.gettempdir()) / "llm-gateway" / str(port)


async def reload(app: Any) -> bool:
    old: Runtime = app.state.runtime
    try:
        config = await asyncio.to_thread(load_config, old.config.path)
        new = Runtime(config, sink=old.sink, limits=app.state.limits, observer=old.obs)
    except ConfigError as e:
        log.error("reload refused, still serving the previous config: %s", e)
        await _audit(app, "config.reload_failed", old.config.path, {"key": e.key})  # the reason may quote a value
        return False
    except Exception as e:  # anything else about the new file: refuse it the same way
        log.error("reload refused, still serving the previous config: %s: %s", type(e).__name__, e)
        await _audit(app, "config.reload_failed", old.config.path, {"error": type(e).__name__})
        return False
    for hook in getattr(app.state, "on_runtime", []):
        hook(new)
    if config.storage != old.config.storage:
        log.warning("reload: [storage] changes take effect at the next restart")
    app.state.runtime = new
    log.info("reloaded %s: %d providers, %d models, %d keys", config.path, len(config.providers),
             len(config.models), len(new.all_keys))
    task = asyncio.create_task(_close_when_drained(old))
    app.state.background.add(task)
    task.add_done_callback(app.state.background.discard)
    await _audit(app, "config.reloaded", config.path, {"providers": len(config.providers),
                                                       "models": len(config.models), "pid": os.getpid()})
    return True


async def _audit(app: Any, action: str, path: str, change: dict[str, Any]) -> None:
    """A row of the audit log (proxy.console.audit); a reload comes from a signal, not a client."""
    console = getattr(app.state, "console", None)
    if console is not None:
        await console.audit.record("signal", action, str(path), change, None)


async def _close_when_drained(old: Runtime) -> None:
    waited = 0.0
    while old.active > 0 and waited < DRAIN_MAX_S:
        await asyncio.sleep(0.5)
        waited += 0.5
    await old.aclose()


def install(app: Any) -> Path | None:
    """SIGHUP -> reload, and a pid file for `gateway reload`. Only possible in the main thread."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, lambda: _spawn(app))
    except (RuntimeError, ValueError, NotImplementedError):
        return None  # not the main thread (e.g. embedded in tests): reload via reload(app) instead
    port = os.environ.get("GATEWAY_PORT")
    if not port:
        return None
    directory = run_dir(port)
    directory.mkdir(parents=True, exist_ok=True)
    pid_file = directory / f"{os.getpid()}.pid"
    pid_file.write_text(str(os.getpid()))
    return pid_file


def uninstall(pid_file: Path | None) -> None:
    with contextlib.suppress(Exception):
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
    if pid_file is not None:
        pid_file.unlink(missing_ok=True)


def _spawn(app: Any) -> None:
    task = asyncio.create_task(reload(app))
    app.state.background.add(task)
    task.add_done_callback(app.state.background.discard)


def signal_workers(port: int | str) -> list[int]:
    """Send SIGHUP to every live gateway process serving ``port``; returns the pids signalled."""
    signalled = []
    directory = run_dir(port)
    for pid_file in sorted(directory.glob("*.pid")) if directory.exists() else []:
        try:
            pid = int(pid_file.read_text().strip())
            os.kill(pid, signal.SIGHUP)
            signalled.append(pid)
        except (ValueError, ProcessLookupError, PermissionError):
            pid_file.unlink(missing_ok=True)  # stale
    return signalled
