"""`chirp streams`, `chirp trace` and `chirp admin`, run as the operator runs them: the real
command in its own process, against the session's services."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from storage.redis_store import RedisKeys
from tests.support import Api, FanoutRun, run_chirp, running_app, unique_name
from web.security import hash_token
from web.settings import Settings


def line_of(output: str, start: str) -> str:
    found = [line for line in output.splitlines() if line.strip().startswith(start)]
    assert found, output
    return found[0]


@pytest.fixture
async def idle_durable(fanout_run: FanoutRun) -> AsyncIterator[str]:
    """A durable consumer on the session's stream that nobody consumes: it only falls behind."""
    services = fanout_run.services
    durable = f"idle-{unique_name('c')}"
    await services.link.js.add_consumer(
        services.names.stream,
        ConsumerConfig(
            durable_name=durable, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.NEW
        ),
    )
    try:
        yield durable
    finally:
        await services.link.js.delete_consumer(services.names.stream, durable)


# -- chirp streams ---------------------------------------------------------------------------


async def test_streams_lists_the_event_stream_its_consumers_and_the_dead_letter_stream(
    settings: Settings, fanout_run: FanoutRun
) -> None:
    result = await run_chirp(settings, "streams")
    assert result.code == 0, result.err
    header = result.out.splitlines()[0]
    for column in ("PENDING", "ACK PENDING", "REDELIVERED", "OLDEST UNACKED", "DEAD LETTERS"):
        assert column in header
    assert line_of(result.out, settings.stream + " ")
    assert line_of(result.out, f"{settings.stream}_DLQ")
    fanout = line_of(result.out, "fanout ")
    assert fanout.split()[-1] == "ok"


async def test_streams_shows_a_consumer_that_falls_behind_as_lagging_with_its_oldest_age(
    settings: Settings, api: Api, fanout_run: FanoutRun, idle_durable: str
) -> None:
    author = await api.sign_up()
    await author.post_many(3)
    assert await fanout_run.settled()
    result = await run_chirp(settings, "streams", "--lag-threshold", "2")
    assert result.code == 0, result.err
    cells = line_of(result.out, idle_durable).split()
    assert cells[1] == "3"  # pending
    assert cells[-1] == "lagging"
    assert cells[5] != "-"  # the oldest unacknowledged message has an age
    assert line_of(result.out, "fanout ").split()[-1] == "ok"


async def test_streams_watch_refreshes_and_marks_a_growing_backlog(
    settings: Settings, api: Api, fanout_run: FanoutRun, idle_durable: str
) -> None:
    author = await api.sign_up()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "web.cli", "streams", "--watch", "--interval", "2", "--count", "2"),
        env={**os.environ, **settings.to_env()},
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    lines = []
    while not lines or lines[-1].strip():  # the first table ends with a blank line
        lines.append((await asyncio.wait_for(process.stdout.readline(), 30)).decode())
    assert idle_durable in "".join(lines)
    await author.post("a backlog that grows")  # between the two refreshes
    rest = (await asyncio.wait_for(process.stdout.read(), 30)).decode()
    assert await process.wait() == 0
    assert rest.count("STREAM / CONSUMER") == 1
    assert line_of("".join(lines), idle_durable).split()[-1] == "ok"
    assert line_of(rest, idle_durable).split()[-1] == "growing"


async def test_streams_says_so_when_nats_does_not_answer(settings: Settings) -> None:
    result = await run_chirp(settings.with_overrides(nats_url="nats://127.0.0.1:1"), "streams")
    assert result.code == 1
    assert "NATS is not answering" in result.err


# -- chirp trace -----------------------------------------------------------------------------


async def test_trace_follows_a_tweet_into_a_followers_timeline(
    settings: Settings, api: Api, fanout_run: FanoutRun
) -> None:
    author, reader = await api.sign_up(), await api.sign_up()
    await reader.follow(author)
    response = await api.client.post(
        "/api/v1/tweets",
        json={"text": "trace me"},
        headers={**author.auth, "X-Request-ID": "trace-cli-1"},
    )
    tweet_id = response.json()["id"]
    assert await fanout_run.settled()
    result = await run_chirp(settings, "trace", tweet_id, reader.username)
    assert result.code == 0, result.err
    out = result.out
    assert f"by @{author.username}" in line_of(out, "✓ stored")
    assert "request trace-cli-1" in line_of(out, "✓ outbox")
    assert "after commit" in line_of(out, "✓ published")
    assert "sequence" in line_of(out, "✓ in stream")
    assert "acknowledged" in line_of(out, "✓ consumer fanout")
    assert "to 1 follower timeline(s)" in line_of(out, "✓ fanned out")
    assert f"tl:{reader.id}" in line_of(out, f"✓ in @{reader.username}'s timeline")
    # The search indexer is not running here: the step is there, whatever it finds.
    assert any(line[2:].startswith("indexed: ") for line in out.splitlines()), out


