"""`chirp audit [--repair]`: home timelines, counters and search documents compared with
Postgres. Drift is injected straight into Redis, Postgres or Typesense once the fanout has
settled, and every audit is scoped to the test's own users (the session's database is shared)
with no grace period (the drift is made on purpose, not in flight)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest
import redis.asyncio as aioredis

from storage.audit import CELEBRITY, DELETED, NOT_FOLLOWED, TimelineDrift
from tests.support import (
    SENTINEL,
    TRIMMED,
    Account,
    Api,
    FanoutRun,
    member,
    run_chirp,
    running_app,
    timeline_key,
    timeline_members,
    unique_name,
)
from web.audit import (
    AuditOutcome,
    AuditReport,
    AuditScope,
    describe_outcome,
    run_audit,
    timeline_auditor,
)
from web.container import Services, provide_services
from web.settings import Settings


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    async with provide_services(settings, process_name="test-audit") as running:
        yield running


async def audit(settings: Settings, *accounts: Account, repair: bool = False) -> AuditOutcome:
    scope = AuditScope(usernames=tuple(a.username for a in accounts), grace_seconds=0)
    return await run_audit(settings, scope, repair=repair)


async def index_tweets(services: Services, *accounts: Account) -> None:
    """No search indexer runs here: bring these users' documents in line directly."""
    rows = await services.db.pool.fetch(
        "SELECT id FROM tweets WHERE author_id = ANY($1::bigint[])", [a.int_id for a in accounts]
    )
    assert await services.search_sync.sync([r["id"] for r in rows]) == {}


def drift_of(report: AuditReport, account: Account) -> TimelineDrift:
    found = [d for d in report.timelines.drifted if d.user_id == account.int_id]
    assert len(found) == 1, report.timelines
    return found[0]


def assert_repaired(outcome: AuditOutcome) -> None:
    assert not outcome.before.clean
    assert outcome.after is not None and outcome.after.clean, describe_outcome(outcome)
    assert outcome.clean


async def reader(api: Api) -> Account:
    """A new user whose timeline exists in Redis. (Posting before ever reading it leaves a
    set without its sentinel, which the audit reports as incomplete.)"""
    account = await api.sign_up()
    await account.timeline()
    return account


async def follower_of(author: Account, api: Api) -> Account:
    follower = await reader(api)
    await follower.follow(author)
    return follower


# -- clean -----------------------------------------------------------------------------------


async def test_a_clean_system_audits_clean(
    settings: Settings, fanout_run: FanoutRun, pg: asyncpg.Connection
) -> None:
    # Celebrity above one follower here, so the clean system includes a celebrity merged at
    # read time whose tweets are rightly absent from the followers' timelines.
    async with running_app(settings.with_overrides(celebrity_threshold=1)) as api:
        star, alice, bob = await reader(api), await reader(api), await reader(api)
        await bob.follow(alice)
        await bob.follow(star)
        await alice.follow(star)
        assert await pg.fetchval("SELECT is_celebrity FROM users WHERE id = $1", star.int_id)
        posted = await alice.post_many(3, "alice")
        await star.post("from the star")
        reply = await bob.post("a reply", reply_to=posted[0])
        await alice.post("a reply to a reply", reply_to=reply["id"])
        await bob.like(posted[1])
        await star.like(posted[1])
        await alice.delete(posted[2])
        assert await fanout_run.settled()
    await index_tweets(fanout_run.services, star, alice, bob)

    outcome = await audit(settings, star, alice, bob)

    assert outcome.clean, describe_outcome(outcome)
    report = outcome.before
    assert report.timelines.audited == 3 and not report.timelines.without_timeline
    assert report.counters.users == 3 and report.counters.tweets == 5
    assert report.search.checked == 6  # the deleted tweet too: it must have left the index
    assert describe_outcome(outcome)[-1] == "result:     clean"


