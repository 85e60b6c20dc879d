"""Scale-out on one machine: several `chirp serve` processes and several processes of each
worker share the work. Every tweet reaches every follower's timeline once and is indexed
once, each process does part of the work (read from its own metrics directory), and live
push reaches a socket held by another web process than the one the tweet was posted to."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import string
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import websockets
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from domain.search import SearchQuery
from launcher.process import free_port
from realtime.indexer import CONSUMER as INDEXER
from tests.integration.test_live_stream import ws_url
from tests.support import (
    SENTINEL,
    Account,
    Api,
    ServerProcess,
    consumer_idle,
    eventually,
    member,
    running_app,
    timeline_members,
)
from web.container import Services, provide_services
from web.settings import Settings

pytestmark = pytest.mark.slow

AUTHORS = 4
FOLLOWERS = 3  # under the session's celebrity threshold (5): every tweet is pushed
TWEETS_PER_AUTHOR = 10
BURST = 8
# Bursts are spaced so that a consumer busy with one burst leaves the next to the other
# process: more than the indexer's 0.1 s batching window.
BURST_GAP = 0.25
# Upper bounds, not waits. Six processes importing the app at once take a few seconds on an
# idle machine, much longer on a busy two-core one; and the shared durable consumers may
# start with what the whole suite left behind.
STARTUP_TIMEOUT = 60.0
BACKLOG_TIMEOUT = 60.0

# What each kind of process does, as (metric, labels): its share of the work.
WORK: dict[str, tuple[str, dict[str, str]]] = {
    "serve": (
        "chirp_http_request_duration_seconds_count",
        {"route": "/api/v1/tweets", "method": "POST", "status": "201"},
    ),
    "fanout": ("chirp_fanout_tweets_total", {"mode": "push"}),
    INDEXER: ("chirp_events_total", {"consumer": INDEXER, "result": "ok"}),
}


@dataclass
class Process:
    """One `chirp serve` or `chirp worker KIND` process, with its own metrics directory."""

    kind: str
    server: ServerProcess
    metrics_dir: Path

    def sample(self, name: str, labels: dict[str, str]) -> float:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.metrics_dir))  # type: ignore[no-untyped-call]
        return registry.get_sample_value(name, labels) or 0.0

    def work(self) -> float:
        """Posts served (web) or events handled (worker) since the process started."""
        return self.sample(*WORK[self.kind])


@dataclass
class Deployment:
    processes: list[Process]
    # The test's own connections, for looking at the consumers, the outbox and the index.
    services: Services
    baseline: dict[int, float] = field(default_factory=dict)

    def of(self, kind: str) -> list[Process]:
        return [p for p in self.processes if p.kind == kind]

    def web(self, index: int) -> ServerProcess:
        return self.of("serve")[index].server

    async def settled(self) -> bool:
        """Every outbox event is published and every running worker's consumer has nothing
        left to deliver or to ack."""
        unpublished = await self.services.db.pool.fetchval(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL"
        )
        if unpublished:
            return False
        durables = {p.kind for p in self.processes if p.kind != "serve"}
        for durable in durables:
            if not await consumer_idle(self.services, durable):
                return False
        return True

    async def start_counting(self) -> None:
        """Waits for earlier tests' backlog to be worked off (the durable consumers are
        shared by the session), then counts each process's work from here on."""
        drained = await eventually(self.settled, timeout=BACKLOG_TIMEOUT, interval=0.1)
        assert drained, "earlier tests' backlog was not worked off"
        self.baseline = {id(p): p.work() for p in self.processes}

    def shares(self, kind: str) -> list[float]:
        """The work each process of the kind did since `start_counting`."""
        return [p.work() - self.baseline[id(p)] for p in self.of(kind)]

    async def finished(self, kind: str, total: int, timeout: float = 20.0) -> list[float]:
        """The shares once the pipeline is idle and the kind's processes have counted at least
        `total`. An event counted twice (a redelivery) would show as more than `total`: once
        the consumers are idle nothing is left unacked that could be redelivered."""

        async def done() -> bool:
            return await self.settled() and sum(self.shares(kind)) >= total

        assert await eventually(done, timeout=timeout, interval=0.1), (kind, self.shares(kind))
        return self.shares(kind)


