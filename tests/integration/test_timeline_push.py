"""The lean push script (storage/redis_store.py `_PUSH`) against the general one (`_ADD`): the
fanout worker's pushes skip the steps that cannot change a set, and must leave every set
exactly as the general script does, marker, trims and TTLs included."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from domain.ids import encode_member
from storage.redis_store import _ADD, SENTINEL, TRIMMED, RedisKeys, RedisTimelineStore
from storage.resp import RespClient, Script
from web.settings import Settings

CAP = 5
TTL = 3600

# Ids far apart, so pushes can land below, between and above what a set holds.
OLD, MID, NEW = 1_000, 5_000, 9_000


def ids(start: int, count: int) -> list[int]:
    return [start + 10 * i for i in range(count)]


# What a set holds before the push, lowest first (the members as the sets store them).
STATES: dict[str, list[str]] = {
    "missing": [],
    "sentinel only": [SENTINEL],
    "below its cap": [SENTINEL, *map(encode_member, ids(MID, 2))],
    "one below its cap": [SENTINEL, *map(encode_member, ids(MID, CAP - 1))],
    "at its cap": [SENTINEL, *map(encode_member, ids(MID, CAP))],
    "marked at its cap": [SENTINEL, TRIMMED, *map(encode_member, ids(MID, CAP))],
    "marked below its cap": [SENTINEL, TRIMMED, *map(encode_member, ids(MID, 2))],
    "marked and empty": [SENTINEL, TRIMMED],
    "without sentinel": list(map(encode_member, ids(MID, 3))),
    "without sentinel above its cap": list(map(encode_member, ids(MID, CAP + 2))),
    "marked without sentinel": [TRIMMED, *map(encode_member, ids(MID, 3))],
}

PUSHES: dict[str, list[int]] = {
    "a newer tweet": [NEW],
    "an older tweet": [OLD],
    "one already there": [MID],
    "older and newer": [OLD, NEW + 1],
    "more than the cap": ids(NEW, CAP + 2),
    "between the entries": [MID + 5],
}


@pytest.fixture
def keys(settings: Settings) -> RedisKeys:
    return RedisKeys(f"{settings.redis_prefix}push-{secrets.token_hex(3)}:")


@pytest.fixture
async def store(settings: Settings, keys: RedisKeys) -> AsyncIterator[RedisTimelineStore]:
    client = aioredis.Redis.from_url(settings.redis_url)
    reads = RespClient(settings.redis_url)
    try:
        yield RedisTimelineStore(client, reads, keys, max_entries=CAP, ttl=TTL)
    finally:
        async for key in client.scan_iter(f"{keys.prefix}*"):
            await client.delete(key)
        await reads.close()
        await client.aclose()


async def state_of(client: aioredis.Redis, key: str) -> tuple[list[str], bool]:
    members = [m.decode() for m in await client.zrange(key, 0, -1)]
    return members, await client.ttl(key) > 0


async def fill(client: aioredis.Redis, key: str, members: list[str], *, with_ttl: bool) -> None:
    await client.delete(key)
    if members:
        await client.zadd(key, dict.fromkeys(members, 0))
        if with_ttl:
            await client.expire(key, TTL)


async def test_the_lean_push_leaves_every_set_as_the_general_script_does(
    store: RedisTimelineStore, keys: RedisKeys, redis_client: aioredis.Redis
) -> None:
    general = redis_client.register_script(_ADD.body)
    cases = list(itertools.product(STATES.items(), PUSHES.items(), (False, True), (False, True)))
    for (state, members), (push, tweet_ids), author_list, had_ttl in cases:
        case = (state, push, "author list" if author_list else "timeline", had_ttl)
        owner = 1
        key = (keys.author_tweets if author_list else keys.timeline)(owner)
        expected_key = key + ":expected"
        await fill(redis_client, expected_key, members, with_ttl=had_ttl)
        await fill(redis_client, key, members, with_ttl=had_ttl)
        await general(
            keys=[expected_key],
            args=[CAP, "", "", TTL, *map(encode_member, tweet_ids)],
        )
        if author_list:
            await store.push_many(authors=[([owner], tweet_ids)])
        else:
            await store.push_many(timelines=[([owner], tweet_ids)])
        assert await state_of(redis_client, key) == await state_of(redis_client, expected_key), case


async def test_one_call_pushes_each_group_into_its_own_keys_across_calls(
    store: RedisTimelineStore, keys: RedisKeys, redis_client: aioredis.Redis
) -> None:
    groups = [(list(range(1, 8)), [NEW]), (list(range(5, 12)), [NEW + 1, NEW + 2]), ([], [NEW + 3])]
    await store.push_many(timelines=groups, authors=[([1, 2], [NEW])], keys_per_call=3)
    for user in range(1, 12):
        members, expires = await state_of(redis_client, keys.timeline(user))
        assert expires or not members, user
        wanted = set()
        for users, tweets in groups:
            if user in users:
                wanted |= {encode_member(t) for t in tweets}
        assert set(members) == wanted, user
    for author in (1, 2):
        members, expires = await state_of(redis_client, keys.author_tweets(author))
        assert members == [encode_member(NEW)] and expires


async def test_pipelined_script_calls_load_a_script_redis_does_not_have(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    # As after a Redis restart: the script is not in Redis's cache (a body never sent
    # before, rather than a flush of the cache other processes share).
    script = Script(f"return {{KEYS[1], ARGV[1], '{secrets.token_hex(8)}'}}")
    assert not (await redis_client.script_exists(script.sha))[0]
    reads = RespClient(settings.redis_url)
    try:
        calls: list[tuple[list[str], list[str | int]]] = [(["a"], [1]), (["b"], [2])]
        first = await reads.evalsha_many(script, calls)
        assert [reply[:2] for reply in first] == [[b"a", b"1"], [b"b", b"2"]]
        assert (await redis_client.script_exists(script.sha))[0]
        assert await reads.evalsha_many(script, calls) == first
    finally:
        await reads.close()
