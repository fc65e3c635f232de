"""The request pipeline: how one request goes from the client to its usage row. Read this first.

Every model request (chat completions, embeddings, and Anthropic Messages and OpenAI Responses, which
parse reads as the chat request they ask for, see adapters.inbound) runs ``Pipeline.handle`` below,
whose body is the whole path, one stage a line:

    stage           module                          what it does
    authenticate    proxy.auth (Runtime)            the gateway key: 401 without a usage row
    sessions        proxy.pipeline.sessions         a named session's history prepended (proxy.console.stage)
    parse           proxy.pipeline.parse            body -> ClientRequest, read once; 400 naming the parameter;
                                                    the client's API (proxy.frontend)
    resolve         proxy.runtime                   model name -> ModelAlias (globs, fuzzy); 404 / 403
    before hooks    proxy.pipeline.hooks            guardrails (proxy.guardrails) and middleware
    limits          proxy.limits                    rpm, tpm, max_parallel, budget; 429 / 503
    cache           proxy.pipeline.cache            a stored answer instead of an upstream call (proxy.cache)
    dispatch        proxy.dispatch                  targets in order: retries, fallbacks, hedging
                    proxy.pipeline.stream           streams: first bytes, then relayed as they come
                    proxy.frontend                  the answer in the client's API (or its bytes passed through)
    after hooks     proxy.pipeline.hooks            see the answer before it is sent (streams: tx.stream_filter)
    sessions        proxy.pipeline.sessions         the new messages and the answer kept in their session
    account         proxy.pipeline.account          the usage row, built once: ledger, limits settle,
                                                    metrics, access log, traces

Each stage records what it produced in the request's ``Transaction`` (proxy.pipeline.transaction);
accounting reads it once at the end, however the request ended. The pipeline knows nothing of HTTP:
proxy.endpoints turns a Starlette request into an ``Inbound`` and the ``Answer`` into a response, and
a program can call ``handle`` in-process with an ``Inbound`` of its own.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import orjson

from adapters.errors import APIError
from proxy import end_users
from proxy.dispatch import Dispatch, Outcome
from proxy.errors import GatewayError, client_gone, error_body, internal_error
from proxy.limits import Ticket
from proxy.pipeline.account import Accounting
from proxy.pipeline.cache import Cache, NoCache
from proxy.pipeline.hooks import Hooks, NoHooks
from proxy.pipeline.parse import parse, request_ids
from proxy.pipeline.sessions import NoSessions, Sessions, taps
from proxy.pipeline.stream import held_to_the_end, open_stream
from proxy.pipeline.transaction import (
    Answer,
    ClientWatch,
    Inbound,
    StreamAnswer,
    Transaction,
    WholeAnswer,
    no_bookkeeping,
)
from proxy.pipeline.validate import check_forwarded_model
from proxy.settings import ModelAlias

if TYPE_CHECKING:
    from proxy.runtime import Runtime

__all__ = ["Answer", "ClientWatch", "Inbound", "Pipeline", "StreamAnswer", "Transaction", "WholeAnswer"]

log = logging.getLogger("gateway")


class Pipeline:
    """The stages of one loaded config. A config reload builds a new Runtime, and with it a new Pipeline."""

    def __init__(self, runtime: Runtime, hooks: Hooks | None = None, cache: Cache | None = None) -> None:
        self.runtime = runtime
        self.hooks: Hooks = hooks or NoHooks()
        self.cache: Cache = cache or NoCache()
        self.sessions: Sessions = NoSessions()
        self.account = Accounting(runtime)

    async def handle(self, inbound: Inbound) -> Answer:
        """The whole path of one request. Past authentication, every way out leaves one usage row."""
        tx = self.authenticate(inbound)
        if isinstance(tx, WholeAnswer):
            return tx  # 401
        self.account.begin(tx)
        try:
            tx.body = await inbound.json(self.runtime.config.server.max_body_bytes)
            await self.sessions.open(tx, inbound.session_id)
            tx.request = parse(tx.endpoint, tx.body, tx.request_id, tx.header_id, inbound.api_headers)
            tx.request.end_user = end_users.identify(inbound, tx.request.body)
            tx.alias = await self.resolve(tx)
            await self.hooks.before_request(tx)
            tx.ticket = await self.admit(tx)
            tx.dispatch = Dispatch(self.runtime.router, self.runtime.upstreams, self.runtime.obs, tx.alias, tx.request)
            tx.cached = await self.cache.lookup(tx)
            if tx.request.stream:  # relayed as it comes: after hooks and accounting run at its end
                durable = self.account.stream_durable()  # strict: a stream's end waits for its row
                if tx.cached is not None:
                    return held_to_the_end(self.cache.replay(tx, self.stream_ended), durable)
                tap = taps(self.cache.tap(tx), self.sessions.tap(tx))
                return await open_stream(tx, self.stream_ended, inbound.watch, tap, durable)
            if tx.cached is None:
                tx.outcome = await self.call(tx, inbound.watch)
            await self.hooks.after_response(tx)
            if tx.session is not None:  # a request that names a session
                await self.sessions.record(tx)
            await self.cache.store(tx)
            return await self.account.durable(self.account.answered(tx))
        except APIError as e:  # the gateway's own refusals and upstream failures alike
            return await self.account.durable(self.account.failed(tx, e))
        except asyncio.CancelledError:
            self.account.cancelled(tx)
            raise
        except Exception:  # a bug must still answer in OpenAI's shape and leave its usage row
            log.exception("unhandled error in %s request %s", tx.endpoint, tx.request_id)
            return await self.account.durable(self.account.failed(tx, internal_error()))

    # the stages -------------------------------------------------------------------------------------

    def authenticate(self, inbound: Inbound) -> Transaction | WholeAnswer:
        """The request's Transaction, or the 401 answer (no usage row: observers count it)."""
        header_id, request_id = request_ids(inbound.client_request_id)
        try:
            key = self.runtime.authenticate(inbound.authorization)
        except GatewayError as e:
            self.runtime.obs.auth_failed(e.code or "invalid_api_key")
            headers = {"x-request-id": header_id, **e.headers}
            return WholeAnswer(e.status, headers, orjson.dumps(error_body(e, inbound.endpoint)), no_bookkeeping)
        return Transaction(inbound.endpoint, request_id, header_id, key, headers={"x-request-id": header_id},
                           authorization=inbound.authorization, cache_control=inbound.cache_control)

    async def resolve(self, tx: Transaction) -> ModelAlias:
        """The alias the model name means; a partial name's resolution is said in a header and accounted
        (and, through a glob alias, forwarded) as the name it resolved to."""
        assert tx.request is not None
        alias, name = await self.runtime.resolve_name(tx.request.model, tx.key)
        if name != tx.request.model:
            tx.headers["x-gateway-model-resolved"] = name
            tx.request.model = name
        if alias.is_glob:
            check_forwarded_model(tx.request.model)
        return alias

    async def admit(self, tx: Transaction) -> Ticket | None:
        """From this replica's leases with no round trip, else by one limits-store check; 429 past a limit."""
        assert tx.alias is not None and tx.request is not None
        limits = self.runtime.limits
        plan = limits.plan(tx.key, tx.alias, tx.request)
        if plan is None:
            return None
        ticket = limits.admit_here(plan)
        if ticket is None:
            ticket = await limits.admit(plan)
        if ticket is not None:
            ticket.headers(tx.headers)
        return ticket

    async def call(self, tx: Transaction, watch: ClientWatch) -> Outcome:
        """A whole-body dispatch, unless the client hangs up first (or already did): then the upstream
        call stops (it would be billed for nothing) and the request fails with 499."""
        assert tx.dispatch is not None
        if watch.gone:
            raise client_gone()
        task = asyncio.current_task()
        assert task is not None
        watch.waiting = task
        try:
            return await tx.dispatch.run()
        except asyncio.CancelledError:
            if not watch.gone:
                raise  # cancelled from outside: the server is shutting down
            task.uncancel()
            tx.prompt_billed = True
            raise client_gone() from None
        finally:
            watch.waiting = None

    async def stream_ended(self, tx: Transaction, status: int, error_type: str | None) -> None:
        await self.hooks.after_response(tx)
        self.account.stream_ended(tx, status, error_type)