async def test_trace_explains_a_tweet_missing_from_a_timeline_of_someone_not_following(
    settings: Settings, api: Api, fanout_run: FanoutRun
) -> None:
    author, stranger = await api.sign_up(), await api.sign_up()
    tweet_id = (await author.post("not for strangers"))["id"]
    assert await fanout_run.settled()
    result = await run_chirp(settings, "trace", tweet_id, stranger.username)
    assert "does not follow the author" in line_of(result.out, f"✗ in @{stranger.username}")


async def test_trace_explains_a_celebrity_tweet_is_merged_at_read_time(
    settings: Settings, fanout_run: FanoutRun
) -> None:
    async with running_app(settings.with_overrides(celebrity_threshold=1)) as api:
        star, first, second = await api.sign_up(), await api.sign_up(), await api.sign_up()
        await first.follow(star)
        await second.follow(star)
        tweet_id = (await star.post("hello, everyone"))["id"]
        assert await fanout_run.settled()
    result = await run_chirp(settings, "trace", tweet_id, first.username)
    assert "celebrity author" in line_of(result.out, "· fanned out")
    assert "celebrity merge" in line_of(result.out, f"✓ in @{first.username}")


async def test_trace_explains_an_inactive_follower_gets_no_fanout(
    settings: Settings, api: Api, fanout_run: FanoutRun, pg: asyncpg.Connection
) -> None:
    author, sleeper = await api.sign_up(), await api.sign_up()
    await sleeper.follow(author)
    await sleeper.timeline()  # the timeline exists in Redis
    assert await fanout_run.settled()  # the follow is merged before the tweet exists
    await pg.execute(
        "UPDATE users SET last_seen_at = now() - interval '90 days' WHERE id = $1",
        sleeper.int_id,
    )
    tweet_id = (await author.post("while you were away"))["id"]
    assert await fanout_run.settled()
    result = await run_chirp(settings, "trace", tweet_id, sleeper.username)
    assert "to 0 follower timeline(s)" in line_of(result.out, "✓ fanned out")
    assert "inactive since" in line_of(result.out, f"✗ in @{sleeper.username}")


async def test_trace_of_a_deleted_tweet_says_it_was_deleted(
    settings: Settings, api: Api, fanout_run: FanoutRun
) -> None:
    author = await api.sign_up()
    tweet_id = (await author.post("regrettable"))["id"]
    await author.delete(tweet_id)
    assert await fanout_run.settled()
    result = await run_chirp(settings, "trace", tweet_id, author.username)
    assert "since deleted" in line_of(result.out, "✓ stored")
    assert "TweetDeleted event" in line_of(result.out, "· deleted")
    assert "deleted" in line_of(result.out, f"✗ in @{author.username}")


async def test_trace_of_an_unknown_tweet_fails_and_says_why(
    settings: Settings, fanout_run: FanoutRun
) -> None:
    result = await run_chirp(settings, "trace", "12345")
    assert result.code == 1
    assert "no tweet 12345 in Postgres" in result.out


# -- chirp admin -----------------------------------------------------------------------------


async def test_admin_grant_and_revoke_set_the_users_admin_flag(
    settings: Settings, api: Api, pg: asyncpg.Connection
) -> None:
    person = await api.sign_up()
    granted = await run_chirp(settings, "admin", "grant", person.username.upper())
    assert granted.code == 0, granted.err
    assert await pg.fetchval("SELECT is_admin FROM users WHERE id = $1", person.int_id) is True
    revoked = await run_chirp(settings, "admin", "revoke", person.username)
    assert revoked.code == 0, revoked.err
    assert await pg.fetchval("SELECT is_admin FROM users WHERE id = $1", person.int_id) is False


async def test_admin_grant_drops_the_users_sessions_that_redis_keeps_for_every_process(
    settings: Settings, api: Api, redis_client: aioredis.Redis
) -> None:
    # They hold the admin flag: kept, they would show the old one for their whole lifetime.
    person = await api.sign_up()
    assert (await api.client.get("/api/v1/me", headers=person.auth)).status_code == 200
    key = RedisKeys(settings.redis_prefix).session(hash_token(person.token))
    assert await redis_client.exists(key)
    granted = await run_chirp(settings, "admin", "grant", person.username)
    assert granted.code == 0, granted.err
    assert not await redis_client.exists(key)


async def test_admin_grant_of_an_unknown_user_fails(settings: Settings) -> None:
    result = await run_chirp(settings, "admin", "grant", unique_name("nobody"))
    assert result.code == 1
    assert "no user named" in result.err
