"""Hybrid fanout (DESIGN.md "Write path" step 5): normal authors' tweets are pushed into
their followers' Redis timelines by the worker; celebrities' (followers > threshold) are not,
and are merged at read time; the mode switches with hysteresis; every effect is idempotent.

The session runs with celebrity_threshold=5 and hysteresis=0.5: celebrity above 5 followers,
back to normal below 2.5."""

from __future__ import annotations

from collections.abc import Awaitable

import asyncpg
import redis.asyncio as aioredis

from domain.events import (
    FanoutModeChanged,
    Followed,
    TweetDeleted,
    TweetPosted,
    Unfollowed,
)
from realtime.fanout import Fanout
from tests.support import (
    SENTINEL,
    Account,
    Api,
    FanoutRun,
    eventually,
    idle_fanout,
    in_every_timeline,
    member,
    one_event,
    running_app,
    timeline_key,
    timeline_members,
    zset_members,
)
from web.settings import Settings


async def is_celebrity(pg: asyncpg.Connection, account: Account) -> bool:
    value: bool = await pg.fetchval("SELECT is_celebrity FROM users WHERE id = $1", account.int_id)
    return value


async def followers_with_timelines(api: Api, author: Account, count: int) -> list[Account]:
    """`count` new users who follow `author` and have read their (so now existing) timeline."""
    followers = await api.sign_up_many(count)
    for follower in followers:
        await follower.follow(author)
        await follower.timeline()
    return followers


async def handle_posted(fanout: Fanout, pg: asyncpg.Connection, tweet: dict[str, str]) -> None:
    """Runs the worker's handler for this tweet's TweetPosted now, so what it did (or did not)
    do is certain, whatever the background consumer has reached."""
    await fanout.handle(await one_event(pg, TweetPosted, tweet_id=int(tweet["id"])))


async def test_timeline_keys_hold_zero_padded_ids_above_a_sentinel(
    api: Api, fanout_run: FanoutRun, redis_client: aioredis.Redis, settings: Settings
) -> None:
    alice = await api.sign_up()
    (bob,) = await followers_with_timelines(api, alice, 1)
    tweet = await alice.post("padded")

    async def pushed() -> bool:
        return member(tweet["id"]) in await timeline_members(redis_client, settings, bob.id)

    assert await eventually(pushed, timeout=2.0)
    members = await timeline_members(redis_client, settings, bob.id)
    assert members == [SENTINEL, member(tweet["id"])]
    assert all(len(m) == 19 and m.isdigit() for m in members)
    assert SENTINEL == "0" * 19


async def test_a_normal_authors_tweet_is_pushed_into_every_followers_redis_timeline(
    api: Api, fanout_run: FanoutRun, redis_client: aioredis.Redis, settings: Settings
) -> None:
    alice = await api.sign_up()
    followers = await followers_with_timelines(api, alice, 3)
    tweet = await alice.post("to all of you")

    assert await eventually(
        lambda: in_every_timeline(redis_client, settings, followers, tweet["id"]), timeout=2.0
    )
    for follower in followers:
        assert await follower.timeline_ids() == [tweet["id"]]


async def test_timelines_a_follow_or_a_push_creates_expire_like_rebuilt_ones(
    api: Api, pg: asyncpg.Connection, redis_client: aioredis.Redis, settings: Settings
) -> None:
    """A follower who never reads their timeline has it made by the worker alone, never
    rebuilt (which would give it a TTL): without one it stayed in Redis for good."""
    alice, bob = await api.sign_up_many(2)
    first = await alice.post("before the follow")
    await bob.follow(alice)
    key = timeline_key(settings, bob.id)
    lifetime = settings.active_days * 86_400

    async with idle_fanout(settings) as fanout:
        await redis_client.delete(key)
        await fanout.handle(await one_event(pg, Followed, follower_id=bob.int_id))
        assert await timeline_members(redis_client, settings, bob.id) == [member(first["id"])]
        assert lifetime - 60 < await redis_client.ttl(key) <= lifetime

        await redis_client.delete(key)
        second = await alice.post("for a reader who may never come back")
        await handle_posted(fanout, pg, second)
        # Without a sentinel: read as missing, rebuilt by merging, which keeps the push.
        assert await timeline_members(redis_client, settings, bob.id) == [member(second["id"])]
        assert lifetime - 60 < await redis_client.ttl(key) <= lifetime

    assert await bob.timeline_ids() == [second["id"], first["id"]]


