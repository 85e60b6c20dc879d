"""What each web process remembers to make a timeline read cheap (the token's owner, the
follow list) must never show a stale follow graph. Two app instances stand in for two
processes: a change made through one must show on the very next read through the other,
with no fanout worker running to help."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import pytest
import redis.asyncio as aioredis

from domain.model import Tweet
from storage.repositories import TWEET_COLUMNS, tweet_from_row
from tests.support import Account, Api, running_app
from web.settings import Settings


@pytest.fixture
async def other_process(settings: Settings) -> AsyncIterator[Api]:
    async with running_app(settings) as api:
        yield api


def through(api: Api, account: Account) -> Account:
    """The same account, its requests sent to another app instance."""
    return Account(api, account.username, account.id, account.token)


async def the_tweet_is_liked(account: Account) -> bool:
    """Whether the one tweet of the account's home timeline shows as liked."""
    (shown,) = (await account.timeline())["tweets"]
    return bool(shown["liked"])


async def test_a_follow_through_one_process_shows_on_the_next_read_through_another(
    api: Api, other_process: Api
) -> None:
    reader, author = await api.sign_up(), await api.sign_up()
    earlier = await author.post("before the follow")
    elsewhere = through(other_process, reader)
    assert await elsewhere.timeline_ids() == []  # the other process now holds the follow list
    await reader.follow(author)
    assert await elsewhere.timeline_ids() == [earlier["id"]]


async def test_an_unfollow_through_one_process_hides_the_author_on_the_next_read_through_another(
    api: Api, other_process: Api
) -> None:
    reader, author = await api.sign_up(), await api.sign_up()
    await reader.follow(author)
    tweet = await author.post("while followed")
    elsewhere = through(other_process, reader)
    assert await elsewhere.timeline_ids() == [tweet["id"]]
    await reader.unfollow(author)
    assert await elsewhere.timeline_ids() == []


async def test_an_author_turning_celebrity_is_merged_on_the_next_read_through_another_process(
    api: Api, other_process: Api, pg: asyncpg.Connection
) -> None:
    # Celebrity threshold in the test settings: 5 followers. The reader's cached split has
    # the author as a normal (pushed) author; once the sixth follower makes the author a
    # celebrity, new tweets are not pushed (no worker runs here anyway) and only the
    # read-time merge can show them.
    author, reader = await api.sign_up(), await api.sign_up()
    await reader.follow(author)
    for _ in range(4):
        await (await api.sign_up()).follow(author)
    elsewhere = through(other_process, reader)
    assert await elsewhere.timeline_ids() == []
    await (await api.sign_up()).follow(author)
    assert await pg.fetchval("SELECT is_celebrity FROM users WHERE id = $1", author.int_id)
    merged = await author.post("as a celebrity")
    assert await elsewhere.timeline_ids() == [merged["id"]]


async def test_follow_changes_show_through_another_process_after_redis_lost_the_versions(
    api: Api, other_process: Api, settings: Settings, redis_client: aioredis.Redis
) -> None:
    # A Redis restart empties the version keys. Counted up again from nothing, a version
    # came back to a value some process had cached for an older follow list, or was missing
    # again as it had been when a process cached its copy: either way that stale copy
    # looked current, for up to a minute, and a timeline rebuilt from it kept the tweets of
    # authors no longer followed (found by tests/faults).
    reader, author = await api.sign_up(), await api.sign_up()
    tweet = await author.post("while followed")
    elsewhere = through(other_process, reader)

    async def restart() -> None:
        """What a Redis restart does to the reader's keys: the version and the timeline go."""
        await redis_client.delete(
            f"{settings.redis_prefix}fv:{reader.id}", f"{settings.redis_prefix}tl:{reader.id}"
        )

    await reader.follow(author)
    assert await elsewhere.timeline_ids() == [tweet["id"]]  # cached at the first version
    await restart()
    await reader.unfollow(author)  # the first version again, counting from nothing
    assert await elsewhere.timeline_ids() == []

    await restart()
    assert await elsewhere.timeline_ids() == []  # cached while the version is missing
    await reader.follow(author)
    await restart()  # missing again
    assert await elsewhere.timeline_ids() == [tweet["id"]]


async def test_a_like_through_one_process_shows_on_the_next_read_through_another(
    api: Api, other_process: Api
) -> None:
    reader, author = await api.sign_up(), await api.sign_up()
    await reader.follow(author)
    tweet = await author.post("likeable")
    elsewhere = through(other_process, reader)
    assert not await the_tweet_is_liked(elsewhere)  # the other process now holds the reader's likes
    await reader.like(tweet["id"])
    assert await the_tweet_is_liked(elsewhere)
    await reader.unlike(tweet["id"])
    assert not await the_tweet_is_liked(elsewhere)


async def test_counts_and_deletions_show_on_the_next_read_through_another_process(
    api: Api, other_process: Api
) -> None:
    # The other process keeps each tweet's JSON while the cache hands back the same copy: a
    # like, a reply or a deletion elsewhere must still show on its very next read.
    reader, author, fan = await api.sign_up(), await api.sign_up(), await api.sign_up()
    await reader.follow(author)
    kept, doomed = await author.post("counted"), await author.post("doomed")
    elsewhere = through(other_process, reader)

    async def shown() -> dict[str, tuple[int, int]]:
        tweets = (await elsewhere.timeline())["tweets"]
        return {t["id"]: (t["like_count"], t["reply_count"]) for t in tweets}

    assert await shown() == {doomed["id"]: (0, 0), kept["id"]: (0, 0)}
    assert await shown() == {doomed["id"]: (0, 0), kept["id"]: (0, 0)}
    await fan.like(kept["id"])
    await fan.post("a reply", reply_to=kept["id"])
    assert await shown() == {doomed["id"]: (0, 0), kept["id"]: (1, 1)}
    await author.delete(doomed["id"])
    assert await shown() == {kept["id"]: (1, 1)}


