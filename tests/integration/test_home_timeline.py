"""The home timeline (API.md "Home timeline", DESIGN.md "Read path"): read-your-writes,
follow backfill and unfollow, cursors that neither skip nor repeat, since_id, and the Redis
copy being missing, trimmed or stale. Fanout itself is in test_fanout.py."""

from __future__ import annotations

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.support import (
    SENTINEL,
    TRIMMED,
    Api,
    FanoutRun,
    assert_error,
    eventually,
    member,
    running_app,
    timeline_key,
    timeline_members,
    zset_members,
)
from web.container import provide_services
from web.settings import Settings


async def test_own_tweet_is_in_the_timeline_right_after_201(api: Api) -> None:
    alice = await api.sign_up()
    tweet = await alice.post("hello")
    assert await alice.timeline_ids() == [tweet["id"]]


async def test_own_tweet_is_in_an_existing_redis_timeline_with_no_worker_running(
    api: Api, redis_client: aioredis.Redis, settings: Settings
) -> None:
    alice = await api.sign_up()
    first = await alice.post("first")
    assert await alice.timeline_ids() == [first["id"]]  # the Redis timeline now exists
    second = await alice.post("second")
    assert await alice.timeline_ids() == [second["id"], first["id"]]
    members = await timeline_members(redis_client, settings, alice.id)
    assert members == [SENTINEL, member(first["id"]), member(second["id"])]


async def test_followed_authors_tweet_reaches_the_follower_through_fanout(
    api: Api, fanout_run: FanoutRun
) -> None:
    alice, bob = await api.sign_up(), await api.sign_up()
    await bob.follow(alice)
    await bob.timeline()  # built now, so only the worker can add the new tweet to it
    tweet = await alice.post("for my followers")

    async def arrived() -> bool:
        return tweet["id"] in await bob.timeline_ids()

    assert await eventually(arrived, timeout=2.0)


async def test_timeline_holds_own_and_followed_tweets_only_newest_first(api: Api) -> None:
    alice, bob, carol = await api.sign_up(), await api.sign_up(), await api.sign_up()
    await alice.follow(bob)
    b1 = await bob.post("b1")
    a1 = await alice.post("a1")
    await carol.post("c1 not followed")
    b2 = await bob.post("b2")
    assert await alice.timeline_ids() == [b2["id"], a1["id"], b1["id"]]
    page = await alice.timeline()
    assert page["next_cursor"] is None
    assert [t["author"]["username"] for t in page["tweets"]] == [
        bob.username,
        alice.username,
        bob.username,
    ]


async def test_after_follow_the_followees_earlier_tweets_are_in_the_timeline_at_once(
    api: Api,
) -> None:
    alice, bob = await api.sign_up(), await api.sign_up()
    earlier = await alice.post_many(3, "earlier")
    mine = await bob.post("bob's own")
    assert await bob.timeline_ids() == [mine["id"]]  # bob's Redis timeline exists
    await bob.follow(alice)
    assert await bob.timeline_ids() == [mine["id"], *earlier[::-1]]


async def test_after_unfollow_the_former_followees_tweets_are_gone_at_once(api: Api) -> None:
    alice, bob, carol = await api.sign_up(), await api.sign_up(), await api.sign_up()
    await bob.follow(alice)
    await bob.follow(carol)
    from_alice = await alice.post_many(2, "alice")
    from_carol = await carol.post("carol")
    mine = await bob.post("mine")
    await bob.unfollow(alice)
    assert await bob.timeline_ids() == [mine["id"], from_carol["id"]]
    await bob.follow(alice)
    assert await bob.timeline_ids() == [mine["id"], from_carol["id"], *from_alice[::-1]]


async def test_paging_while_new_tweets_arrive_neither_skips_nor_repeats(
    api: Api, fanout_run: FanoutRun
) -> None:
    alice, bob = await api.sign_up(), await api.sign_up()
    await bob.follow(alice)
    await bob.timeline()
    first_30 = (await alice.post_many(30))[::-1]  # newest first

    async def all_arrived() -> bool:
        return await bob.timeline_ids(limit=100) == first_30

    assert await eventually(all_arrived, timeout=5.0)
    page = await bob.timeline(limit=7)
    seen = [t["id"] for t in page["tweets"]]
    cursor = page["next_cursor"]
    newer = await alice.post_many(5, "newer")
    assert await fanout_run.settled()
    assert (await bob.timeline_ids(limit=5)) == newer[::-1]  # they did arrive
    while cursor:
        page = await bob.timeline(limit=7, cursor=cursor)
        seen += [t["id"] for t in page["tweets"]]
        cursor = page["next_cursor"]
    assert seen == first_30


async def test_own_timeline_pages_without_skip_or_repeat_for_every_page_size(api: Api) -> None:
    alice = await api.sign_up()
    ids = (await alice.post_many(12))[::-1]
    for limit in (1, 5, 11, 12, 13, 100):
        assert await alice.all_timeline_ids(limit=limit) == ids


