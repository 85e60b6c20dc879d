"""The fanout worker's batches (realtime/fanout.py `fan_out_tweets`, realtime/consumer.py): the
TweetPosted events of one fetch are fanned out together, ahead of the fetch's other events,
and a batch that fails is handled again one event at a time.

Each test publishes its events to a stream of its own and runs the worker's consumer on it
until everything is handled, so what one fetch holds is exactly what the test published. The
session runs with celebrity_threshold=5."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Sequence

import asyncpg
import redis.asyncio as aioredis

from domain.events import Event, TweetDeleted, TweetPosted, decode_event, encode_event
from realtime.consumer import EventConsumer
from realtime.fanout import CONSUMER, FanoutTuning
from storage.fanout_log import FanoutLog
from tests.support import (
    SENTINEL,
    Account,
    Api,
    consumer_idle,
    eventually,
    member,
    one_event,
    services_with_own_stream,
    timeline_members,
    zset_members,
)
from web.container import Services
from web.settings import Settings
from web.workers import fanout_consumer

# Quick redelivery, so that a poison event reaches the dead-letter stream within a test.
FAST = FanoutTuning(max_deliver=2, redelivery_delay=0.05)


def own_stream(settings: Settings) -> contextlib.AbstractAsyncContextManager[Services]:
    return services_with_own_stream(settings, "test-fanout-batches")


async def consume(
    services: Services,
    messages: Sequence[Event | bytes],
    *,
    settled: int,
    tuning: FanoutTuning = FAST,
) -> EventConsumer:
    """Publishes the messages (bytes: as they are, on the posted subject), then runs the
    fanout worker's consumer until `settled` of them are handled or dead-lettered and
    nothing is left pending."""
    for message in messages:
        if isinstance(message, Event):
            subject, payload = services.names.subject(message.kind), encode_event(message)
        else:
            subject, payload = services.names.subject(TweetPosted.kind), message
        await services.link.js.publish(subject, payload, stream=services.names.stream)
    consumer, _ = fanout_consumer(services, tuning)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))

    async def done() -> bool:
        finished = consumer.handled + consumer.dead_lettered >= settled
        return finished and await consumer_idle(services, CONSUMER)

    try:
        assert await eventually(done, timeout=20.0)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    return consumer


async def posted(pg: asyncpg.Connection, tweet: dict[str, str]) -> TweetPosted:
    return await one_event(pg, TweetPosted, tweet_id=int(tweet["id"]))


async def read_timelines(*accounts: Account) -> None:
    """Builds their Redis timelines (a read does), so a push is visible as such."""
    for account in accounts:
        await account.timeline()


async def make_inactive(pg: asyncpg.Connection, account: Account) -> None:
    await pg.execute(
        "UPDATE users SET last_seen_at = now() - interval '400 days' WHERE id = $1",
        account.int_id,
    )


async def holds(redis_client: aioredis.Redis, settings: Settings, account: Account) -> list[str]:
    """The tweets in the account's Redis timeline, below its sentinel."""
    members = await timeline_members(redis_client, settings, account.id)
    assert members[:1] == [SENTINEL], (account.username, members)
    return members[1:]


def members_of(*tweets: dict[str, str]) -> list[str]:
    return sorted(member(t["id"]) for t in tweets)


async def test_a_batch_of_several_authors_puts_each_tweet_in_exactly_its_followers_timelines(
    api: Api, settings: Settings, pg: asyncpg.Connection, redis_client: aioredis.Redis
) -> None:
    alice, bob, carol, both, bobs, inactive, outsider = await api.sign_up_many(7)
    for follower, authors in ((both, [alice, bob]), (bobs, [bob]), (inactive, [alice, carol])):
        for author in authors:
            await follower.follow(author)
    await read_timelines(alice, bob, carol, both, bobs, inactive, outsider)
    await make_inactive(pg, inactive)
    a1 = await alice.post("a1")
    b1 = await bob.post("b1")
    a2 = await alice.post("a2")
    c1 = await carol.post("c1")
    events = [await posted(pg, t) for t in (a1, b1, a2, c1)]

    async with own_stream(settings) as services:
        consumer = await consume(services, events, settled=4)
        records = {
            t["id"]: await FanoutLog(services.redis, services.keys).get(int(t["id"]))
            for t in (a1, b1, a2, c1)
        }

    assert (consumer.bulks, consumer.bulks_failed, consumer.handled) == (1, 0, 4)
    expected = {
        alice: members_of(a1, a2),
        bob: members_of(b1),
        carol: members_of(c1),
        both: members_of(a1, a2, b1),
        bobs: members_of(b1),
        inactive: [],  # not seen for longer than CHIRP_ACTIVE_DAYS: no fanout
        outsider: [],
    }
    for account, tweets in expected.items():
        assert await holds(redis_client, settings, account) == tweets, account.username
    # The operators' record of each tweet counts the followers written (the author not).
    followers = {a1["id"]: 1, a2["id"]: 1, b1["id"]: 2, c1["id"]: 0}
    for tweet_id, record in records.items():
        assert record is not None and record.mode == "push", tweet_id
        assert record.followers == followers[tweet_id], tweet_id
    assert await both.timeline_ids() == [a2["id"], b1["id"], a1["id"]]


