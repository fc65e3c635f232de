"""The usage ledger on Postgres over TLS: a throwaway server with ``ssl = on`` that refuses every
connection without TLS, certificates made by trustme, and ``sslmode``/``sslrootcert`` in database_url."""

from __future__ import annotations

import asyncio
import os
import pwd
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.storage import open_store
from tests.pg import ThrowawayPostgres, ledger_config, rows_by_id, unavailable


class TlsPostgres(ThrowawayPostgres):
    """A throwaway Postgres that speaks only TLS on 127.0.0.1, with a server certificate signed by ``ca``."""

    def __init__(self, ca: object) -> None:
        super().__init__()
        cert = ca.issue_cert("127.0.0.1", "localhost")  # type: ignore[attr-defined]
        self.cert, self.key = self.root / "server.crt", self.root / "server.key"
        cert.cert_chain_pems[0].write_to_path(str(self.cert))
        cert.private_key_pem.write_to_path(str(self.key))
        os.chmod(self.key, 0o600)  # Postgres refuses a key others can read
        if self.prefix:  # runs as the postgres user: it must own the key
            user = pwd.getpwnam("postgres")
            for path in (self.cert, self.key):
                os.chown(path, user.pw_uid, user.pw_gid)

    def init(self) -> TlsPostgres:
        super().init()
        hba = self.data / "pg_hba.conf"
        hba.write_text("hostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n"
                       "local all all trust\n")
        return self

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c ssl=on "
                   f"-c ssl_cert_file={self.cert} -c ssl_key_file={self.key}")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "log"),
                  "-w", "-t", "30", "start")


@pytest.fixture(scope="module")
def tls_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TlsPostgres, Path, Path]]:
    """The server, the CA file that vouches for it, and a CA file of a stranger."""
    trustme = pytest.importorskip("trustme")
    ca, stranger = trustme.CA(), trustme.CA()
    certs = tmp_path_factory.mktemp("pg-certs")
    ca.cert_pem.write_to_path(str(certs / "ca.pem"))
    stranger.cert_pem.write_to_path(str(certs / "stranger.pem"))
    server = TlsPostgres(ca)
    try:
        server.init().start()
    except (RuntimeError, OSError) as e:
        server.destroy()
        unavailable(f"cannot start a throwaway Postgres with TLS: {e}")
    yield server, certs / "ca.pem", certs / "stranger.pem"
    server.destroy()


def fetch(url: str) -> list:
    async def run() -> list:
        store = open_store(url)
        try:
            return await store.fetch_all()
        finally:
            await store.close()

    return asyncio.run(run())


def test_the_ledger_writes_over_tls_with_sslmode_verify_full(make_gateway, fake_openai, tls_pg, tmp_path):
    server, ca, _ = tls_pg
    url = f"{server.url}?sslmode=verify-full&sslrootcert={ca}"
    gw = make_gateway(ledger_config(fake_openai.url, url, storage=f'spill_dir = "{tmp_path / "spill"}"'))
    request_id = f"tls-{uuid.uuid4().hex[:8]}"
    gw.client().with_options(default_headers={"x-request-id": request_id}).chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "over TLS"}])
    rows = rows_by_id(url, 1, timeout=20)  # the server rejects any connection without TLS: this row came over it
    assert rows[request_id]["status"] == 200


def test_sslmode_require_encrypts_and_verify_full_refuses_a_server_its_ca_does_not_vouch_for(tls_pg):
    server, ca, stranger = tls_pg
    assert isinstance(fetch(f"{server.url}?sslmode=require"), list)  # encrypted, not verified
    with pytest.raises(Exception, match="(?i)certificate"):
        fetch(f"{server.url}?sslmode=verify-full&sslrootcert={stranger}")
    with pytest.raises(Exception, match="(?i)pg_hba|rejects|reject"):
        fetch(f"{server.url}?sslmode=disable")  # the server's hostnossl reject: proof the first two used TLS