async def test_a_user_without_a_redis_timeline_is_no_drift(settings: Settings, api: Api) -> None:
    alice = await api.sign_up()  # never read a timeline nor posted: no key
    outcome = await audit(settings, alice)
    assert outcome.clean, describe_outcome(outcome)
    assert outcome.before.timelines.without_timeline == [alice.int_id]
    assert outcome.before.timelines.audited == 0


# -- timelines -------------------------------------------------------------------------------


async def three_tweets_followed(
    api: Api, fanout_run: FanoutRun
) -> tuple[Account, Account, list[str]]:
    """Alice posts three tweets, fanned out to follower Bob and indexed."""
    alice = await reader(api)
    bob = await follower_of(alice, api)
    ids = await alice.post_many(3)
    assert await fanout_run.settled()
    await index_tweets(fanout_run.services, alice, bob)
    return alice, bob, ids


async def test_audit_finds_a_tweet_missing_from_a_timeline_and_repair_puts_it_back(
    settings: Settings, api: Api, fanout_run: FanoutRun, redis_client: aioredis.Redis
) -> None:
    alice, bob, ids = await three_tweets_followed(api, fanout_run)
    await redis_client.zrem(timeline_key(settings, bob.id), member(ids[1]))

    found = await audit(settings, alice, bob)

    assert not found.clean
    drift = drift_of(found.before, bob)
    assert drift.missing == [int(ids[1])] and not drift.extra and drift.complete
    assert found.before.timelines.missing == 1
    assert any(
        line.startswith("  missing     @" + bob.username) for line in describe_outcome(found)
    )

    repaired = await audit(settings, alice, bob, repair=True)
    assert_repaired(repaired)
    assert repaired.repair is not None and repaired.repair.timelines == 1
    assert member(ids[1]) in await timeline_members(redis_client, settings, bob.id)
    assert await bob.timeline_ids() == ids[::-1]


async def test_audit_finds_a_deleted_tweet_left_in_a_timeline_and_repair_removes_it(
    settings: Settings, api: Api, fanout_run: FanoutRun, redis_client: aioredis.Redis
) -> None:
    alice = await reader(api)
    bob = await follower_of(alice, api)
    kept, doomed = await alice.post_many(2)
    await alice.delete(doomed)
    assert await fanout_run.settled()
    await index_tweets(fanout_run.services, alice, bob)
    # As a deletion whose fanout was lost would leave it.
    await redis_client.zadd(timeline_key(settings, bob.id), {member(doomed): 0})

    found = await audit(settings, alice, bob)

    drift = drift_of(found.before, bob)
    assert [(e.tweet_id, e.reason) for e in drift.extra] == [(int(doomed), DELETED)]
    assert not drift.missing

    assert_repaired(await audit(settings, alice, bob, repair=True))
    members = await timeline_members(redis_client, settings, bob.id)
    assert member(doomed) not in members and member(kept) in members


async def test_audit_finds_an_unfollowed_authors_tweet_left_in_a_timeline_and_repair_removes_it(
    settings: Settings, api: Api, fanout_run: FanoutRun, redis_client: aioredis.Redis
) -> None:
    alice, carol = await reader(api), await reader(api)
    bob = await follower_of(alice, api)
    await bob.follow(carol)
    from_alice = await alice.post("still followed")
    from_carol = await carol.post("soon unfollowed")
    await bob.unfollow(carol)
    assert await fanout_run.settled()
    await index_tweets(fanout_run.services, alice, bob, carol)
    # As a fanout push that raced the unfollow would leave it.
    await redis_client.zadd(timeline_key(settings, bob.id), {member(from_carol["id"]): 0})

    found = await audit(settings, alice, bob, carol)

    drift = drift_of(found.before, bob)
    assert [(e.tweet_id, e.reason) for e in drift.extra] == [(int(from_carol["id"]), NOT_FOLLOWED)]

    assert_repaired(await audit(settings, alice, bob, carol, repair=True))
    members = await timeline_members(redis_client, settings, bob.id)
    assert member(from_carol["id"]) not in members and member(from_alice["id"]) in members