async def test_exactly_5_followers_is_still_pushed_and_the_6th_makes_a_celebrity(
    api: Api,
    fanout_run: FanoutRun,
    redis_client: aioredis.Redis,
    settings: Settings,
    pg: asyncpg.Connection,
) -> None:
    author = await api.sign_up()
    followers = await followers_with_timelines(api, author, 5)
    assert not await is_celebrity(pg, author)
    pushed = await author.post("at five")

    def in_all(tweet_id: str) -> Awaitable[bool]:
        return in_every_timeline(redis_client, settings, followers, tweet_id)

    assert await eventually(lambda: in_all(pushed["id"]), timeout=2.0)

    (sixth,) = await followers_with_timelines(api, author, 1)
    assert await is_celebrity(pg, author)
    # The follows are handled before the tweet exists: only its own event can push it.
    assert await fanout_run.settled()
    merged = await author.post("at six")
    await handle_posted(fanout_run.fanout, pg, merged)
    assert await fanout_run.settled()
    for follower in [*followers, sixth]:
        members = await timeline_members(redis_client, settings, follower.id)
        assert member(merged["id"]) not in members
        assert await follower.timeline_ids() == [merged["id"], pushed["id"]]


async def test_celebrity_tweets_are_merged_at_read_time_in_order_with_normal_authors(
    api: Api,
    fanout_run: FanoutRun,
    redis_client: aioredis.Redis,
    settings: Settings,
    pg: asyncpg.Connection,
) -> None:
    celebrity, normal = await api.sign_up(), await api.sign_up()
    bob, *others = await followers_with_timelines(api, celebrity, 6)
    await bob.follow(normal)
    assert await is_celebrity(pg, celebrity)
    assert await fanout_run.settled()  # the follows are handled before any tweet exists
    posted = []
    for author, text in [
        (normal, "n1"),
        (celebrity, "c1"),
        (celebrity, "c2"),
        (normal, "n2"),
        (bob, "own"),
        (celebrity, "c3"),
        (normal, "n3"),
    ]:
        posted.append((author, (await author.post(text))["id"]))
    assert await fanout_run.settled()
    for author, tweet_id in posted:
        if author is celebrity:
            await fanout_run.fanout.handle(await one_event(pg, TweetPosted, tweet_id=int(tweet_id)))
    members = set(await timeline_members(redis_client, settings, bob.id))
    for author, tweet_id in posted:
        assert (member(tweet_id) in members) == (author is not celebrity), (author, tweet_id)
    newest_first = [tweet_id for _, tweet_id in reversed(posted)]
    assert await bob.timeline_ids() == newest_first
    for limit in (1, 2, 3, 7):
        assert await bob.all_timeline_ids(limit=limit) == newest_first
    assert await bob.timeline_ids(since_id=posted[2][1]) == newest_first[:4]
    # Another follower who does not follow the normal author sees only the celebrity.
    assert await others[0].timeline_ids() == [
        tweet_id for author, tweet_id in reversed(posted) if author is celebrity
    ]


async def test_following_and_unfollowing_a_celebrity_changes_the_timeline_at_once(
    api: Api, pg: asyncpg.Connection
) -> None:
    celebrity = await api.sign_up()
    fans = await api.sign_up_many(6)
    for fan in fans:
        await fan.follow(celebrity)
    assert await is_celebrity(pg, celebrity)
    ids = await celebrity.post_many(3)
    bob = await api.sign_up()
    mine = await bob.post("mine")
    assert await bob.timeline_ids() == [mine["id"]]
    await bob.follow(celebrity)
    assert await bob.timeline_ids() == [mine["id"], *ids[::-1]]
    await bob.unfollow(celebrity)
    assert await bob.timeline_ids() == [mine["id"]]


