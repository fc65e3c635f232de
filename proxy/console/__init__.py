"""The web console and what it stands on: the audit log, server-side sessions, and the ``/ui`` pages.

``Console`` is app-level like the ledger (it outlives config reloads): its tables live in the ledger's
database (proxy.console.db), and ``attach`` gives every new Runtime's pipeline the sessions stage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.routing import BaseRoute, Route

from proxy.console import audit, insight, sessions_api, ui
from proxy.console.audit import AuditLog
from proxy.console.db import ConsoleDB
from proxy.console.sessions import SessionStore
from proxy.console.stage import SessionStage
from proxy.runtime import Runtime

log = logging.getLogger("gateway.console")
PRUNE_EVERY_S = 3600.0


class Console:
    def __init__(self, database_url: str, retention_days: int) -> None:
        self.db = ConsoleDB(database_url)
        self.audit = AuditLog(self.db)
        self.sessions = SessionStore(self.db)
        self.stage = SessionStage(self.sessions)
        self.retention_days = retention_days
        self.task: asyncio.Task[None] | None = None

    def attach(self, runtime: Runtime) -> None:
        runtime.pipeline.sessions = self.stage

    def start(self) -> None:
        if self.retention_days > 0:
            self.task = asyncio.create_task(self._prune())

    async def _prune(self) -> None:
        while True:
            try:
                removed = await self.sessions.prune(self.retention_days)
                if removed:
                    log.info("sessions: removed %d unused for %d days", removed, self.retention_days)
            except Exception as exc:
                log.warning("sessions: pruning failed: %s", type(exc).__name__)
            await asyncio.sleep(PRUNE_EVERY_S)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        await self.db.close()


def routes(with_ui: bool) -> list[BaseRoute]:
    out: list[BaseRoute] = [
        Route("/admin/audit", audit.audit_endpoint, methods=["GET"]),
        Route("/admin/health", insight.health, methods=["GET"]),
        Route("/admin/requests", insight.requests_log, methods=["GET"]),
        Route("/admin/requests/{request_id}", insight.request_detail, methods=["GET"]),
        Route("/v1/sessions", sessions_api.create_session, methods=["POST"]),
        Route("/v1/sessions", sessions_api.list_sessions, methods=["GET"]),
        Route("/v1/sessions/{session_id}", sessions_api.get_session, methods=["GET"]),
        Route("/v1/sessions/{session_id}", sessions_api.delete_session, methods=["DELETE"]),
    ]
    return out + (ui.routes() if with_ui else [])