async def test_audit_finds_a_celebrity_tweet_pushed_into_a_timeline_and_repair_removes_it(
    settings: Settings, fanout_run: FanoutRun, redis_client: aioredis.Redis
) -> None:
    async with running_app(settings.with_overrides(celebrity_threshold=1)) as api:
        star = await reader(api)
        bob = await follower_of(star, api)
        await follower_of(star, api)  # the second follower makes a celebrity
        tweet = await star.post("merged at read time")
        assert await fanout_run.settled()
        await index_tweets(fanout_run.services, star, bob)
        await redis_client.zadd(timeline_key(settings, bob.id), {member(tweet["id"]): 0})

        found = await audit(settings, star, bob)

        drift = drift_of(found.before, bob)
        assert [(e.tweet_id, e.reason) for e in drift.extra] == [(int(tweet["id"]), CELEBRITY)]
        assert_repaired(await audit(settings, star, bob, repair=True))
        assert member(tweet["id"]) not in await timeline_members(redis_client, settings, bob.id)
        assert await bob.timeline_ids() == [tweet["id"]]  # still there, merged at read time


async def test_a_full_timeline_is_not_reported_missing_the_tweets_trimmed_below_its_window(
    settings: Settings, redis_client: aioredis.Redis, services: Services
) -> None:
    five = settings.with_overrides(timeline_max=5)
    async with running_app(five) as api:
        alice, carol = await reader(api), await reader(api)
        ids = (await alice.post_many(8))[::-1]
        stray = (await carol.post("not followed by bob"))["id"]
        bob = await follower_of(alice, api)  # the follow merges alice's newest, capped at 5
        newest_five = [SENTINEL, TRIMMED, *sorted(member(i) for i in ids[:5])]
        assert await timeline_members(redis_client, settings, bob.id) == newest_five
        await index_tweets(services, alice, bob, carol)
        assert (await audit(five, bob)).clean

        # A stray push into the full set, trimmed as the fanout trims: alice's 5th newest
        # drops below the window, where reads go to Postgres. Only the stray entry is drift.
        key = timeline_key(settings, bob.id)
        await redis_client.zadd(key, {member(stray): 0})
        await redis_client.zremrangebyrank(key, 2, -6)
        found = drift_of((await audit(five, bob)).before, bob)
        assert found.full and not found.missing
        assert [e.tweet_id for e in found.extra] == [int(stray)]

        assert_repaired(await audit(five, bob, repair=True))
        assert await timeline_members(redis_client, settings, bob.id) == newest_five

        await redis_client.zrem(key, member(ids[0]))
        found = drift_of((await audit(five, bob)).before, bob)
        # Still marked as trimmed: above its oldest entry, everything must be there.
        assert found.full and found.missing == [int(ids[0])]


async def test_an_inactive_users_timeline_is_not_reported_missing_what_fanout_skipped(
    settings: Settings, api: Api, fanout_run: FanoutRun, pg: asyncpg.Connection
) -> None:
    alice = await reader(api)
    bob = await follower_of(alice, api)
    assert await fanout_run.settled()
    await pg.execute(
        "UPDATE users SET last_seen_at = now() - interval '90 days' WHERE id = $1", bob.int_id
    )
    await alice.post("while bob was away")  # not pushed: bob is inactive
    assert await fanout_run.settled()
    await index_tweets(fanout_run.services, alice, bob)

    outcome = await audit(settings, alice, bob)

    assert outcome.clean, describe_outcome(outcome)