async def test_since_id_returns_only_newer_tweets_newest_first(api: Api) -> None:
    alice, bob = await api.sign_up(), await api.sign_up()
    await bob.follow(alice)
    ids = await alice.post_many(5)
    assert await bob.timeline_ids(since_id=ids[1]) == ids[:1:-1]
    assert await alice.timeline_ids(since_id=ids[1]) == ids[:1:-1]
    assert await bob.timeline_ids(since_id=ids[-1]) == []
    assert len(await bob.timeline_ids(since_id=ids[0], limit=2)) == 2


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "-3"},
        {"limit": "abc"},
        {"cursor": "abc"},
        {"cursor": "-1"},
        {"cursor": "0"},
        {"cursor": "9" * 25},
        {"since_id": "xyz"},
    ],
    ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()),
)
async def test_timeline_limit_cursor_and_since_id_are_validated(
    api: Api, params: dict[str, str]
) -> None:
    alice = await api.sign_up()
    response = await api.client.get("/api/v1/timeline", params=params, headers=alice.auth)
    if params.get("limit") == "abc":
        assert response.status_code in (400, 422), response.text
        assert_error(response, response.status_code)
    else:
        assert_error(response, 422)


async def test_timeline_needs_authentication(api: Api) -> None:
    assert_error(await api.client.get("/api/v1/timeline"), 401)
    bad = {"Authorization": "Bearer nope"}
    assert_error(await api.client.get("/api/v1/timeline", headers=bad), 401)


async def test_a_missing_redis_timeline_is_rebuilt_from_postgres_on_read(
    api: Api, redis_client: aioredis.Redis, settings: Settings
) -> None:
    alice, bob = await api.sign_up(), await api.sign_up()
    await bob.follow(alice)
    from_alice = await alice.post_many(3)
    mine = await bob.post("mine")
    expected = [mine["id"], *from_alice[::-1]]
    assert await bob.timeline_ids() == expected
    await redis_client.delete(timeline_key(settings, bob.id))
    assert await bob.timeline_ids() == expected
    members = await timeline_members(redis_client, settings, bob.id)
    assert members == [SENTINEL, *sorted(member(i) for i in expected)]


async def test_a_timeline_set_without_its_sentinel_counts_as_missing_and_is_rebuilt(
    api: Api, redis_client: aioredis.Redis, settings: Settings
) -> None:
    alice, bob = await api.sign_up(), await api.sign_up()
    await bob.follow(alice)
    ids = await alice.post_many(3)
    key = timeline_key(settings, bob.id)
    await redis_client.delete(key)
    # As a fanout push after expiry would leave it: one entry, no sentinel.
    await redis_client.zadd(key, {member(ids[-1]): 0})
    assert await bob.timeline_ids() == ids[::-1]