@contextlib.asynccontextmanager
async def deployment(settings: Settings, tmp_path: Path, *kinds: str) -> AsyncIterator[Deployment]:
    """Starts a process per kind ("serve", or a worker's name), each with its own metrics
    directory and worker id, web processes on free ports; yields once all are up, stops them
    all at the end."""
    processes: list[Process] = []
    try:
        for number, kind in enumerate(kinds):
            directory = tmp_path / f"{kind}-{number}"
            directory.mkdir()
            own = settings.with_overrides(
                metrics_dir=str(directory),
                worker_id=-1,  # each claims its own (a Postgres advisory lock)
                port=free_port() if kind == "serve" else settings.port,
            )
            argv = ("serve",) if kind == "serve" else ("worker", kind)
            processes.append(Process(kind, ServerProcess(own, *argv), directory))
        for process in processes:
            if process.kind == "serve":
                await process.server.wait_ready(STARTUP_TIMEOUT)
                # Up is not yet connected: a process serves while its NATS connection is still
                # being made (and a socket opened before that would hear nothing live).
                assert await eventually(
                    partial(live_ready, process.server), timeout=STARTUP_TIMEOUT, interval=0.2
                ), f"{process.server.base_url}/ready never had NATS and Redis"
            else:
                await process.server.wait_for_log("worker started", STARTUP_TIMEOUT)
        async with provide_services(settings, process_name="test-scale-out") as services:
            yield Deployment(processes, services)
    finally:
        # Told to stop all at once: a worker takes up to its fetch timeout to notice.
        for process in processes:
            if process.server.process.poll() is None:
                process.server.process.terminate()
        for process in processes:
            process.server.stop()


async def live_ready(server: ServerProcess) -> bool:
    """The web process's /ready says what live push needs answers: NATS and Redis."""
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        report = (await client.get("/ready")).json()
    return bool(report.get("nats") == "ok" and report.get("redis") == "ok")


async def post_in_bursts(
    deployment: Deployment,
    post: Callable[[int], Awaitable[str]],
    *,
    burst: int,
    bursts: int,
    max_bursts: int,
    kinds: Sequence[str],
) -> list[str]:
    """Posts bursts of `burst` tweets (`post(n)` posts the n-th, returns its id), spaced so
    that the processes of each kind can take turns, until at least `bursts` were posted and
    every process of those kinds has done part of the work (or `max_bursts`: the test's
    assertions then say which process got none)."""
    tweet_ids: list[str] = []
    for number in range(max_bursts):
        start = number * burst
        tweet_ids += await asyncio.gather(*(post(n) for n in range(start, start + burst)))
        if number + 1 >= bursts:

            async def everyone_worked() -> bool:
                return all(share > 0 for kind in kinds for share in deployment.shares(kind))

            if await eventually(everyone_worked, timeout=BURST_GAP, interval=0.05):
                break
        else:
            await asyncio.sleep(BURST_GAP)
    assert len(set(tweet_ids)) == len(tweet_ids)
    return tweet_ids


async def timelines_hold(
    redis_client: aioredis.Redis, settings: Settings, followers: list[Account], tweet_ids: list[str]
) -> bool:
    """Each follower's Redis home timeline holds exactly these tweets (and the sentinel)."""
    expected = sorted([SENTINEL, *(member(t) for t in tweet_ids)])
    for follower in followers:
        if sorted(await timeline_members(redis_client, settings, follower.id)) != expected:
            return False
    return True


def search_word() -> str:
    """A made-up word no other test uses: searching it finds this test's tweets only."""
    return "".join(secrets.choice(string.ascii_lowercase) for _ in range(12))


async def assert_indexed_once(services: Services, word: str, tweet_ids: list[str]) -> None:
    """Every tweet is in the index at the session's alias, and nothing else has the word."""
    index = services.search
    ids = [int(t) for t in tweet_ids]

    async def all_indexed() -> bool:
        return set(await index.documents(ids)) == set(ids)

    assert await eventually(all_indexed, timeout=10.0), "not every tweet was indexed"
    page = await index.search(SearchQuery(keywords=word), page=1, per_page=250)
    assert page.found == len(ids), page
    assert sorted(page.ids) == sorted(ids)


async def sign_up_followers(api: Api, authors: list[Account]) -> list[Account]:
    followers = await api.sign_up_many(FOLLOWERS)
    for follower in followers:
        for author in authors:
            await follower.follow(author)
        await follower.timeline()  # the Redis timeline exists, so pushes land in it
    return followers


def via(api: Api, account: Account) -> Account:
    """The same account, talking to another web process."""
    return Account(api, account.username, account.id, account.token)


