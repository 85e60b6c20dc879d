"""The timeline read's script (storage/redis_store.py `_PAGES`) hands back, with the pages, the
cached copies of the newest tweets of all the pages together: the read shows those without
asking again, so they must be exactly the newest ones, each once, with its own copy."""

from __future__ import annotations

import random
import secrets
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from domain.ids import encode_member
from storage.redis_store import SENTINEL, TRIMMED, RedisKeys, RedisTimelineStore
from storage.resp import RespClient
from web.settings import Settings

READER = 1
CELEBRITIES = [2, 3, 4]


@pytest.fixture
def keys(settings: Settings) -> RedisKeys:
    return RedisKeys(f"{settings.redis_prefix}pages-{secrets.token_hex(3)}:")


@pytest.fixture
async def client(settings: Settings, keys: RedisKeys) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        yield client
    finally:
        async for key in client.scan_iter(f"{keys.prefix}*"):
            await client.delete(key)
        await client.aclose()


@pytest.fixture
async def store(
    settings: Settings, keys: RedisKeys, client: aioredis.Redis
) -> AsyncIterator[RedisTimelineStore]:
    reads = RespClient(settings.redis_url)
    try:
        yield RedisTimelineStore(client, reads, keys, max_entries=800, ttl=3600)
    finally:
        await reads.close()


async def fill(client: aioredis.Redis, key: str, tweet_ids: list[int], marked: bool) -> None:
    members = [SENTINEL, *(map(encode_member, tweet_ids))]
    if marked:
        members.append(TRIMMED)
    await client.delete(key)
    await client.zadd(key, dict.fromkeys(members, 0))


@pytest.mark.parametrize("seed", range(12))
async def test_the_prefetched_tweets_are_the_newest_of_all_pages_each_once(
    seed: int, store: RedisTimelineStore, keys: RedisKeys, client: aioredis.Redis
) -> None:
    rng = random.Random(seed)
    # Ids of different widths (string order must still be id order) and shared between
    # the pages: a tweet pushed before its author became a celebrity is in both.
    pool = rng.sample([*range(1, 400), *range(10**17, 10**17 + 400)], 300)
    home = rng.sample(pool, rng.randint(0, 40))
    authors = {a: rng.sample(pool, rng.randint(0, 30)) for a in CELEBRITIES}
    await fill(client, keys.timeline(READER), home, rng.random() < 0.5)
    for author, tweet_ids in authors.items():
        await fill(client, keys.author_tweets(author), tweet_ids, rng.random() < 0.5)
    cached = {t: f"copy of {t}".encode() for t in pool if rng.random() < 0.7}
    await client.mset({keys.tweet(t): blob for t, blob in cached.items()})
    count = rng.choice([1, 5, 21, 60])
    before = rng.choice([None, rng.choice(pool)])

    pages = await store.home_pages(READER, CELEBRITIES, before=before, after=None, count=count)

    shown = {t for page in [home, *authors.values()] for t in page}
    newest = sorted((t for t in shown if before is None or t < before), reverse=True)[:count]
    assert list(pages.cached_tweets) == newest
    assert pages.cached_tweets == {t: cached.get(t) for t in newest}


async def test_a_missing_page_adds_nothing_to_the_prefetched_tweets(
    store: RedisTimelineStore, keys: RedisKeys, client: aioredis.Redis
) -> None:
    await fill(client, keys.author_tweets(2), [30, 10], False)
    await client.zadd(keys.author_tweets(3), {encode_member(40): 0})  # no sentinel: missing
    await client.set(keys.tweet(30), b"thirty")

    pages = await store.home_pages(READER, [2, 3], before=None, after=None, count=21)

    assert pages.home is None
    assert pages.authors[3] is None
    assert pages.cached_tweets == {30: b"thirty", 10: None}
