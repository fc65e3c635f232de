"""The pass-through endpoints (images, audio, moderations, rerank, files, batches): the request pipeline's
own stages, with a parse and a dispatch of their own. Read proxy.pipeline first.

    stage           what it does here
    authenticate    Pipeline.authenticate: the gateway key; 401 without a usage row
    parse           a JSON body (bounded by max_body_mb), or a multipart upload read up to its `model`
                    field (proxy.passthrough.multipart), or nothing (GET, DELETE)
    resolve         Pipeline.resolve: the model field, or for files and batches [files] model
    before hooks    Pipeline.hooks
    limits          Pipeline.admit: rpm, tpm (the prompt text estimated), max_parallel, budget
    dispatch        proxy.passthrough.dispatch: the alias's OpenAI-kind targets, only `model` rewritten
                    proxy.passthrough.relay: bytes answers (audio, file content) relayed as they come
    after hooks     Pipeline.hooks
    account         Pipeline.account: the usage row, endpoint named, media units priced (proxy.cost)
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Protocol

from adapters.errors import APIError
from proxy.client_request import ClientRequest
from proxy.config import FILES_KINDS
from proxy.errors import GatewayError, internal_error
from proxy.passthrough.dispatch import Passed, PassthroughDispatch
from proxy.passthrough.multipart import Upload
from proxy.passthrough.relay import open_relay
from proxy.passthrough.specs import Spec
from proxy.passthrough.usage import asked_units, estimate
from proxy.pipeline.transaction import Answer, Inbound, Transaction, WholeAnswer
from proxy.pipeline.validate import check_model
from proxy.settings import Config

if TYPE_CHECKING:
    from proxy.pipeline import Pipeline

__all__ = ["PassthroughInbound", "files_alias", "handle"]

log = logging.getLogger("gateway")


class PassthroughInbound(Inbound, Protocol):
    """An Inbound that can also hand over its raw body (uploads) and names its path id and query."""

    ident: str | None  # the {id} of the path, if any
    query: str
    content_type: str | None

    async def upload(self, limit: int, want_model: bool) -> Upload: ...


def files_alias(config: Config) -> str | None:
    """The alias that serves files and batches: [files] model, else the first with an OpenAI-kind target."""
    if config.files.model:
        return config.files.model
    for alias in config.models.values():
        if not alias.is_glob and any(config.providers[t.provider].kind in FILES_KINDS for t in alias.targets
                                     if t.provider in config.providers):
            return alias.name
    return None


async def handle(pipeline: Pipeline, inbound: PassthroughInbound, spec: Spec) -> Answer:
    """The whole path of one pass-through request. Past authentication, every way out leaves one usage row."""
    tx = pipeline.authenticate(inbound)
    if isinstance(tx, WholeAnswer):
        return tx  # 401
    pipeline.account.begin(tx)
    try:
        upload = await parse(pipeline, inbound, spec, tx)
        tx.alias = await pipeline.resolve(tx)
        await pipeline.hooks.before_request(tx)
        tx.ticket = await pipeline.admit(tx)
        runtime = pipeline.runtime
        assert tx.request is not None
        tx.dispatch = PassthroughDispatch(runtime.router, runtime.upstreams, runtime.obs, tx.alias, tx.request,
                                          spec, inbound.ident, inbound.query, upload, inbound.content_type)
        tx.outcome = outcome = await pipeline.call(tx, inbound.watch)
        if isinstance(outcome, Passed) and outcome.response is not None:  # relayed as it comes
            return open_relay(tx, outcome, pipeline.stream_ended)
        await pipeline.hooks.after_response(tx)
        return await pipeline.account.durable(pipeline.account.answered(tx))
    except APIError as e:
        return await pipeline.account.durable(pipeline.account.failed(tx, e))
    except asyncio.CancelledError:
        pipeline.account.cancelled(tx)
        raise
    except Exception:
        log.exception("unhandled error in %s request %s", tx.endpoint, tx.request_id)
        return await pipeline.account.durable(pipeline.account.failed(tx, internal_error()))


async def parse(pipeline: Pipeline, inbound: PassthroughInbound, spec: Spec, tx: Transaction) -> Upload | None:
    """The parse stage: the body as far as routing needs it, into ``tx.body`` and ``tx.request``."""
    limit = pipeline.runtime.config.server.max_body_bytes
    upload: Upload | None = None
    body: dict[str, Any] = {}
    if spec.body == "json":
        body = await inbound.json(limit)
    elif spec.body == "multipart":
        upload = await inbound.upload(limit, spec.routed_by == "model")
        body = dict(upload.fields)
    tx.body = body
    if spec.routed_by == "model":
        model = check_model(body.get("model"))
    else:
        name = files_alias(pipeline.runtime.config)
        if name is None:
            raise GatewayError(400, f"{spec.method} /v1{spec.path} needs a model alias with an openai or azure "
                               "target (see [files] model in gateway.toml); none is configured.",
                               code="unsupported_endpoint")
        model = name
    stream = spec.raw or body.get("stream") in (True, "true")
    images, characters = asked_units(spec.name, body)
    tx.request = ClientRequest(spec.name, model, body, tx.request_id, tx.header_id, stream,
                               prompt_estimate=estimate(body) if spec.body == "json" else 0, images=images,
                               characters=characters)
    return upload
