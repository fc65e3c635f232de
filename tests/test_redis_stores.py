"""The limits store on every kind of Redis a deployment names by URL, each a real redis-server the test
starts: TLS (with a client certificate), a unix socket, an ACL user, Sentinel, a Redis Cluster given
one node; and the client's failure modes: a silent server, a restart, an unusable URL."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import redis

from proxy.config import ConfigError, parse_config
from proxy.limits import RedisBackend, StoreUnavailable
from proxy.limits.checks import Check
from proxy.redis_client import CALL_TIMEOUT_S
from tests.redis_util import RedisCluster, RedisSentinel, RedisServer
from tests.test_limits import limits_config, post


def bucket(secret: str) -> str:
    return f"{{llm-gateway}}:rpm:key:{secret.removeprefix('sk-')}"


def statuses(gw, secret: str, model: str, n: int) -> list[int]:
    return [post(gw.url, secret, model).status_code for _ in range(n)]


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 signed by it, a client certificate signed by it, and a
    second CA that signed nothing here."""
    trustme = pytest.importorskip("trustme")
    ca, stranger = trustme.CA(), trustme.CA()
    server, client = ca.issue_cert("127.0.0.1", "localhost"), ca.issue_cert("gateway-client")
    files = {name: tmp_path / f"{name}.pem" for name in
             ("ca", "stranger", "server", "server_key", "client", "client_key")}
    ca.cert_pem.write_to_path(str(files["ca"]))
    stranger.cert_pem.write_to_path(str(files["stranger"]))
    server.cert_chain_pems[0].write_to_path(str(files["server"]))
    server.private_key_pem.write_to_path(str(files["server_key"]))
    client.cert_chain_pems[0].write_to_path(str(files["client"]))
    client.private_key_pem.write_to_path(str(files["client_key"]))
    return files


def with_storage(text: str, lines: str) -> str:
    return text.replace("[storage]\n", f"[storage]\n{lines}\n", 1)


def test_redis_over_tls_with_a_ca_file_and_a_client_certificate(make_gateway, fake_openai, certs):
    """rediss:// with redis_ca_file, redis_client_cert and redis_client_key against a server that only
    speaks TLS and requires client certificates; the server is verified against the CA file given, and
    without a client certificate the server refuses the gateway (a store outage, never a crash)."""
    server = RedisServer().tls(certs["server"], certs["server_key"], certs["ca"], auth_clients="yes").start()
    try:
        text, secret, model = limits_config(fake_openai.url, server.url, key_extra="rpm = 3",
                                            limits='on_store_error = "deny"')
        tls = (f'redis_ca_file = "{certs["ca"]}"\nredis_client_cert = "{certs["client"]}"\n'
               f'redis_client_key = "{certs["client_key"]}"')
        gw = make_gateway(with_storage(text, tls))
        assert statuses(gw, secret, model, 4) == [200, 200, 200, 429]
        store = redis.Redis(port=server.port, ssl=True, ssl_ca_certs=str(certs["ca"]),
                            ssl_certfile=str(certs["client"]), ssl_keyfile=str(certs["client_key"]))
        assert store.exists(bucket(secret))

        for lines in (f'redis_ca_file = "{certs["ca"]}"',  # no client certificate: refused by the server
                      f'redis_ca_file = "{certs["stranger"]}"\nredis_client_cert = "{certs["client"]}"\n'
                      f'redis_client_key = "{certs["client_key"]}"'):  # a server the CA file does not vouch for
            text, secret, model = limits_config(fake_openai.url, server.url, key_extra="rpm = 3",
                                                limits='on_store_error = "deny"')
            r = post(make_gateway(with_storage(text, lines)).url, secret, model)
            assert r.status_code == 503 and r.json()["error"]["code"] == "limits_unavailable"
            assert not store.exists(bucket(secret))
    finally:
        server.stop()


