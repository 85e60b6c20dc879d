"""Scale-out: two fanout worker processes share the one durable consumer. Every tweet reaches
every follower's timeline once, and the work is split between the processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from tests.support import (
    SENTINEL,
    Account,
    ServerProcess,
    eventually,
    member,
    running_app,
    running_fanout,
    timeline_members,
)
from web.settings import Settings

pytestmark = pytest.mark.slow

AUTHORS = 4
FOLLOWERS = 3  # under the session's celebrity threshold (5): every tweet is pushed
TWEETS_PER_AUTHOR = 10
BURST = 8


def fanned_out(metrics_dir: Path) -> float:
    """chirp_fanout_tweets_total (push) of the worker whose metrics files are in the dir."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))
    value = registry.get_sample_value("chirp_fanout_tweets_total", {"mode": "push"})
    return value or 0.0


@pytest.fixture
async def two_workers(settings: Settings, tmp_path: Path) -> AsyncIterator[list[Path]]:
    """Two `chirp worker fanout` processes, each with its own metrics directory, started
    once earlier tests' backlog in the shared stream is worked off."""
    async with running_fanout(settings):
        pass
    dirs = [tmp_path / f"worker{i}" for i in range(2)]
    workers = []
    try:
        for directory in dirs:
            directory.mkdir()
            workers.append(
                ServerProcess(
                    settings.with_overrides(metrics_dir=str(directory)), "worker", "fanout"
                )
            )
        for worker in workers:
            await worker.wait_for_log("worker started")
        yield dirs
    finally:
        for worker in workers:
            worker.stop()


async def test_two_fanout_workers_share_the_work_and_every_tweet_arrives_exactly_once(
    settings: Settings, two_workers: list[Path], redis_client: aioredis.Redis
) -> None:
    async with running_app(settings) as api:
        authors = await api.sign_up_many(AUTHORS)
        followers = await api.sign_up_many(FOLLOWERS)
        for follower in followers:
            for author in authors:
                await follower.follow(author)
            await follower.timeline()  # the Redis timeline exists, so pushes land in it

        async def post(author: Account, i: int) -> str:
            return str((await author.post(f"scale out {i}"))["id"])

        posts = [(author, i) for i in range(TWEETS_PER_AUTHOR) for author in authors]
        tweet_ids: list[str] = []
        for start in range(0, len(posts), BURST):
            burst = posts[start : start + BURST]
            tweet_ids += await asyncio.gather(*(post(author, i) for author, i in burst))
            await asyncio.sleep(0.05)
        total = len(tweet_ids)
        assert len(set(tweet_ids)) == total == AUTHORS * TWEETS_PER_AUTHOR
        expected = sorted([SENTINEL, *(member(t) for t in tweet_ids)])

        async def all_pushed() -> bool:
            for follower in followers:
                members = await timeline_members(redis_client, settings, follower.id)
                if sorted(members) != expected:
                    return False
            return True

        assert await eventually(all_pushed, timeout=20.0), "not every tweet reached every timeline"

        async def all_counted() -> bool:
            return sum(fanned_out(d) for d in two_workers) >= total

        assert await eventually(all_counted, timeout=5.0)
        await asyncio.sleep(1.0)  # a redelivery, if there were one, would show by now
        counts = [fanned_out(d) for d in two_workers]
        assert sum(counts) == total, counts  # each tweet fanned out by exactly one worker
        assert all(count > 0 for count in counts), counts  # both workers took a share

        for follower in followers:
            ids = await follower.all_timeline_ids(limit=100)
            assert sorted(ids) == sorted(tweet_ids)
