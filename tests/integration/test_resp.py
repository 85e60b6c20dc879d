"""The read path's lean Redis client (storage/resp.py) against a real Redis: replies reach
the right callers, errors are errors, and a dead or hung Redis fails calls fast."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from launcher.process import free_port
from storage.resp import RespClient, Script
from tests.support import unique_name
from web.settings import Settings


@pytest.fixture
async def resp(settings: Settings) -> AsyncIterator[RespClient]:
    client = RespClient(settings.redis_url, reply_timeout=0.5)
    try:
        yield client
    finally:
        await client.close()


async def test_concurrent_callers_each_get_their_own_reply(
    resp: RespClient, redis_client: aioredis.Redis
) -> None:
    prefix = unique_name("resp")
    await redis_client.mset({f"{prefix}:{i}": str(i) for i in range(200)})

    async def read(i: int) -> bytes:
        reply: bytes = await resp.execute("GET", f"{prefix}:{i}")
        return reply

    replies = await asyncio.gather(*(read(i) for i in range(200)))
    assert replies == [str(i).encode() for i in range(200)]
    assert await resp.execute_many([["GET", f"{prefix}:1"], ["GET", f"{prefix}:none"]]) == [
        b"1",
        None,
    ]


async def test_an_error_reply_raises_and_the_connection_stays_usable(resp: RespClient) -> None:
    with pytest.raises(ResponseError):
        await resp.execute("NOSUCHCOMMAND")
    assert await resp.execute("PING") == b"PONG"


async def test_a_script_unknown_to_redis_is_sent_in_full_once(
    resp: RespClient, redis_client: aioredis.Redis
) -> None:
    script = Script(f"return '{unique_name('script')}'")
    assert not (await redis_client.script_exists(script.sha))[0]
    first = await resp.evalsha(script, [], [])
    assert (await redis_client.script_exists(script.sha))[0]
    evals = await eval_calls(redis_client)
    assert await resp.evalsha(script, [], []) == first
    assert await eval_calls(redis_client) == evals  # by its SHA this time, not in full


async def eval_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_eval", {}).get("calls", 0))


async def test_a_connection_killed_mid_call_fails_that_call_and_the_next_call_reconnects(
    resp: RespClient, redis_client: aioredis.Redis
) -> None:
    first_id = await resp.execute("CLIENT", "ID")
    blocked = asyncio.create_task(resp.execute("BLPOP", unique_name("empty"), "5"))
    await asyncio.sleep(0.1)
    await redis_client.execute_command("CLIENT", "KILL", "ID", first_id)
    with pytest.raises(ConnectionError):
        await blocked
    assert await resp.execute("CLIENT", "ID") != first_id


async def test_a_redis_that_stops_answering_fails_calls_within_the_reply_timeout(
    resp: RespClient, redis_client: aioredis.Redis
) -> None:
    await resp.execute("PING")
    await redis_client.execute_command("CLIENT", "PAUSE", "1500", "ALL")
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await resp.execute("PING")
    assert time.monotonic() - started < 1.4
    await asyncio.sleep(1.2)
    assert await resp.execute("PING") == b"PONG"


async def test_a_redis_that_is_not_there_fails_fast() -> None:
    client = RespClient(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(OSError):
        await client.execute("PING")


async def test_the_database_in_the_url_is_selected(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    key = unique_name("db")
    other = aioredis.Redis.from_url(settings.redis_url.rsplit("/", 1)[0] + "/3")
    try:
        await other.set(key, "in db 3", ex=60)
        client = RespClient(settings.redis_url.rsplit("/", 1)[0] + "/3")
        try:
            assert await client.execute("GET", key) == b"in db 3"
        finally:
            await client.close()
        assert await redis_client.get(key) is None
    finally:
        await other.aclose()


class CountingTransport:
    """The client's transport, counting the writes that go through it."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.transport.write(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self.transport, name)


async def test_calls_made_in_one_turn_of_the_loop_reach_redis_in_one_write(
    resp: RespClient, redis_client: aioredis.Redis
) -> None:
    prefix = unique_name("turn")
    await redis_client.mset({f"{prefix}:{i}": str(i) for i in range(50)})
    await resp.execute("PING")
    protocol = resp._protocol
    assert protocol is not None and protocol.transport is not None
    counting = CountingTransport(protocol.transport)
    protocol.transport = counting  # type: ignore[assignment]

    replies = await asyncio.gather(*(resp.execute("GET", f"{prefix}:{i}") for i in range(50)))

    assert replies == [str(i).encode() for i in range(50)]
    assert counting.writes == 1
    assert await resp.execute("GET", f"{prefix}:7") == b"7"
    assert counting.writes == 2
