"""The limits' Redis client against a real redis-server: pipelining, split replies, NOSCRIPT recovery,
reconnects after the server restarts."""

from __future__ import annotations

import asyncio
import time

import pytest

from proxy import redis_client as resp
from proxy.redis_client import Encoded, MiniRedis, Packer, RedisError, _Incomplete, _parse
from tests.redis_util import RedisCluster, RedisServer


def pack(args: tuple) -> bytes:
    return Packer().pack(args)


def test_parse_every_reply_type_and_incomplete_input():
    wire = b"+OK\r\n-ERR bad\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*2\r\n$1\r\nx\r\n:7\r\n"
    values, pos = [], 0
    while pos < len(wire):
        value, pos = _parse(wire, pos)
        values.append(value)
    assert values[0] == b"OK" and isinstance(values[1], RedisError) and str(values[1]) == "ERR bad"
    assert values[2:] == [42, b"abc", None, [b"x", 7]]
    for cut in range(1, len(b"*2\r\n$1\r\nx\r\n:7\r\n")):
        with pytest.raises(_Incomplete):
            _parse(b"*2\r\n$1\r\nx\r\n:7\r\n"[:cut], 0)
    assert pack(("SET", "k", 1.5)) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\n1.5\r\n"


def test_arguments_packed_once_are_sent_as_if_given_one_by_one():
    run = Encoded("gcra", "1000", "0.0")
    assert pack(("EVALSHA", "abc", run, b"r1", run, "x" * 300)) == pack(
        ("EVALSHA", "abc", "gcra", "1000", "0.0", b"r1", "gcra", "1000", "0.0", "x" * 300))
    assert pack(tuple(range(300))).startswith(b"*300\r\n$1\r\n0\r\n")  # past the precomputed heads


def test_pack_encodes_str_bytes_and_numbers_alike_and_its_memory_stays_bounded(monkeypatch):
    monkeypatch.setattr(resp, "BULK_CACHE_MAX", 8)
    packer = Packer()
    expected = b"*4\r\n$4\r\nEVAL\r\n$7\r\nk:caf\xc3\xa9\r\n$2\r\n27\r\n$3\r\n0.5\r\n"  # byte lengths
    for _ in range(2):  # the second time from memory
        assert packer.pack(("EVAL", "k:caf\u00e9", 27, 0.5)) == expected
        assert packer.pack((b"EVAL", "k:caf\u00e9".encode(), b"27", "0.5")) == expected
    assert "k:caf\u00e9" in packer.bulks
    for i in range(50):  # a stream of distinct strings never grows it past its bound
        assert packer.pack((f"key-{i}",)) == b"*1\r\n$%d\r\nkey-%d\r\n" % (len(str(i)) + 4, i)
        assert len(packer.bulks) <= 8


def test_pipelined_calls_scripts_and_reconnect():
    server = RedisServer().start()

    async def run() -> None:
        client = MiniRedis(server.url)
        replies = await asyncio.gather(*(client.call("INCR", "n") for _ in range(200)))
        assert sorted(replies) == list(range(1, 201))  # in-order matching under pipelining
        script = "return {KEYS[1], ARGV[1], 3}"
        assert await client.run_script(script, ["k"], ["v"]) == [b"k", b"v", 3]
        await client.call("SCRIPT", "FLUSH")
        assert await client.run_script(script, ["k"], ["w"]) == [b"k", b"w", 3]  # NOSCRIPT -> EVAL
        with pytest.raises(RedisError):
            await client.call("NOSUCHCOMMAND")
        server.stop()
        with pytest.raises(OSError):
            await client.call("PING")
        server.start()
        assert await client.call("PING") == b"PONG"
        await client.aclose()

    try:
        asyncio.run(run())
    finally:
        server.stop()


def test_a_silent_server_times_the_call_out_and_drops_the_connection():
    from proxy.redis_client import CALL_TIMEOUT_S

    async def main() -> tuple[float, int]:
        accepted = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)
            await reader.read()  # never answers; returns when the client hangs up

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = MiniRedis(f"redis://127.0.0.1:{port}/0")
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await client.call("PING")
        took = time.monotonic() - started
        with pytest.raises(TimeoutError):
            await client.call("PING")  # a fresh connection, timed out again
        server.close()
        await client.aclose()
        return took, len(accepted)

    took, connections = asyncio.run(main())
    assert CALL_TIMEOUT_S <= took < CALL_TIMEOUT_S * 3
    assert connections == 2  # the timed-out connection was dropped, the next call reconnected


def test_redis_cluster_moved_and_ask(tmp_path):
    """Given any node of a cluster, the client follows MOVED to the node serving the gateway's hash
    slot and stays there; while that slot migrates, ASK sends the one command to the importing node."""
    cluster = RedisCluster(tmp_path).start()
    try:
        slot = int(cluster.run(cluster.ports[0], "CLUSTER", "KEYSLOT", "{llm-gateway}:x"))
        owner = cluster.owner(slot)
        other = next(p for p in cluster.ports if p != owner)
        script = "return redis.call('INCR', KEYS[1])"

        async def moved() -> tuple[list[int], int]:
            client = MiniRedis(f"redis://127.0.0.1:{other}/0")
            got = [await client.run_script(script, ["{llm-gateway}:n"], []) for _ in range(3)]
            port = client.port
            await client.aclose()
            return got, port

        got, port = asyncio.run(moved())
        assert got == [1, 2, 3] and port == owner

        owner_id = cluster.run(owner, "CLUSTER", "MYID")
        other_id = cluster.run(other, "CLUSTER", "MYID")
        assert cluster.run(other, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", owner_id) == "OK"
        assert cluster.run(owner, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", other_id) == "OK"

        async def asked() -> tuple[int, int, int]:
            client = MiniRedis(f"redis://127.0.0.1:{owner}/0")
            existing = await client.run_script(script, ["{llm-gateway}:n"], [])  # still on the owner
            fresh = await client.run_script(script, ["{llm-gateway}:fresh"], [])  # not there: ASK
            port = client.port
            await client.aclose()
            return existing, fresh, port

        existing, fresh, port = asyncio.run(asked())
        assert (existing, fresh, port) == (4, 1, owner)  # ASK does not move the client
        assert cluster.run(other, "CLUSTER", "COUNTKEYSINSLOT", str(slot)) == "1"  # the new key went to the importer
    finally:
        cluster.stop()


def test_a_move_during_a_connect_ends_on_the_new_node():
    """A MOVED that arrives while the client is still connecting to the old node: the connection
    finishes, is dropped, and commands go to the node the MOVED named."""
    old, new = RedisServer().start(), RedisServer().start()
    try:
        async def main() -> tuple[int, int]:
            client = MiniRedis(old.url)
            ready = asyncio.ensure_future(client._ready())  # a connect to the old node, under way
            await asyncio.sleep(0)
            client._move("127.0.0.1", new.port)
            await ready
            await client.call("SET", "{llm-gateway}:moved", "1")
            port = client.protocol.address[1] if client.protocol else 0
            await client.aclose()
            return port, client.port

        assert asyncio.run(main()) == (new.port, new.port)
        import redis

        assert redis.Redis(port=new.port).get("{llm-gateway}:moved") == b"1"
        assert redis.Redis(port=old.port).get("{llm-gateway}:moved") is None
    finally:
        old.stop()
        new.stop()