async def test_a_timeline_without_its_sentinel_is_incomplete_and_repair_rebuilds_it(
    settings: Settings, api: Api, fanout_run: FanoutRun, redis_client: aioredis.Redis
) -> None:
    alice, bob, ids = await three_tweets_followed(api, fanout_run)
    key = timeline_key(settings, bob.id)
    # As a fanout push into an expired timeline leaves it: one entry, no sentinel, no expiry.
    await redis_client.delete(key)
    await redis_client.zadd(key, {member(ids[-1]): 0})

    found = await audit(settings, alice, bob)

    drift = drift_of(found.before, bob)
    assert not drift.complete and not drift.missing and not drift.extra
    assert found.before.timelines.incomplete == 1
    assert_repaired(await audit(settings, alice, bob, repair=True))
    assert await timeline_members(redis_client, settings, bob.id) == [
        SENTINEL,
        *(member(i) for i in ids),
    ]
    assert await redis_client.ttl(key) > 0


async def test_sampling_picks_only_users_who_have_a_timeline_in_redis(
    settings: Settings,
) -> None:
    # A key prefix of this test's own, so that the sample is drawn from its users only.
    own = settings.with_overrides(redis_prefix=f"{settings.redis_prefix}{unique_name('audit')}:")
    async with running_app(own) as api:
        readers = [await reader(api) for _ in range(3)]
        await api.sign_up()  # no timeline
    async with provide_services(own, process_name="test-audit") as services:
        auditor = timeline_auditor(services, grace=timedelta(0))
        everyone = {r.int_id for r in readers}
        assert {u async for u in auditor.timeline_users()} == everyone
        sample = await auditor.sample_users(2)
        assert len(sample) == 2 and set(sample) <= everyone
        assert set(await auditor.sample_users(10)) == everyone
        findings = await auditor.audit(sorted(everyone))
        assert findings.audited == 3 and findings.clean
        await services.redis.delete(*(services.keys.timeline(u) for u in everyone))


# -- counters --------------------------------------------------------------------------------


async def test_audit_finds_a_wrong_follower_count_and_repair_sets_the_recount(
    settings: Settings, api: Api, services: Services, pg: asyncpg.Connection
) -> None:
    alice, bob = await reader(api), await api.sign_up()
    await bob.follow(alice)
    await alice.post("counted")
    await index_tweets(services, alice, bob)
    await pg.execute("UPDATE users SET followers_count = 7 WHERE id = $1", alice.int_id)

    found = await audit(settings, alice, bob)

    assert [
        (w.table, w.row_id, w.column, w.stored, w.recount) for w in found.before.counters.wrong
    ] == [("users", alice.int_id, "followers_count", 7, 1)]
    assert any(
        f"@{alice.username} followers_count 7, recount 1" in line
        for line in describe_outcome(found)
    )
    repaired = await audit(settings, alice, bob, repair=True)
    assert_repaired(repaired)
    assert repaired.repair is not None and repaired.repair.counters.mode_changes == []
    assert (await api.user(alice.username))["followers_count"] == 1


async def test_audit_finds_wrong_like_and_reply_counts_and_repair_sets_the_recount(
    settings: Settings, api: Api, services: Services, pg: asyncpg.Connection
) -> None:
    alice, bob = await reader(api), await reader(api)
    tweet = await alice.post("liked and answered")
    await bob.like(tweet["id"])
    await bob.post("an answer", reply_to=tweet["id"])
    assert (await api.tweet(tweet["id"]))["like_count"] == 1  # now in the tweet cache
    await index_tweets(services, alice, bob)
    await pg.execute(
        "UPDATE tweets SET like_count = 5, reply_count = 0 WHERE id = $1", int(tweet["id"])
    )

    found = await audit(settings, alice, bob)

    wrong = {(w.column, w.stored, w.recount) for w in found.before.counters.wrong}
    assert wrong == {("like_count", 5, 1), ("reply_count", 0, 1)}
    assert_repaired(await audit(settings, alice, bob, repair=True))
    shown = await api.tweet(tweet["id"])
    assert (shown["like_count"], shown["reply_count"]) == (1, 1)