async def test_hysteresis_keeps_a_celebrity_down_to_3_followers_and_pushes_again_at_2(
    api: Api,
    fanout_run: FanoutRun,
    redis_client: aioredis.Redis,
    settings: Settings,
    pg: asyncpg.Connection,
) -> None:
    author = await api.sign_up()
    followers = await followers_with_timelines(api, author, 6)
    assert await is_celebrity(pg, author)
    assert await fanout_run.settled()  # the follows are handled before any tweet exists
    while_celebrity = await author.post("with six")
    await handle_posted(fanout_run.fanout, pg, while_celebrity)

    for leaving in followers[3:]:  # 6 -> 5 -> 4 -> 3
        await leaving.unfollow(author)
        assert await is_celebrity(pg, author)
    at_three = await author.post("with three")
    await handle_posted(fanout_run.fanout, pg, at_three)
    assert await fanout_run.settled()
    for follower in followers[:3]:
        members = await timeline_members(redis_client, settings, follower.id)
        assert member(while_celebrity["id"]) not in members
        assert member(at_three["id"]) not in members
        assert await follower.timeline_ids() == [at_three["id"], while_celebrity["id"]]

    await followers[2].unfollow(author)  # 3 -> 2: below 2.5, normal again
    assert not await is_celebrity(pg, author)
    change = await one_event(pg, FanoutModeChanged, author_id=author.int_id, celebrity=False)
    assert change.celebrity is False
    remaining = followers[:2]

    async def back_in_timelines() -> bool:
        for follower in remaining:
            members = await timeline_members(redis_client, settings, follower.id)
            if not {member(while_celebrity["id"]), member(at_three["id"])} <= set(members):
                return False
        return True

    # The worker pushes the tweets that were merged at read time until now.
    assert await eventually(back_in_timelines, timeout=2.0)
    for follower in remaining:
        assert await follower.timeline_ids() == [at_three["id"], while_celebrity["id"]]
    # Handling the mode change again (a redelivery) changes nothing.
    assert await fanout_run.settled()
    before = await snapshot(redis_client, settings, remaining)
    await fanout_run.fanout.handle(change)
    await fanout_run.fanout.handle(change)
    assert await snapshot(redis_client, settings, remaining) == before
    assert await followers[2].timeline_ids() == []

    pushed = await author.post("normal again")

    assert await eventually(
        lambda: in_every_timeline(redis_client, settings, remaining, pushed["id"]), timeout=2.0
    )


async def test_the_threshold_and_hysteresis_come_from_settings(
    settings: Settings, pg: asyncpg.Connection
) -> None:
    # Celebrity above 3 followers; normal again below 3 * 0.5 = 1.5.
    async with running_app(settings.with_overrides(celebrity_threshold=3)) as api:
        author = await api.sign_up()
        fans = await api.sign_up_many(4)
        for fan in fans[:3]:
            await fan.follow(author)
        assert not await is_celebrity(pg, author)  # exactly at the threshold
        await fans[3].follow(author)
        assert await is_celebrity(pg, author)
        await fans[3].unfollow(author)
        await fans[2].unfollow(author)  # 2 >= 1.5
        assert await is_celebrity(pg, author)
        await fans[1].unfollow(author)  # 1 < 1.5
        assert not await is_celebrity(pg, author)


async def snapshot(
    redis_client: aioredis.Redis, settings: Settings, accounts: list[Account]
) -> dict[str, list[str]]:
    keys = []
    for account in accounts:
        keys += [f"{settings.redis_prefix}{kind}:{account.id}" for kind in ("tl", "ut")]
    return {k: await zset_members(redis_client, k) for k in keys}


async def test_a_redelivered_event_changes_nothing(
    api: Api, settings: Settings, redis_client: aioredis.Redis, pg: asyncpg.Connection
) -> None:
    alice, bob = await api.sign_up(), await api.sign_up()
    accounts = [alice, bob]
    await alice.timeline()
    await bob.timeline()
    t1 = await alice.post("t1")

    async with idle_fanout(settings) as fanout:

        async def twice(event: object, check: object = None) -> dict[str, list[str]]:
            await fanout.handle(event)  # type: ignore[arg-type]
            first = await snapshot(redis_client, settings, accounts)
            first_views = [await a.timeline_ids() for a in accounts]
            await fanout.handle(event)  # type: ignore[arg-type]
            assert await snapshot(redis_client, settings, accounts) == first, event
            assert [await a.timeline_ids() for a in accounts] == first_views, event
            return first

        await bob.follow(alice)
        followed = await one_event(pg, Followed, follower_id=bob.int_id, followee_id=alice.int_id)
        state = await twice(followed)
        assert member(t1["id"]) in state[f"{settings.redis_prefix}tl:{bob.id}"]

        t2 = await alice.post("t2")
        state = await twice(await one_event(pg, TweetPosted, tweet_id=int(t2["id"])))
        assert member(t2["id"]) in state[f"{settings.redis_prefix}tl:{bob.id}"]
        assert await bob.timeline_ids() == [t2["id"], t1["id"]]

        await alice.delete(t1["id"])
        deleted = await one_event(pg, TweetDeleted, tweet_id=int(t1["id"]))
        state = await twice(deleted)
        assert all(member(t1["id"]) not in members for members in state.values())
        assert await bob.timeline_ids() == [t2["id"]]

        await bob.unfollow(alice)
        unfollowed = await one_event(
            pg, Unfollowed, follower_id=bob.int_id, followee_id=alice.int_id
        )
        state = await twice(unfollowed)
        assert member(t2["id"]) not in state[f"{settings.redis_prefix}tl:{bob.id}"]
        assert await bob.timeline_ids() == []

        # Late redeliveries of events the graph has since moved past change nothing either.
        before = await snapshot(redis_client, settings, accounts)
        for late in (
            followed,
            await one_event(pg, TweetPosted, tweet_id=int(t1["id"])),
            await one_event(pg, TweetPosted, tweet_id=int(t2["id"])),
        ):
            await fanout.handle(late)
        assert await snapshot(redis_client, settings, accounts) == before
        assert await bob.timeline_ids() == []
        assert await alice.timeline_ids() == [t2["id"]]


