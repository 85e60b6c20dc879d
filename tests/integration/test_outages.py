"""Outages of the derived stores (DESIGN.md: Postgres is the source of truth; Redis and NATS
can fail without losing or breaking anything). Each test runs its own private nats-server or
redis-server so it can stop and restart it."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import nats
import pytest
import redis.asyncio as aioredis

from domain.events import TweetPosted, decode_event
from launcher.services import ManagedProcess, free_port, start_nats, start_redis
from tests.support import (
    SENTINEL,
    Api,
    eventually,
    member,
    one_event,
    running_app,
    running_fanout,
    timeline_members,
)
from web.settings import Settings

pytestmark = pytest.mark.slow


@pytest.fixture
async def private_nats(tmp_path: Path) -> AsyncIterator[ManagedProcess]:
    server = await asyncio.to_thread(start_nats, free_port(), tmp_path / "nats")
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[ManagedProcess]:
    server = await asyncio.to_thread(start_redis, free_port(), tmp_path / "redis")
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


def port_of(server: ManagedProcess) -> int:
    return int(server.argv[server.argv.index("-p" if "-p" in server.argv else "--port") + 1])


async def ready(api: Api) -> dict[str, str]:
    response = await api.client.get("/ready")
    assert response.status_code == 200, response.text
    report: dict[str, str] = response.json()
    return report


async def posted_events_in_stream(nats_url: str, stream: str) -> Counter[int]:
    """How many TweetPosted messages the stream holds per tweet id."""
    client = await nats.connect(nats_url, allow_reconnect=False)
    try:
        js = client.jetstream()
        info = await js.stream_info(stream)
        counts: Counter[int] = Counter()
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            message = await js.get_msg(stream, seq)
            event = decode_event(message.data or b"")
            if isinstance(event, TweetPosted):
                counts[event.tweet_id] += 1
        return counts
    finally:
        await client.close()


async def test_tweets_posted_while_nats_is_down_reach_followers_exactly_once_after_it_returns(
    settings: Settings, private_nats: ManagedProcess, pg: asyncpg.Connection
) -> None:
    nats_url = f"nats://127.0.0.1:{port_of(private_nats)}"
    tag = f"out{os.getpid()}{free_port()}"
    private = settings.with_overrides(
        nats_url=nats_url, stream=f"OUTAGE_{tag.upper()}", subject_prefix=tag
    )
    async with running_app(private) as api, running_fanout(private):
        alice, bob = await api.sign_up(), await api.sign_up()
        await bob.follow(alice)
        await bob.timeline()
        before = await alice.post("before the outage")

        async def arrived(ids: list[str]) -> bool:
            return set(ids) <= set(await bob.timeline_ids(limit=100))

        assert await eventually(lambda: arrived([before["id"]]), timeout=2.0)

        await asyncio.to_thread(private_nats.stop)
        assert (await ready(api))["nats"] == "down"
        during = [(await alice.post(f"during {i}"))["id"] for i in range(3)]  # 201 each
        for tweet_id in during:
            event = await one_event(pg, TweetPosted, tweet_id=int(tweet_id))
            published = await pg.fetchval(
                "SELECT published_at FROM outbox WHERE id = $1", event.event_id
            )
            assert published is None
        # The author sees them at once; the follower gets them from the worker only.
        assert (await alice.timeline_ids())[:3] == during[::-1]
        assert not set(during) & set(await bob.timeline_ids())

        await asyncio.to_thread(private_nats.start)
        assert await eventually(lambda: arrived(during), timeout=20.0), "never arrived"
        ids = await bob.timeline_ids(limit=100)
        assert ids == [*during[::-1], before["id"]]

        async def all_published() -> bool:
            count = await pg.fetchval(
                "SELECT count(*) FROM outbox WHERE id = ANY($1::bigint[]) AND published_at IS NULL",
                [(await one_event(pg, TweetPosted, tweet_id=int(t))).event_id for t in during],
            )
            return bool(count == 0)

        assert await eventually(all_published, timeout=10.0)
        assert (await ready(api))["nats"] == "ok"
        counts = await posted_events_in_stream(nats_url, private.stream)
        assert {t: counts[int(t)] for t in [before["id"], *during]} == {
            t: 1 for t in [before["id"], *during]
        }


async def test_with_redis_down_everything_still_answers_correctly_from_postgres(
    settings: Settings, private_redis: ManagedProcess
) -> None:
    redis_url = f"redis://127.0.0.1:{port_of(private_redis)}/0"
    private = settings.with_overrides(redis_url=redis_url)
    async with running_app(private) as api:
        alice, bob, carol = await api.sign_up(), await api.sign_up(), await api.sign_up()
        await bob.follow(alice)
        first = await alice.post("first")
        assert await bob.timeline_ids() == [first["id"]]  # built in Redis
        assert (await ready(api))["redis"] == "ok"

        await asyncio.to_thread(private_redis.stop)
        report = await ready(api)
        assert report["redis"] == "down" and report["postgres"] == "ok"

        dave = await api.sign_up()  # sign-up (and its rate limit) works
        response = await api.client.post(
            "/api/v1/sessions", json={"username": dave.username, "password": "correct horse 1"}
        )
        assert response.status_code == 200, response.text
        second = await alice.post("second")  # 201
        from_carol = await carol.post("carol")
        await bob.follow(carol)  # 200
        assert await bob.timeline_ids() == [from_carol["id"], second["id"], first["id"]]
        assert await alice.timeline_ids() == [second["id"], first["id"]]
        await bob.unfollow(alice)  # 200
        assert await bob.timeline_ids() == [from_carol["id"]]
        assert await bob.all_timeline_ids(limit=1) == [from_carol["id"]]
        assert (await api.tweet(second["id"]))["text"] == "second"
        assert (await bob.like(second["id"]))["like_count"] == 1
        await alice.delete(first["id"])
        assert await alice.timeline_ids() == [second["id"]]
        assert (await api.user(alice.username))["tweets_count"] == 1

        await asyncio.to_thread(private_redis.start)
        client = aioredis.Redis.from_url(redis_url)
        try:
            # Reads go through Redis again: the (empty, restarted) Redis gets the timeline
            # rebuilt into it, and serves the same content.
            async def rebuilt_in_redis() -> bool:
                ids = await bob.timeline_ids()
                assert ids == [from_carol["id"]]
                return SENTINEL in await timeline_members(client, private, bob.id)

            assert await eventually(rebuilt_in_redis, timeout=10.0)
            assert await timeline_members(client, private, bob.id) == [
                SENTINEL,
                member(from_carol["id"]),
            ]
            assert (await ready(api))["redis"] == "ok"
        finally:
            await client.aclose()


async def test_ready_answers_200_with_redis_and_nats_down_while_postgres_is_up(
    settings: Settings, private_nats: ManagedProcess, private_redis: ManagedProcess
) -> None:
    private = settings.with_overrides(
        nats_url=f"nats://127.0.0.1:{port_of(private_nats)}",
        redis_url=f"redis://127.0.0.1:{port_of(private_redis)}/0",
    )
    async with running_app(private) as api:
        report = await ready(api)
        assert (report["postgres"], report["redis"], report["nats"]) == ("ok", "ok", "ok")
        await asyncio.to_thread(private_nats.stop)
        await asyncio.to_thread(private_redis.stop)
        report = await ready(api)
        assert (report["postgres"], report["redis"], report["nats"]) == ("ok", "down", "down")
        assert (await api.client.get("/health")).status_code == 200
        # And it still serves.
        alice = await api.sign_up()
        tweet = await alice.post("still here")
        assert await alice.timeline_ids() == [tweet["id"]]


PROBE = """
import asyncio, json, sys
from tests.support import running_app
from web.settings import Settings

async def main():
    async with running_app(Settings.from_env()) as api:
        response = await api.client.get("/ready")
        print(json.dumps({"status": response.status_code, "body": response.json()}))

asyncio.run(main())
"""


async def test_the_app_starts_and_answers_ready_when_nats_and_redis_are_down_at_start(
    settings: Settings,
) -> None:
    # In a child process: an app that hangs at start must fail this test, not hang the suite.
    dead = settings.with_overrides(
        nats_url=f"nats://127.0.0.1:{free_port()}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
    )
    root = Path(__file__).resolve().parents[2]
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PROBE,
        cwd=root,
        env={**os.environ, **dead.to_env(), "PYTHONPATH": str(root)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(child.communicate(), timeout=12)
    except TimeoutError:
        child.kill()
        await child.communicate()
        pytest.fail("the app did not finish starting within 12 s with NATS down")
    assert child.returncode == 0, err.decode()[-3000:]
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["status"] == 200
    assert (result["body"]["postgres"], result["body"]["redis"], result["body"]["nats"]) == (
        "ok",
        "down",
        "down",
    )