async def test_a_counter_repair_does_not_lose_likes_made_while_it_runs(
    settings: Settings, api: Api, services: Services, pg: asyncpg.Connection
) -> None:
    alice = await reader(api)
    fans = await api.sign_up_many(6)
    tweet = await alice.post("popular")
    await index_tweets(services, alice)
    await pg.execute("UPDATE tweets SET like_count = 40 WHERE id = $1", int(tweet["id"]))
    # The repair recounts under the row lock the likes take: each like lands before the
    # lock (and is recounted) or after it (and adds to the recount), never in between.
    repair = asyncio.create_task(audit(settings, alice, repair=True))
    for fan in fans:
        await fan.like(tweet["id"])
    await repair
    assert await pg.fetchval("SELECT like_count FROM tweets WHERE id = $1", int(tweet["id"])) == 6
    assert (await audit(settings, alice)).clean


# -- search ----------------------------------------------------------------------------------


async def test_audit_finds_a_document_missing_from_the_search_index_and_repair_puts_it_back(
    settings: Settings, api: Api, services: Services
) -> None:
    alice = await reader(api)
    ids = await alice.post_many(3, "findable")
    await index_tweets(services, alice)
    lost = int(ids[1])
    await services.search.delete([lost])

    found = await audit(settings, alice)

    assert found.before.search.missing == [lost]
    assert found.before.timelines.clean and found.before.counters.clean
    assert_repaired(await audit(settings, alice, repair=True))
    assert lost in await services.search.documents([lost])


async def test_audit_finds_a_deleted_tweets_document_left_in_the_index_and_repair_removes_it(
    settings: Settings, api: Api, services: Services
) -> None:
    alice = await reader(api)
    doomed = (await alice.post("regrettable"))["id"]
    await index_tweets(services, alice)
    await alice.delete(doomed)  # no indexer runs: the document stays

    found = await audit(settings, alice)

    assert found.before.search.extra == [int(doomed)]
    assert_repaired(await audit(settings, alice, repair=True))
    assert await services.search.documents([int(doomed)]) == {}


# -- the command line ------------------------------------------------------------------------


async def test_the_audit_command_exits_1_with_drift_and_0_after_repair(
    settings: Settings,
    api: Api,
    fanout_run: FanoutRun,
    redis_client: aioredis.Redis,
    pg: asyncpg.Connection,
) -> None:
    alice = await reader(api)
    bob = await follower_of(alice, api)
    ids = await alice.post_many(2)
    assert await fanout_run.settled()
    await index_tweets(fanout_run.services, alice, bob)
    await redis_client.zrem(timeline_key(settings, bob.id), member(ids[0]))
    await pg.execute("UPDATE users SET tweets_count = 9 WHERE id = $1", alice.int_id)
    users = ("--user", alice.username, "--user", bob.username, "--grace", "0")

    found = await run_chirp(settings, "audit", *users)
    assert found.code == 1, found.err
    assert "drift found" in found.out
    assert f"@{bob.username}: {int(ids[0])}" in found.out
    assert f"@{alice.username} tweets_count 9, recount 2" in found.out

    as_json = await run_chirp(settings, "audit", *users, "--json")
    assert as_json.code == 1, as_json.err
    body = json.loads(as_json.out)
    assert body["clean"] is False and body["repair"] is None
    assert body["before"]["timelines"]["drift"][0]["missing"] == [ids[0]]
    assert body["before"]["counters"]["wrong"][0]["id"] == alice.id

    repaired = await run_chirp(settings, "audit", *users, "--repair")
    assert repaired.code == 0, repaired.out + repaired.err
    assert repaired.out.rstrip().endswith("result:     clean after repair")

    again = await run_chirp(settings, "audit", *users)
    assert again.code == 0, again.out + again.err


async def test_the_audit_command_refuses_an_unknown_user(settings: Settings) -> None:
    result = await run_chirp(settings, "audit", "--user", "nobody-at-all")
    assert result.code == 1
    assert "no user named 'nobody-at-all'" in result.err