async def test_a_tweet_deleted_just_before_its_reader_unfollows_leaves_no_timeline_holding_it(
    api: Api, settings: Settings, redis_client: aioredis.Redis, pg: asyncpg.Connection
) -> None:
    """The fault suite's NATS restart: the delete's event reached the worker only after the
    unfollow had committed, so the deletion no longer saw bob among alice's followers, and
    the unfollow no longer saw the tweet among alice's live ones."""
    alice = await api.sign_up()
    (bob,) = await followers_with_timelines(api, alice, 1)
    tweet = await alice.post("deleted while bob leaves")
    async with idle_fanout(settings) as fanout:
        await handle_posted(fanout, pg, tweet)
        assert member(tweet["id"]) in await timeline_members(redis_client, settings, bob.id)
        await alice.delete(tweet["id"])
        await bob.unfollow(alice)
        await fanout.handle(
            await one_event(pg, Unfollowed, follower_id=bob.int_id, followee_id=alice.int_id)
        )
        await fanout.handle(await one_event(pg, TweetDeleted, tweet_id=int(tweet["id"])))
    assert member(tweet["id"]) not in await timeline_members(redis_client, settings, bob.id)


async def test_the_worker_unmerges_a_deleted_tweet_the_requests_best_effort_left_behind(
    api: Api, settings: Settings, redis_client: aioredis.Redis, pg: asyncpg.Connection
) -> None:
    alice = await api.sign_up()
    (bob,) = await followers_with_timelines(api, alice, 1)
    tweet = await alice.post("deleted while bob leaves, Redis away")
    await alice.delete(tweet["id"])
    await bob.unfollow(alice)
    # What the timeline still holds when the request's unmerge failed (Redis unreachable).
    await redis_client.zadd(timeline_key(settings, bob.id), {member(tweet["id"]): 0})
    async with idle_fanout(settings) as fanout:
        await fanout.handle(await one_event(pg, TweetDeleted, tweet_id=int(tweet["id"])))
        await fanout.handle(
            await one_event(pg, Unfollowed, follower_id=bob.int_id, followee_id=alice.int_id)
        )
    assert member(tweet["id"]) not in await timeline_members(redis_client, settings, bob.id)


async def test_a_tweet_deleted_before_its_fanout_is_never_pushed(
    api: Api, settings: Settings, redis_client: aioredis.Redis, pg: asyncpg.Connection
) -> None:
    alice = await api.sign_up()
    (bob,) = await followers_with_timelines(api, alice, 1)
    tweet = await alice.post("regretted")
    await alice.delete(tweet["id"])
    async with idle_fanout(settings) as fanout:
        await fanout.handle(await one_event(pg, TweetPosted, tweet_id=int(tweet["id"])))
    assert member(tweet["id"]) not in await timeline_members(redis_client, settings, bob.id)
    assert await bob.timeline_ids() == []


async def test_following_a_celebrity_copies_none_of_their_tweets_into_redis(
    api: Api, settings: Settings, redis_client: aioredis.Redis, pg: asyncpg.Connection
) -> None:
    celebrity = await api.sign_up()
    for fan in await api.sign_up_many(6):
        await fan.follow(celebrity)
    assert await is_celebrity(pg, celebrity)
    ids = await celebrity.post_many(2)
    bob = await api.sign_up()
    await bob.timeline()
    await bob.follow(celebrity)
    assert member(ids[0]) not in await timeline_members(redis_client, settings, bob.id)
    # Nor does the worker, when it handles the Followed event.
    async with idle_fanout(settings) as fanout:
        await fanout.handle(
            await one_event(pg, Followed, follower_id=bob.int_id, followee_id=celebrity.int_id)
        )
    members = await timeline_members(redis_client, settings, bob.id)
    assert [m for m in members if m in {member(i) for i in ids}] == []
    assert await bob.timeline_ids() == ids[::-1]