async def test_two_fanout_workers_share_the_work_and_every_tweet_arrives_exactly_once(
    settings: Settings, tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    async with (
        deployment(settings, tmp_path, "fanout", "fanout") as running,
        running_app(settings) as api,
    ):
        authors = await api.sign_up_many(AUTHORS)
        followers = await sign_up_followers(api, authors)
        await running.start_counting()

        async def post(n: int) -> str:
            return str((await authors[n % AUTHORS].post(f"scale out {n}"))["id"])

        tweet_ids = await post_in_bursts(
            running,
            post,
            burst=BURST,
            bursts=AUTHORS * TWEETS_PER_AUTHOR // BURST,
            max_bursts=AUTHORS * TWEETS_PER_AUTHOR // BURST * 3,
            kinds=["fanout"],
        )
        assert await eventually(
            lambda: timelines_hold(redis_client, settings, followers, tweet_ids), timeout=20.0
        ), "not every tweet reached every timeline"
        counts = await running.finished("fanout", len(tweet_ids))
        assert sum(counts) == len(tweet_ids), counts  # each fanned out by exactly one worker
        assert all(count > 0 for count in counts), counts  # both workers took a share
        for follower in followers:
            assert sorted(await follower.all_timeline_ids(limit=100)) == sorted(tweet_ids)


async def test_two_search_indexers_share_the_work_and_every_tweet_is_indexed_once(
    settings: Settings, tmp_path: Path
) -> None:
    word = search_word()
    async with (
        deployment(settings, tmp_path, INDEXER, INDEXER) as running,
        running_app(settings) as api,
    ):
        authors = await api.sign_up_many(AUTHORS)
        await running.start_counting()

        async def post(n: int) -> str:
            return str((await authors[n % AUTHORS].post(f"{word} number {n}"))["id"])

        tweet_ids = await post_in_bursts(
            running, post, burst=BURST, bursts=4, max_bursts=20, kinds=[INDEXER]
        )
        await assert_indexed_once(running.services, word, tweet_ids)
        counts = await running.finished(INDEXER, len(tweet_ids))
        assert sum(counts) == len(tweet_ids), counts  # each event applied by one indexer
        assert all(count > 0 for count in counts), counts  # both indexers took a share


async def test_two_web_processes_two_of_each_worker_share_the_work_and_push_reaches_the_other_process(  # noqa: E501
    settings: Settings, tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    word = search_word()
    kinds = ("serve", "serve", "fanout", "fanout", INDEXER, INDEXER)
    async with (
        deployment(settings, tmp_path, *kinds) as running,
        httpx.AsyncClient(base_url=running.web(0).base_url) as first_client,
        httpx.AsyncClient(base_url=running.web(1).base_url) as second_client,
    ):
        apis = [Api(first_client), Api(second_client)]
        authors = await apis[0].sign_up_many(AUTHORS)
        followers = await sign_up_followers(apis[1], authors)
        # Each author posts through both web processes, alternately.
        posters = [[via(api, author) for api in apis] for author in authors]
        # A follower listening on each web process.
        listeners = [followers[0], followers[1]]
        sockets = [
            await websockets.connect(ws_url(running.web(i), listener.token))
            for i, listener in enumerate(listeners)
        ]
        received: list[list[str]] = [[], []]

        async def read(socket: websockets.ClientConnection, into: list[str]) -> None:
            async for frame in socket:
                event: dict[str, Any] = json.loads(frame)
                if event["event"] == "tweet":
                    into.append(event["tweet"]["id"])

        readers = [
            asyncio.create_task(read(socket, into))
            for socket, into in zip(sockets, received, strict=True)
        ]
        try:
            # The fanout worker pushes only to followers marked online (`on:{user_id}`).
            async def online() -> bool:
                keys = [running.services.keys.online(f.int_id) for f in listeners]
                return bool(await redis_client.exists(*keys) == len(keys))

            assert await eventually(online), "the sockets' users were not marked online"
            await running.start_counting()
            posted_through: list[list[str]] = [[], []]

            async def post(n: int) -> str:
                web = (n // AUTHORS) % 2
                text = f"{word} everywhere {n}"
                tweet_id = str((await posters[n % AUTHORS][web].post(text))["id"])
                posted_through[web].append(tweet_id)
                return tweet_id

            tweet_ids = await post_in_bursts(
                running,
                post,
                burst=AUTHORS * 2,
                bursts=4,
                max_bursts=10,
                kinds=["fanout", INDEXER],
            )
            total = len(tweet_ids)

            # Live push: each socket got every tweet, including those posted through the other
            # web process, each once.
            async def all_pushed() -> bool:
                return all(set(ids) == set(tweet_ids) for ids in received)

            assert await eventually(all_pushed, timeout=10.0), [len(r) for r in received]
            for web, ids in enumerate(received):
                assert len(ids) == total, Counter(ids).most_common(3)
                assert set(posted_through[1 - web]) <= set(ids)
        finally:
            for socket in sockets:
                await socket.close()
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

        assert await eventually(
            lambda: timelines_hold(redis_client, settings, followers, tweet_ids), timeout=20.0
        ), "not every tweet reached every timeline exactly once"
        await assert_indexed_once(running.services, word, tweet_ids)

        # Each web process served the posts sent to it, and each worker took a share.
        async def served() -> bool:
            return running.shares("serve") == [len(ids) for ids in posted_through]

        assert await eventually(served), (running.shares("serve"), posted_through)
        assert all(len(ids) > 0 for ids in posted_through), posted_through
        for kind in ("fanout", INDEXER):
            counts = await running.finished(kind, total)
            assert sum(counts) == total, (kind, counts)  # exactly once
            assert all(count > 0 for count in counts), (kind, counts)  # split
        for follower in followers:
            assert sorted(await follower.all_timeline_ids(limit=100)) == sorted(tweet_ids)