def test_redis_over_a_unix_socket(make_gateway, fake_openai):
    workdir = Path(tempfile.mkdtemp(prefix="gw-redis-"))  # short: a unix socket path is at most 107 bytes
    server = RedisServer().unix(workdir / "redis.sock").start()
    try:
        text, secret, model = limits_config(fake_openai.url, server.url, key_extra="rpm = 2",
                                            limits='on_store_error = "deny"')
        gw = make_gateway(text)
        assert statuses(gw, secret, model, 3) == [200, 200, 429]
        assert redis.Redis(unix_socket_path=str(workdir / "redis.sock")).exists(bucket(secret))
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_an_acl_user_with_only_the_permissions_the_gateway_needs(make_gateway, fake_openai):
    """The default user is off; the gateway's user may touch only the gateway's keys and no dangerous
    command beyond INFO. Limits still count, exactly; without the password nothing is admitted."""
    server = RedisServer("--user", "default", "off", "--user", "gw", "on", ">s3cret", "~{llm-gateway}:*",
                         "+@all", "-@dangerous", "+info", "--user", "admin", "on", ">adm", "~*", "+@all").start()
    try:
        url = f"redis://gw:s3cret@127.0.0.1:{server.port}/0"
        text, secret, model = limits_config(fake_openai.url, url, key_extra="rpm = 2",
                                            limits='on_store_error = "deny"')
        gw = make_gateway(text)
        assert statuses(gw, secret, model, 3) == [200, 200, 429]
        assert redis.Redis(port=server.port, username="admin", password="adm").exists(bucket(secret))

        text, secret, model = limits_config(fake_openai.url, url.replace("gw:s3cret@", ""), key_extra="rpm = 2",
                                            limits='on_store_error = "deny"')
        r = post(make_gateway(text).url, secret, model)
        assert r.status_code == 503 and r.json()["error"]["code"] == "limits_unavailable"
    finally:
        server.stop()


def test_sentinel_names_the_master_and_a_failover_moves_the_gateway(make_gateway, fake_openai, tmp_path):
    """redis+sentinel://host:port/service: the gateway asks the Sentinel for the master and counts there;
    after a failover it follows the Sentinel to the new master."""
    sync = ("--dir", str(tmp_path), "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
            "--repl-diskless-load", "on-empty-db")  # a full sync at once, and nothing written to the checkout
    master = RedisServer(*sync).start()
    replica = RedisServer(*sync, "--replicaof", "127.0.0.1", str(master.port)).start()
    sentinel = RedisSentinel(tmp_path, master.port).start()
    try:
        url = f"redis+sentinel://127.0.0.1:{sentinel.port}/{sentinel.service}"
        text, secret, model = limits_config(fake_openai.url, url, key_extra="rpm = 6",  # its key lives ~30 s
                                            limits='on_store_error = "deny"')
        gw = make_gateway(text)
        assert statuses(gw, secret, model, 3) == [200, 200, 200]
        old = redis.Redis(port=master.port)
        assert old.exists(bucket(secret))
        assert old.execute_command("WAIT", 1, 10_000) == 1  # the replica holds the counts too

        assert sentinel.master() == master.port
        deadline = time.monotonic() + 30
        while sentinel.master() != replica.port:  # the replica needs a moment to be in sync and known
            with contextlib.suppress(redis.ResponseError):  # NOGOODSLAVE: not known yet; INPROG: under way
                redis.Redis(port=sentinel.port).execute_command("SENTINEL", "FAILOVER", sentinel.service)
            assert time.monotonic() < deadline, "the sentinel did not fail over"
            time.sleep(0.5)
        new = redis.Redis(port=replica.port)
        before = float(new.get(bucket(secret)))  # replicated from the old master
        deadline = time.monotonic() + 30
        while new.info("replication")["role"] != "master" or old.info("replication")["role"] != "slave":
            assert time.monotonic() < deadline, "the sentinel did not demote the old master"
            time.sleep(0.1)
        while post(gw.url, secret, model).status_code != 200:  # a 503 as the old master refuses a write
            assert time.monotonic() < deadline, "the gateway did not follow the failover"
            time.sleep(0.1)
        assert float(new.get(bucket(secret))) > before  # counted on the new master
    finally:
        sentinel.stop()
        replica.stop()
        master.stop()


def test_a_redis_cluster_given_one_node_that_does_not_own_the_gateways_slot(make_gateway, fake_openai, tmp_path):
    """Cluster mode is found at connect: the slot map sends every call to the node serving the gateway's
    hash tag, and the limits are exact there."""
    cluster = RedisCluster(tmp_path).start()
    try:
        slot = int(cluster.run(cluster.ports[0], "CLUSTER", "KEYSLOT", "{llm-gateway}:x"))
        owner = cluster.owner(slot)
        other = next(p for p in cluster.ports if p != owner)
        text, secret, model = limits_config(fake_openai.url, f"redis://127.0.0.1:{other}/0",
                                            key_extra="rpm = 4\ntpm = 100000", limits='on_store_error = "deny"')
        gw = make_gateway(text)
        assert statuses(gw, secret, model, 6) == [200, 200, 200, 200, 429, 429]
        assert redis.Redis(port=owner).exists(bucket(secret))
    finally:
        cluster.stop()


CHECK = Check("key", "gcra", "{llm-gateway}:rpm:key:client-test", 1000.0, 1, "requests")


