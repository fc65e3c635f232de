"""The `gateway` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from proxy.config import Config, ConfigError, load_config
from proxy.upstream import make_adapter


def _config_path(given: str | None) -> str:
    return given or os.environ.get("GATEWAY_CONFIG") or "gateway.toml"


def _load(path: str) -> Config:
    config = load_config(path)
    for provider in config.providers.values():
        make_adapter(provider, path)  # a kind this build cannot serve is a config error too
    return config


def cmd_serve(args: argparse.Namespace) -> int:
    import functools

    import uvicorn

    from proxy.connection_limits import ConnectionLimits, ensure_fd_budget
    from proxy.uvicorn_protocol import GatewayHttpProtocol

    path = _config_path(args.config)
    config = _load(path)
    if config.server.require_auth and not config.keys:
        logging.getLogger("gateway").info(
            "%s defines no [[keys]]: gateway keys come from the admin API (/admin/keys, `gateway keys`)", path)
    ensure_fd_budget(config.server.max_connections)  # workers inherit the raised limit
    os.environ["GATEWAY_CONFIG"] = os.path.abspath(path)  # worker processes load the same file
    port = args.port if args.port is not None else config.server.port
    os.environ["GATEWAY_PORT"] = str(port)  # where each worker records its pid for `gateway reload`
    metrics_dir, created = None, False
    factory = "proxy.app:app_from_env"
    if args.workers > 1:  # workers publish metric snapshots here; whichever answers /metrics sums them
        from proxy.observability.aggregate import prepare_dir
        from proxy.parent_death import SUPERVISOR_ENV

        metrics_dir, created = prepare_dir()
        os.environ[SUPERVISOR_ENV] = str(os.getpid())  # workers end if this process is killed (proxy.parent_death)
        factory = "proxy.parent_death:worker_app"
    try:
        uvicorn.run(
            factory,
            factory=True,
            host=args.host or config.server.host,
            port=port,
            workers=args.workers,
            loop="uvloop",
            # httptools, head and body in one send, and [server]'s connection limits (read at start:
            # `gateway reload` does not change them). A partial of module-level names: workers unpickle it.
            http=functools.partial(GatewayHttpProtocol, limits=ConnectionLimits.of(config.server)),
            access_log=False,  # the gateway writes its own JSON access log ([observability] access_log)
            proxy_headers=False,  # nothing here reads the client address: skip X-Forwarded-* rewriting per request
            log_level="info",
            timeout_graceful_shutdown=30,
        )
    finally:
        if created and metrics_dir:
            from proxy.observability.aggregate import remove_dir

            remove_dir(metrics_dir)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    path = _config_path(args.config)
    config = _load(path)
    print(f"{path}: ok")
    print("providers:")
    for p in config.providers.values():
        secret = "api_key set" if p.api_key else "no api_key"
        print(f"  {p.name}: kind={p.kind} base_url={p.base_url} ({secret})")
    print("models:")
    for m in config.models.values():
        targets = ", ".join(f"{t.provider}/{t.model}" for t in m.targets)
        print(f"  {m.name} -> {targets}")
    print(f"keys: {', '.join(k.name for k in config.keys) or '(none)'}; require_auth={config.server.require_auth}")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from proxy.storage import LATEST, open_store, redact

    config = load_config(_config_path(args.config))
    store = open_store(config.storage.database_url)

    async def run() -> list[int]:
        try:
            return await store.migrate()
        finally:
            await store.close()

    try:
        applied = asyncio.run(run())
    except Exception as e:
        print(f"error: cannot migrate {redact(store.url)}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    done = f"applied {', '.join(map(str, applied))}" if applied else "nothing to apply"
    print(f"{redact(store.url)}: schema (usage_log, api_keys) at version {LATEST} ({done})")
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    from proxy.errors import GatewayError
    from proxy.storage import open_store, redact
    from proxy.usage_api import build_report, format_table, since_range

    config = load_config(_config_path(args.config))
    try:
        start, end = since_range(args.since, args.until)
    except GatewayError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2
    store = open_store(config.storage.database_url)

    async def run() -> dict:
        try:
            return await build_report(store, start, end, args.by)
        finally:
            await store.close()

    try:
        report = asyncio.run(run())
    except Exception as e:
        print(f"error: cannot read {redact(store.url)}: {type(e).__name__}: {e} (run `gateway migrate` first?)",
              file=sys.stderr)
        return 1
    print(format_table(report))
    return 0


def cmd_prices_refresh(args: argparse.Namespace) -> int:
    from proxy.prices import fetch_openrouter, unpriced_targets, write_prices

    path = _config_path(args.config)
    config = load_config(path) if args.config or not args.write else None
    target = args.write or (config.storage.prices_file if config else "")
    if not target:
        print("error: no prices file: pass --write FILE or set [storage] prices_file", file=sys.stderr)
        return 2
    try:
        prices = fetch_openrouter(args.base_url)
    except Exception as e:
        print(f"error: cannot fetch prices from {args.base_url}: {e}", file=sys.stderr)
        return 1
    write_prices(target, prices, args.source)
    print(f"wrote {len(prices)} model prices from {args.source} to {target}")
    if config is not None and os.path.abspath(target) == os.path.abspath(config.storage.prices_file or "-"):
        missing = unpriced_targets(load_config(path))
        print("still without a price: " + ", ".join(missing) if missing else "every target has a price")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="llm-gateway: an OpenAI-compatible reverse proxy for LLM APIs.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config_help = "config file (default: $GATEWAY_CONFIG, else ./gateway.toml)"

    serve = sub.add_parser("serve", help="run the gateway", description="Run the gateway HTTP server.")
    serve.add_argument("--config", metavar="PATH", help=config_help)
    # Each default may come from the environment (a container sets GATEWAY_HOST=0.0.0.0, say); argparse
    # converts a string default with `type`, so a bad value is the same usage error as a bad flag.
    env = os.environ.get
    serve.add_argument("--host", metavar="H", default=env("GATEWAY_HOST") or None,
                       help="bind address (default: $GATEWAY_HOST, else [server] host, else 127.0.0.1)")
    serve.add_argument("--port", metavar="P", type=int, default=env("GATEWAY_PORT") or None,
                       help="bind port (default: $GATEWAY_PORT, else [server] port, else 8080)")
    serve.add_argument("--workers", metavar="N", type=int, default=env("GATEWAY_WORKERS") or 1,
                       help="worker processes (default: $GATEWAY_WORKERS, else 1); a worker whose "
                            "supervisor dies, even by SIGKILL, drains and exits")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check", help="validate the config and print what it resolves to",
                           description="Validate the config; print providers and model aliases (never a secret).")
    check.add_argument("--config", metavar="PATH", help=config_help)
    check.set_defaults(func=cmd_check)

    migrate = sub.add_parser("migrate", help="create or upgrade the usage database schema",
                             description="Apply the usage database migrations ([storage] database_url).")
    migrate.add_argument("--config", metavar="PATH", help=config_help)
    migrate.set_defaults(func=cmd_migrate)

    usage = sub.add_parser("usage", help="print usage totals as a table",
                           description="Usage totals per group from the usage database (same as GET /v1/usage).")
    usage.add_argument("--config", metavar="PATH", help=config_help)
    usage.add_argument("--since", default="24h", metavar="T",
                       help="start: a duration back from now (30m, 24h, 7d, 2w) or an ISO time (default: 24h)")
    usage.add_argument("--until", metavar="T", help="end: same forms as --since (default: now)")
    usage.add_argument("--by", default="model", choices=["model", "key", "provider", "day", "hour", "end_user"],
                       help="group rows by (default: model)")
    usage.set_defaults(func=cmd_usage)

    prices = sub.add_parser("prices", help="model prices", description="Model price files.")
    prices_sub = prices.add_subparsers(dest="prices_command", required=True, metavar="ACTION")
    refresh = prices_sub.add_parser("refresh", help="fetch public model prices into a local prices file",
                                    description="Fetch a public model list with prices into a local prices file; "
                                    "targets without explicit prices use it ([storage] prices_file).")
    refresh.add_argument("--from", dest="source", required=True, choices=["openrouter"], help="price source")
    refresh.add_argument("--write", metavar="FILE", help="prices file to write (default: [storage] prices_file)")
    refresh.add_argument("--base-url", default="https://openrouter.ai", metavar="URL",
                         help="source base URL (default: https://openrouter.ai)")
    refresh.add_argument("--config", metavar="PATH", help=config_help)
    refresh.set_defaults(func=cmd_prices_refresh)

    reload_cmd = sub.add_parser("reload", help="re-read the config in running gateways (SIGHUP)",
                                description="Validate the config, then send SIGHUP to every gateway process "
                                "serving the port, which re-reads it without dropping requests.")
    reload_cmd.add_argument("--config", metavar="PATH", help=config_help)
    reload_cmd.add_argument("--port", metavar="P", type=int, help="the gateway's port (default: [server] port)")
    reload_cmd.set_defaults(func=cmd_reload)

    keys = sub.add_parser("keys", help="manage gateway keys stored in the database",
                          description="Create, list, update and revoke managed gateway keys ([storage] database_url). "
                          "Running gateways pick changes up within about a second.")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    for action, text in (("create", "create a key and print its secret (shown once)"),
                         ("update", "change a key's settings"), ("revoke", "revoke a key"), ("list", "list keys")):
        cmd = keys_sub.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".")
        cmd.add_argument("--config", metavar="PATH", help=config_help)
        if action != "list":
            cmd.add_argument("name", help="the key's name")
        if action in ("create", "update"):
            cmd.add_argument("--models", metavar="GLOBS", help="comma-separated aliases or globs (default: *)")
            cmd.add_argument("--rpm", type=int, help="requests per minute")
            cmd.add_argument("--tpm", type=int, help="tokens per minute")
            cmd.add_argument("--max-parallel", type=int, help="concurrent requests")
            cmd.add_argument("--budget-usd", type=float, help="spend limit in USD per budget period")
            cmd.add_argument("--budget-period", choices=["day", "month", "total"], help="default: month")
            cmd.add_argument("--expires-at", metavar="ISO", help="expiry date-time (UTC if no offset)")
            cmd.add_argument("--metadata", metavar="JSON", help="free-form JSON object")
        cmd.set_defaults(func=cmd_keys)

    cache = sub.add_parser("cache", help="response cache size, or clear it",
                           description="Ask a running gateway's admin API (GET or DELETE /admin/cache, with "
                           "[server] admin_key) for the response cache's size, or to drop its entries.")
    cache.add_argument("cache_command", choices=["stats", "clear"], metavar="ACTION", help="stats | clear")
    cache.add_argument("--config", metavar="PATH", help=config_help)
    cache.add_argument("--alias", metavar="NAME", help="clear only this alias's entries")
    cache.add_argument("--url", metavar="URL", help="the gateway (default: http://[server] host:port)")
    cache.set_defaults(func=cmd_cache)
    return parser


def cmd_cache(args: argparse.Namespace) -> int:
    import httpx

    config = load_config(_config_path(args.config))
    if not config.server.admin_key:
        print("error: gateway cache needs [server] admin_key (the admin API)", file=sys.stderr)
        return 1
    host = config.server.host if config.server.host not in ("0.0.0.0", "::") else "127.0.0.1"
    url = (args.url or f"http://{host}:{config.server.port}").rstrip("/") + "/admin/cache"
    method = "DELETE" if args.cache_command == "clear" else "GET"
    params = {"alias": args.alias} if args.alias else None
    try:
        r = httpx.request(method, url, params=params, timeout=30,
                          headers={"authorization": f"Bearer {config.server.admin_key}"})
    except httpx.HTTPError as e:
        print(f"error: cannot reach the gateway at {url}: {e}", file=sys.stderr)
        return 1
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    if r.status_code != 200:
        print(f"error: {(body.get('error') or {}).get('message', r.status_code)}", file=sys.stderr)
        return 1
    if args.cache_command == "clear":
        print(f"deleted {body['deleted']} entries" + (f" of alias {args.alias}" if args.alias else ""))
    else:
        limit = f" of {body['max_bytes']}" if body.get("max_bytes") else ""
        print(f"backend {body['backend']} ({body['mode']}): {body['entries']} entries, {body['bytes']} bytes{limit}")
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    from proxy.reload import signal_workers

    path = _config_path(args.config)
    config = _load(path)  # refuse an invalid file here already, with file:key: reason
    port = args.port if args.port is not None else config.server.port
    pids = signal_workers(port)
    if not pids:
        print(f"error: no running gateway found for port {port}", file=sys.stderr)
        return 1
    print(f"sent SIGHUP to {len(pids)} gateway process(es) on port {port}: {', '.join(map(str, pids))}")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    import asyncio

    import orjson

    from proxy.errors import GatewayError
    from proxy.keystore import KeyStore, check_name, validate_settings

    config = load_config(_config_path(args.config))
    settings: dict = {}
    if args.keys_command in ("create", "update"):
        flags = {"models": args.models.split(",") if args.models else None, "rpm": args.rpm, "tpm": args.tpm,
                 "max_parallel": args.max_parallel, "budget_usd": args.budget_usd,
                 "budget_period": args.budget_period, "expires_at": args.expires_at,
                 "metadata": orjson.loads(args.metadata) if args.metadata else None}
        settings = {k: v for k, v in flags.items() if v is not None}

    async def run() -> int:
        store = KeyStore(config.storage.database_url)
        try:
            if args.keys_command == "list":
                for k in config.keys:
                    print(f"{k.name}\tconfig\tmodels={','.join(k.models)}")
                for stored in await store.all():
                    state = f"revoked {stored.revoked_at}" if stored.revoked_at else "active"
                    print(f"{stored.name}\tdb\t{stored.key_prefix}...\t{state}\t{orjson.dumps(stored.settings).decode()}")
                return 0
            name = check_name(args.name)
            if args.keys_command == "create":
                change = validate_settings(settings, partial=False)
                secret, _ = await store.create(name, change, {k.name for k in config.keys})
                print(secret)
            elif args.keys_command == "update":
                change = validate_settings(settings, partial=True)
                await store.update(name, change)
                print(f"updated {name}")
            else:
                change = {}
                await store.revoke(name)
                print(f"revoked {name}")
            await _audit(config.storage.database_url, f"key.{args.keys_command}d", name, change)
            return 0
        except GatewayError as e:
            print(f"error: {e.message}", file=sys.stderr)
            return 1
        finally:
            await store.close()

    return asyncio.run(run())


async def _audit(database_url: str, action: str, name: str, change: dict) -> None:
    """The audit log's row for a key changed from the command line (principal ``cli``)."""
    from proxy.console.audit import AuditLog
    from proxy.console.db import ConsoleDB

    db = ConsoleDB(database_url)
    try:
        await AuditLog(db).record("cli", action, name, change, None)
    finally:
        await db.close()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no per-request line from the client library
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