async def test_a_post_and_its_deletion_in_one_batch_leave_nothing(
    api: Api, settings: Settings, pg: asyncpg.Connection, redis_client: aioredis.Redis
) -> None:
    alice, bob = await api.sign_up_many(2)
    await bob.follow(alice)
    await read_timelines(alice, bob)
    kept = await alice.post("kept")
    regretted = await alice.post("regretted")
    await alice.delete(regretted["id"])
    events: list[Event] = [
        await posted(pg, kept),
        await posted(pg, regretted),
        await one_event(pg, TweetDeleted, tweet_id=int(regretted["id"])),
    ]

    async with own_stream(settings) as services:
        consumer = await consume(services, events, settled=3)

    assert (consumer.bulks, consumer.handled) == (1, 3)
    for account in (alice, bob):
        assert await holds(redis_client, settings, account) == members_of(kept), account.username
    author_list = await zset_members(redis_client, f"{settings.redis_prefix}ut:{alice.id}")
    assert member(regretted["id"]) not in author_list
    assert await bob.timeline_ids() == [kept["id"]]


async def a_reader_two_tweets_and_a_poison(
    api: Api, pg: asyncpg.Connection
) -> tuple[Account, list[dict[str, str]], list[TweetPosted]]:
    """A reader following two authors and a tweet by each; their TweetPosted events with,
    between them, one that decodes but fails every time: no query can take its id (beyond
    Postgres's bigint)."""
    alice, bob, reader = await api.sign_up_many(3)
    for author in (alice, bob):
        await reader.follow(author)
    await read_timelines(alice, bob, reader)
    tweets = [await alice.post("a1"), await bob.post("b1")]
    poison = TweetPosted(event_id=7, tweet_id=2**63, author_id=alice.int_id)
    return reader, tweets, [await posted(pg, tweets[0]), poison, await posted(pg, tweets[1])]


async def test_a_poison_message_in_a_batch_is_dead_lettered_and_the_others_are_handled(
    api: Api, settings: Settings, pg: asyncpg.Connection, redis_client: aioredis.Redis
) -> None:
    reader, tweets, (a1, poison, b1) = await a_reader_two_tweets_and_a_poison(api, pg)
    messages: list[Event | bytes] = [a1, poison, b"not an event at all", b1]

    async with own_stream(settings) as services:
        consumer = await consume(services, messages, settled=4)
        names = services.names
        parked = await services.link.js.stream_info(names.dead_letter_stream)
        last = await services.link.js.get_last_msg(
            names.dead_letter_stream, names.dead_letter(CONSUMER)
        )

    assert consumer.bulks_failed == 1  # then one at a time
    assert (consumer.handled, consumer.dead_lettered) == (2, 2)
    assert consumer.failed == FAST.max_deliver  # the poison, once per delivery
    assert parked.state.messages == 2
    assert decode_event(last.data or b"") == poison
    assert await holds(redis_client, settings, reader) == members_of(*tweets)


async def test_a_celebritys_tweet_in_a_batch_is_not_pushed(
    api: Api, settings: Settings, pg: asyncpg.Connection, redis_client: aioredis.Redis
) -> None:
    celebrity, normal = await api.sign_up_many(2)
    fans = await api.sign_up_many(6)  # above the session's threshold of 5
    for fan in fans:
        await fan.follow(celebrity)
    await fans[0].follow(normal)
    await read_timelines(celebrity, normal, *fans)
    famous = await celebrity.post("to the many")
    ordinary = await normal.post("to the few")
    events = [await posted(pg, famous), await posted(pg, ordinary)]

    async with own_stream(settings) as services:
        consumer = await consume(services, events, settled=2)
        record = await FanoutLog(services.redis, services.keys).get(int(famous["id"]))

    assert consumer.bulks == 1
    assert await holds(redis_client, settings, fans[0]) == members_of(ordinary)
    for fan in fans[1:]:
        assert await holds(redis_client, settings, fan) == [], fan.username
    # Its author's own timeline and list have it; followers get it at read time.
    assert await holds(redis_client, settings, celebrity) == members_of(famous)
    author_list = await zset_members(redis_client, f"{settings.redis_prefix}ut:{celebrity.id}")
    assert member(famous["id"]) in author_list
    assert record is not None and (record.mode, record.followers) == ("celebrity", 0)
    assert await fans[0].timeline_ids() == [ordinary["id"], famous["id"]]