async def test_a_trimmed_timeline_still_pages_to_the_end_through_postgres(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    async with running_app(settings.with_overrides(timeline_max=5)) as api:
        alice, bob = await api.sign_up(), await api.sign_up()
        await alice.timeline()  # alice's own timeline exists and is pushed to (then trimmed)
        await bob.follow(alice)
        ids = (await alice.post_many(13))[::-1]
        # Bob's is built on read, capped at 5.
        for account in (alice, bob):
            for limit in (1, 3, 5, 6, 20):
                assert await account.all_timeline_ids(limit=limit) == ids, (account, limit)
            members = await timeline_members(redis_client, settings, account.id)
            assert members[:2] == [SENTINEL, TRIMMED]
            assert members[2:] == sorted(member(i) for i in ids[:5])
        # A cursor in the middle, below the Redis window, keeps going.
        assert await bob.timeline_ids(cursor=ids[6], limit=3) == ids[7:10]


async def test_a_trimmed_timeline_that_loses_entries_still_pages_to_the_end(
    settings: Settings,
) -> None:
    # Found by `chirp audit`: a full set that then lost an entry (a deletion, an unfollow)
    # no longer looked trimmed by its size, and paging stopped at its oldest entry.
    async with running_app(settings.with_overrides(timeline_max=5)) as api:
        alice, bob = await api.sign_up(), await api.sign_up()
        await bob.follow(alice)
        ids = (await alice.post_many(7))[::-1]
        assert await bob.all_timeline_ids(limit=3) == ids  # built on read, capped at 5
        await alice.delete(ids[0])
        for limit in (1, 3, 20):
            assert await bob.all_timeline_ids(limit=limit) == ids[1:], limit


async def test_an_older_tweet_merged_into_a_trimmed_timeline_hides_nothing(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    # Found in review: a marked (trimmed) set that lost entries took in an older tweet from
    # an uncapped merge; its oldest entry then claimed that everything above it was there,
    # and paging never asked Postgres for the tweets in between.
    async with running_app(settings.with_overrides(timeline_max=5)) as api:
        alice, bob, carol = await api.sign_up(), await api.sign_up(), await api.sign_up()
        older = await carol.post("older than all of alice's")
        await bob.follow(alice)
        ids = (await alice.post_many(8))[::-1]
        assert await bob.all_timeline_ids(limit=3) == ids  # built on read, capped at 5
        await alice.delete(ids[0])
        # What the deletion's fanout does (no worker runs here): the set is below its cap.
        await redis_client.zrem(timeline_key(settings, bob.id), member(ids[0]))
        await bob.follow(carol)  # merges carol's one (older) tweet
        for limit in (1, 3, 20):
            expected = [*ids[1:], older["id"]]
            assert await bob.all_timeline_ids(limit=limit) == expected, limit


async def test_merging_a_capped_list_of_an_authors_tweets_leaves_no_gap(
    api: Api, settings: Settings, redis_client: aioredis.Redis
) -> None:
    # A follow merges only the followee's newest tweets (200; a switch back to push mode,
    # 50). Entries older than the oldest merged one would hide the followee's tweets in
    # between, so they are dropped and the set is marked for Postgres to serve below.
    bob, old, prolific = await api.sign_up(), await api.sign_up(), await api.sign_up()
    await bob.follow(old)
    await bob.follow(prolific)
    early = await old.post("early")
    newest_first = (await prolific.post_many(3))[::-1]
    async with provide_services(settings, process_name="test-merge") as services:
        await redis_client.delete(timeline_key(settings, bob.id))
        await services.store.populate_timeline(bob.int_id, [int(early["id"])])
        capped = [int(i) for i in newest_first[:2]]
        await services.store.merge_into_timelines([bob.int_id], capped, capped=True)
    members = await timeline_members(redis_client, settings, bob.id)
    assert members == [SENTINEL, TRIMMED, *sorted(member(i) for i in newest_first[:2])]
    assert await bob.all_timeline_ids(limit=2) == [*newest_first, early["id"]]


async def test_deleted_tweets_vanish_from_timelines_even_with_stale_redis_entries(
    api: Api, redis_client: aioredis.Redis, settings: Settings
) -> None:
    alice, bob = await api.sign_up(), await api.sign_up()
    await bob.follow(alice)
    ids = (await alice.post_many(6))[::-1]
    assert await bob.timeline_ids() == ids
    for doomed in (ids[0], ids[2]):
        await alice.delete(doomed)
    # No worker runs; and even if the entries were put back they must not show.
    stale = {member(ids[0]): 0, member(ids[2]): 0}
    for account in (alice, bob):
        await redis_client.zadd(timeline_key(settings, account.id), stale)
    expected = [ids[1], *ids[3:]]
    for account in (alice, bob):
        assert await account.timeline_ids() == expected
        # A full page stays full: the filtered entries are made up for.
        page = await account.timeline(limit=2)
        assert [t["id"] for t in page["tweets"]] == expected[:2]
        for limit in (1, 2, 3, 4):
            assert await account.all_timeline_ids(limit=limit) == expected


async def test_a_stale_entry_of_an_unfollowed_author_does_not_show(
    api: Api, redis_client: aioredis.Redis, settings: Settings
) -> None:
    alice, bob = await api.sign_up(), await api.sign_up()
    await bob.follow(alice)
    ids = await alice.post_many(2)
    assert await bob.timeline_ids() == ids[::-1]
    await bob.unfollow(alice)
    # As a fanout push that raced the unfollow would leave it.
    await redis_client.zadd(timeline_key(settings, bob.id), {member(ids[1]): 0})
    assert await bob.timeline_ids() == []


async def test_timeline_ordering_is_exact_for_ids_beyond_2_to_the_53(
    api: Api, pg: asyncpg.Connection
) -> None:
    # Snowflakes are ~2^62: tweets posted in the same millisecond differ only in low bits,
    # which a double score would lose.
    alice = await api.sign_up()
    ids = await alice.post_many(20)
    assert all(int(i) > 2**53 for i in ids)
    assert ids == sorted(ids, key=int)
    assert await alice.timeline_ids(limit=100) == ids[::-1]
    stored = await pg.fetchval(
        "SELECT array_agg(id::text ORDER BY id DESC) FROM tweets WHERE author_id = $1",
        alice.int_id,
    )
    assert list(stored) == ids[::-1]


async def test_a_tweet_posted_while_its_authors_list_is_rebuilt_stays_in_it(
    api: Api, settings: Settings, redis_client: aioredis.Redis
) -> None:
    # Found in review: pushes skipped an author list without its sentinel, so a tweet that
    # committed after the rebuild read Postgres was missing from the read-time merge of a
    # celebrity's tweets until the list expired.
    author = await api.sign_up()
    before = await author.post("before the rebuild")
    key = f"{settings.redis_prefix}ut:{author.id}"
    await redis_client.delete(key)
    during = await author.post("while the rebuild runs")  # pushed by the request
    async with provide_services(settings, process_name="test-author-list") as services:
        await services.store.populate_author(author.int_id, [int(before["id"])])
    members = await zset_members(redis_client, key)
    assert member(during["id"]) in members and member(before["id"]) in members
    assert await redis_client.ttl(key) > 0
