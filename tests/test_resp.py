"""The limits' Redis client against a real redis-server: pipelining, split replies, NOSCRIPT recovery,
reconnects after the server restarts."""

from __future__ import annotations

import asyncio

import pytest

from proxy.resp import MiniRedis, RedisError, _Incomplete, _parse, pack
from tests.redis_util import RedisServer


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