async def test_a_batch_delivered_again_changes_nothing(
    api: Api, settings: Settings, pg: asyncpg.Connection, redis_client: aioredis.Redis
) -> None:
    alice, bob, reader, other = await api.sign_up_many(4)
    await reader.follow(alice)
    await reader.follow(bob)
    await other.follow(bob)
    accounts = (alice, bob, reader, other)
    await read_timelines(*accounts)
    tweets = [await alice.post("a1"), await bob.post("b1"), await alice.post("a2")]
    events = [await posted(pg, t) for t in tweets]

    async def snapshot() -> dict[str, list[str]]:
        keys = [f"{settings.redis_prefix}{kind}:{a.id}" for a in accounts for kind in ("tl", "ut")]
        return {key: await zset_members(redis_client, key) for key in keys}

    async with own_stream(settings) as services:
        first = await consume(services, events, settled=3)
        once = await snapshot()
        # The same events once more, as after a worker died before acking them.
        again = await consume(services, events, settled=3)
        assert await snapshot() == once

    assert (first.bulks, again.bulks) == (1, 1)
    assert await holds(redis_client, settings, reader) == members_of(*tweets)
    assert await reader.timeline_ids() == [t["id"] for t in reversed(tweets)]


async def test_a_batch_of_several_parts_puts_each_tweet_in_exactly_its_followers_timelines(
    api: Api, settings: Settings, pg: asyncpg.Connection, redis_client: aioredis.Redis
) -> None:
    alice, bob, carol, both, bobs = await api.sign_up_many(5)
    for follower, authors in ((both, [alice, bob]), (bobs, [bob]), (carol, [alice])):
        for author in authors:
            await follower.follow(author)
    await read_timelines(alice, bob, carol, both, bobs)
    tweets = [
        await alice.post("a1"),
        await bob.post("b1"),
        await alice.post("a2"),
        await carol.post("c1"),
        await bob.post("b2"),
    ]
    events = [await posted(pg, t) for t in tweets]
    a1, b1, a2, c1, b2 = tweets
    # Parts of two tweets, two of them in flight: an author's tweets fall in several parts.
    tuning = dataclasses.replace(FAST, part_size=2, parts_at_once=2)

    async with own_stream(settings) as services:
        consumer = await consume(services, events, settled=5, tuning=tuning)
        records = [await FanoutLog(services.redis, services.keys).get(int(t["id"])) for t in tweets]

    assert (consumer.bulks, consumer.bulks_failed, consumer.handled) == (1, 0, 5)
    expected = {
        alice: members_of(a1, a2),
        bob: members_of(b1, b2),
        carol: members_of(a1, a2, c1),
        both: members_of(a1, a2, b1, b2),
        bobs: members_of(b1, b2),
    }
    for account, members in expected.items():
        assert await holds(redis_client, settings, account) == members, account.username
    assert [r.followers if r is not None else None for r in records] == [2, 2, 2, 0, 2]
    assert await both.timeline_ids() == [b2["id"], a2["id"], b1["id"], a1["id"]]


async def test_a_poison_event_in_one_part_fails_its_batch_after_the_other_parts_are_written(
    api: Api, settings: Settings, pg: asyncpg.Connection, redis_client: aioredis.Redis
) -> None:
    reader, tweets, events = await a_reader_two_tweets_and_a_poison(api, pg)
    messages: list[Event | bytes] = [*events]
    tuning = dataclasses.replace(FAST, part_size=1, parts_at_once=2)

    async with own_stream(settings) as services:
        consumer = await consume(services, messages, settled=3, tuning=tuning)

    # The batch fails as a whole, then its events go one at a time: the poison alone is
    # dead-lettered, the others are written (twice over, which changes nothing).
    assert consumer.bulks_failed == 1
    assert (consumer.handled, consumer.dead_lettered) == (2, 1)
    assert await holds(redis_client, settings, reader) == members_of(*tweets)


async def test_warming_the_fanout_up_before_its_first_batch_writes_nothing(
    api: Api, settings: Settings, redis_client: aioredis.Redis
) -> None:
    alice, bob = await api.sign_up_many(2)
    await bob.follow(alice)
    await read_timelines(alice, bob)
    await alice.post("before the worker started")
    before = await holds(redis_client, settings, bob)

    async with own_stream(settings) as services:
        _, fanout = fanout_consumer(services, FAST)
        await fanout.warm_up()

    assert await holds(redis_client, settings, bob) == before