async def test_a_copy_read_before_a_pending_invalidation_went_through_is_not_shown(
    api: Api, pg: asyncpg.Connection
) -> None:
    # A process that failed to drop a tweet's cached copy retries with its next read; the
    # timeline read fetches the cached tweets in the same round trip as the page, before
    # that retry, so those copies must be read again, not shown (found in review).
    reader, author = await api.sign_up(), await api.sign_up()
    await reader.follow(author)
    tweet = await author.post("counted")
    assert [t["like_count"] for t in (await reader.timeline())["tweets"]] == [0]  # cached
    await pg.execute("UPDATE tweets SET like_count = 5 WHERE id = $1", int(tweet["id"]))
    api.client.app.state.services.reader._unforgotten.add(int(tweet["id"]))
    assert [t["like_count"] for t in (await reader.timeline())["tweets"]] == [5]
    assert [t["like_count"] for t in (await reader.timeline())["tweets"]] == [5]


async def test_a_timeline_read_in_steady_state_is_one_redis_round_trip(api: Api) -> None:
    reader, author = await api.sign_up(), await api.sign_up()
    await reader.follow(author)
    for n in range(3):
        await author.post(f"tweet {n}")
    expected = await reader.timeline_ids()  # rebuilds the timeline and fills the caches
    assert len(expected) == 3
    await reader.timeline_ids()
    reads = api.client.app.state.services.redis_reads
    calls = 0
    send = reads._send  # every call to Redis is one write of it

    async def counted(commands: Any) -> Any:
        nonlocal calls
        calls += 1
        return await send(commands)

    reads._send = counted
    try:
        assert await reader.timeline_ids() == expected
    finally:
        del reads._send
    # The page, the versions of the cached follow list and likes, and the tweets themselves.
    assert calls == 1


async def test_liked_flags_stay_right_on_pages_older_than_the_ones_read_before(
    api: Api, other_process: Api
) -> None:
    reader, author = await api.sign_up(), await api.sign_up()
    await reader.follow(author)
    oldest_first = await author.post_many(6)
    await reader.like(oldest_first[0])
    elsewhere = through(other_process, reader)
    first = await elsewhere.timeline(limit=3)
    assert [t["liked"] for t in first["tweets"]] == [False] * 3
    older = await elsewhere.timeline(limit=3, cursor=first["next_cursor"])
    assert [t["liked"] for t in older["tweets"]] == [False, False, True]


async def test_a_reader_with_more_likes_than_kept_still_sees_every_liked_flag(
    api: Api, other_process: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("storage.timeline.LIKES_KEPT", 2)
    reader, author = await api.sign_up(), await api.sign_up()
    await reader.follow(author)
    oldest_first = await author.post_many(5)
    for tweet_id in oldest_first[:4]:
        await reader.like(tweet_id)
    elsewhere = through(other_process, reader)
    pages = [await elsewhere.timeline(limit=2)]
    while pages[-1]["next_cursor"]:
        pages.append(await elsewhere.timeline(limit=2, cursor=pages[-1]["next_cursor"]))
    flags = [t["liked"] for page in pages for t in page["tweets"]]
    assert flags == [False, True, True, True, True]


async def test_a_new_tweet_is_cached_as_postgres_holds_it_before_its_201(
    api: Api, pg: asyncpg.Connection, redis_client: aioredis.Redis, settings: Settings
) -> None:
    """Every follower's open socket hydrates a new tweet as soon as its live message comes;
    cached by the post, none of them has to ask Postgres. The copy must be exactly what a
    cache miss would have loaded."""
    author = await api.sign_up()

    async def cached(tweet: dict[str, Any]) -> Tweet | None:
        blob = await redis_client.get(f"{settings.redis_prefix}tw:{tweet['id']}")
        return None if blob is None else msgspec.msgpack.decode(blob, type=Tweet)

    async def in_postgres(tweet: dict[str, Any]) -> Tweet:
        query = f"SELECT {TWEET_COLUMNS} FROM tweets WHERE id = $1"
        return tweet_from_row(await pg.fetchrow(query, int(tweet["id"])))

    parent = await author.post("a thread")
    assert await cached(parent) == await in_postgres(parent)
    reply = await author.post("and a reply", reply_to=parent["id"])
    assert await cached(reply) == await in_postgres(reply)
    # The reply changed the parent's count: its copy is dropped, not kept stale.
    assert await cached(parent) is None
    assert (await in_postgres(parent)).reply_count == 1


async def test_a_like_whose_version_redis_refused_reaches_the_other_processes_once_it_gets_through(
    api: Api, other_process: Api, pg: asyncpg.Connection
) -> None:
    # Other processes keep a reader's likes while their version in Redis is unchanged: a
    # bump Redis refused must be retried, or they show the old flag for the copy's lifetime.
    reader, author = await api.sign_up(), await api.sign_up()
    await reader.follow(author)
    tweet = await author.post("liked while Redis was unreachable from one process")
    elsewhere = through(other_process, reader)
    assert not await the_tweet_is_liked(elsewhere)  # the other process keeps the likes now
    # The like committed, and this process's bump of the likes' version failed.
    await pg.execute(
        "INSERT INTO likes (user_id, tweet_id) VALUES ($1, $2)", int(reader.id), int(tweet["id"])
    )
    api.client.app.state.chirp._unbumped_likes.add(int(reader.id))
    assert not await the_tweet_is_liked(elsewhere)
    await reader.timeline()  # the next read here retries the bump
    assert await the_tweet_is_liked(elsewhere)