def test_a_silent_server_fails_the_call_fast_and_the_next_call_connects_again():
    async def main() -> tuple[float, int]:
        accepted = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)
            await reader.read()  # never answers; returns when the client hangs up

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        backend = RedisBackend(f"redis://127.0.0.1:{port}/0")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await backend.acquire([CHECK], "r1")
        took = time.monotonic() - started
        with pytest.raises(StoreUnavailable):
            await backend.acquire([CHECK], "r2")  # a fresh connection, timed out again
        assert not await backend.ping()
        server.close()
        await backend.aclose()
        return took, len(accepted)

    took, connections = asyncio.run(main())
    assert CALL_TIMEOUT_S <= took < CALL_TIMEOUT_S * 4
    assert connections >= 2  # the timed-out connection was dropped, the next call connected again


def test_a_restarted_server_is_used_again_and_a_refused_connect_fails_fast():
    server = RedisServer().start()

    async def main() -> None:
        backend = RedisBackend(server.url)
        denial, _, _ = await backend.acquire([CHECK], "r1")
        assert denial is None
        server.stop()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await backend.acquire([CHECK], "r2")
        assert time.monotonic() - started < CALL_TIMEOUT_S * 4
        server.start()
        deadline = time.monotonic() + 10
        while True:
            try:
                denial, _, _ = await backend.acquire([CHECK], "r3")
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "the client did not reconnect"
                await asyncio.sleep(0.1)
        assert denial is None and await backend.ping()
        await backend.aclose()

    try:
        asyncio.run(main())
    finally:
        server.stop()


def config_error(storage: str) -> ConfigError:
    import tomllib

    text = f'[storage]\n{storage}\n[server]\nrequire_auth = false\n'
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(text), "/etc/gw/gateway.toml", {})
    return caught.value


@pytest.mark.parametrize(("storage", "key", "reason"), [
    ('redis_url = "http://127.0.0.1:6379"', "storage.redis_url", "must start with redis://"),
    ('redis_url = "redis://:pw@127.0.0.1:notaport/0"', "storage.redis_url", "port"),
    ('redis_url = "redis://127.0.0.1:6379/x"', "storage.redis_url", "must be a number"),
    ('redis_url = "unix://"', "storage.redis_url", "socket's path"),
    ('redis_url = "redis://127.0.0.1:6379?socket_timeout=30"', "storage.redis_url", "unknown option"),
    ('redis_url = "redis+sentinel://127.0.0.1:26379"', "storage.redis_url", "service name"),
    ('redis_url = "redis+sentinel://127.0.0.1/mymaster"', "storage.redis_url", "host:port"),
    ('redis_url = "redis://127.0.0.1:6379/0"\nredis_ca_file = "/etc/ssl/certs"', "storage.redis_ca_file",
     "only to a rediss://"),
    ('redis_url = "rediss://127.0.0.1:6379/0"\nredis_ca_file = "ca.pem"', "storage.redis_ca_file",
     "no such file: /etc/gw/ca.pem"),
    ('database_url = "postgresql://db/x?sslmode=verify"', "storage.database_url", "sslmode='verify' must be"),
    ('database_url = "postgresql://db/x?sslmode=verify-full&sslrootcert=/nope.pem"', "storage.database_url",
     "sslrootcert: no such file"),
])
def test_unusable_store_settings_fail_at_start_naming_file_key_and_reason(storage, key, reason):
    err = str(config_error(storage))
    assert err.startswith(f"/etc/gw/gateway.toml:{key}:") and reason in err
    assert ":pw@" not in err


def test_gateway_check_rejects_a_redis_url_it_cannot_use_and_accepts_rediss_and_unix(tmp_path):
    def check(url: str) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "gateway.toml"
        path.write_text(f'[server]\nrequire_auth = false\n[storage]\ndatabase_url = "sqlite:///{tmp_path}/u.db"\n'
                        f'spill_dir = "{tmp_path}/spill"\nredis_url = "{url}"\n')
        return subprocess.run([sys.executable, "-m", "proxy.cli", "check", "--config", str(path)],
                              capture_output=True, text=True, timeout=60)

    bad = check("memcached://127.0.0.1:11211")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert f"{tmp_path / 'gateway.toml'}:storage.redis_url: must start with redis://" in bad.stdout + bad.stderr
    for url in ("rediss://127.0.0.1:6380/0", "unix:///run/redis/redis.sock", "redis+sentinel://10.0.0.1:26379,"
                "10.0.0.2:26379/mymaster/2"):
        good = check(url)
        assert good.returncode == 0, good.stdout + good.stderr
