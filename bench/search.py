"""Search benchmark: indexing throughput end to end through JetStream, and search latency.

    .venv/bin/python -m bench.search                 # 1,000,000 tweets
    .venv/bin/python -m bench.search --tweets 100000 # a smaller run

What it does, against the services `make run` uses (reused if they answer, embedded if not):

1. starts the real worker (`chirp worker search-indexer`, a separate process) on a fresh
   database, stream and alias;
2. generates N tweets by U users straight into Postgres (COPY), with a Zipf-distributed
   made-up vocabulary, 10% of them with an image;
3. publishes one TweetPosted event per tweet to JetStream as fast as it can (the outbox
   relay's job, done here in bulk) while the worker indexes them, and times it from the
   first publish until Typesense holds all N documents: tweets/s end to end;
4. measures the machine's ceiling for the same work: raw Typesense imports of the same
   documents in 1,000-document batches, straight from this process into a scratch collection;
5. runs Q queries one at a time (words common and rare, two words, typos, prefixes, `from:`,
   `has:media`) through the whole API (in-process ASGI: parsing, Typesense, hydration from
   Redis/Postgres) and through the Typesense adapter alone, and reports p50/p99 of both.

Everything it creates (database, stream, collections, Redis keys) is removed at the end unless
--keep is given. Not part of the test suite. On a machine where other runs share the embedded
Typesense, give the benchmark its own: CHIRP_VAR_DIR=/tmp/chirp-bench
CHIRP_TYPESENSE_URL=http://127.0.0.1:18208 (started there, stopped at the end)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient

from bench.common import bench_database, with_database
from domain.events import TweetPosted, encode_event
from domain.ids import EPOCH_MS, TIMESTAMP_SHIFT
from domain.search import parse_search_query
from launcher.services import ServiceUrls, ensure_services
from realtime.indexer import CONSUMER
from storage.search_index import SearchUnavailable
from web.app import create_app
from web.container import Services
from web.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SYLLABLES = [
    "ka", "lo", "mi", "ne", "ru", "ta", "vo", "shi", "pe", "da", "zu", "bri", "gon", "tel",
    "mar", "qui", "sen", "dor", "fa", "lin", "ost", "ver", "chu", "wen", "yel", "pra",
]  # fmt: skip


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def vocabulary(size: int, rng: random.Random) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def snowflake(unix_ms: int, sequence: int) -> int:
    return ((unix_ms - EPOCH_MS) << TIMESTAMP_SHIFT) | (sequence & 0x3FFFFF)


class Corpus:
    """Deterministic text: word i of the vocabulary has frequency ~ 1/(i+1)."""

    def __init__(self, seed: int, vocabulary_size: int = 20_000) -> None:
        self.rng = random.Random(seed)
        self.words = vocabulary(vocabulary_size, self.rng)
        weights = [1 / (i + 1) for i in range(len(self.words))]
        total = sum(weights)
        self.cumulative: list[float] = []
        running = 0.0
        for w in weights:
            running += w / total
            self.cumulative.append(running)

    def text(self) -> str:
        count = self.rng.randint(5, 30)
        return " ".join(self.rng.choices(self.words, cum_weights=self.cumulative, k=count))


async def generate(
    services: Services, tweets: int, users: int, seed: int, log: Callable[[str], None]
) -> tuple[list[int], list[str]]:
    """Users and tweets in Postgres; returns the tweet ids and the usernames."""
    corpus = Corpus(seed)
    now_ms = int(time.time() * 1000)
    user_ids = [snowflake(now_ms - 40 * 86_400_000, i) for i in range(users)]
    usernames = [f"bench{i}" for i in range(users)]
    async with services.db.pool.acquire() as connection:
        await connection.copy_records_to_table(
            "users",
            records=[(uid, name, name, "x") for uid, name in zip(user_ids, usernames, strict=True)],
            columns=["id", "username", "display_name", "password_hash"],
        )
    # Spread over the last 30 days, in id order.
    span_ms = 30 * 86_400_000
    start_ms = now_ms - span_ms
    ids: list[int] = []
    chunk = 50_000
    started = time.perf_counter()
    for offset in range(0, tweets, chunk):
        rows = []
        for n in range(offset, min(tweets, offset + chunk)):
            ms = start_ms + (n * span_ms) // tweets
            tweet_id = snowflake(ms, n)
            ids.append(tweet_id)
            media = (
                json.dumps(
                    [{"id": tweet_id + 1, "content_type": "image/png", "key": f"{n:032x}.png"}]
                )
                if corpus.rng.random() < 0.1
                else "[]"
            )
            rows.append(
                (
                    tweet_id,
                    corpus.rng.choice(user_ids),
                    corpus.text(),
                    datetime.fromtimestamp(ms / 1000, UTC),
                    media,
                )
            )
        async with services.db.pool.acquire() as connection:
            await connection.copy_records_to_table(
                "tweets",
                records=rows,
                columns=["id", "author_id", "text", "created_at", "media"],
            )
        log(f"  generated {min(tweets, offset + chunk):>9,} tweets")
    log(f"  generation took {time.perf_counter() - started:.1f} s")
    return ids, usernames


async def publish_all(services: Services, ids: list[int], authors: dict[int, int]) -> float:
    """One TweetPosted per tweet, as the relay would publish them; returns events/s."""
    started = time.perf_counter()
    window = 2_000
    next_event = ids[-1] + 1_000_000
    for offset in range(0, len(ids), window):
        batch = ids[offset : offset + window]
        events = [
            TweetPosted(event_id=next_event + offset + i, tweet_id=t, author_id=authors[t])
            for i, t in enumerate(batch)
        ]
        await asyncio.gather(
            *(services.publisher.publish(e.event_id, e.kind, encode_event(e)) for e in events)
        )
    return len(ids) / (time.perf_counter() - started)


@contextlib.asynccontextmanager
async def running_worker(settings: Settings, services: Services) -> AsyncIterator[None]:
    """The real worker (`chirp worker search-indexer`) as a separate process, started before
    any tweet exists: what it indexes then arrives only through JetStream. (Started on an
    existing backlog, its reconciling at start would index straight from Postgres.)"""
    env = {**os.environ, **settings.to_env(), "CHIRP_LOG_LEVEL": "WARNING"}
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "web.cli", "worker", "search-indexer", env=env, cwd=ROOT
    )
    try:
        for _ in range(600):
            with contextlib.suppress(Exception):
                await services.link.js.consumer_info(services.names.stream, CONSUMER)
                break
            if worker.returncode is not None:
                raise RuntimeError(f"the worker exited with {worker.returncode}")
            await asyncio.sleep(0.1)
        yield
    finally:
        worker.terminate()
        await asyncio.wait_for(worker.wait(), 30)


async def wait_indexed(services: Services, expected: int, log: Callable[[str], None]) -> None:
    last_report = time.perf_counter()
    while True:
        try:
            count = await services.search.count()
        except SearchUnavailable:
            count = 0  # a restart; the worker holds its batch and carries on after
        if count >= expected:
            return
        if time.perf_counter() - last_report > 10:
            log(f"  indexed {count:>9,} / {expected:,}")
            last_report = time.perf_counter()
        await asyncio.sleep(0.05)


async def import_ceiling(services: Services, ids: list[int], sample: int) -> float:
    """Raw Typesense imports of the same documents, batches of 1,000: the machine's ceiling
    for the indexing work itself (no JetStream, no worker)."""
    index = services.search
    scratch = f"{index.alias}_ceiling"
    await index.create_collection(scratch)
    try:
        chosen = ids[:sample]
        tweets = await services.tweets.get_many(chosen)
        documents = await services.search_sync.documents_for([tweets[i] for i in chosen])
        started = time.perf_counter()
        for offset in range(0, len(documents), 1000):
            rejected = await index.upsert(documents[offset : offset + 1000], collection=scratch)
            assert not rejected, rejected
        return len(documents) / (time.perf_counter() - started)
    finally:
        await index.drop_collection(scratch)


def queries(corpus: Corpus, usernames: list[str], count: int, rng: random.Random) -> list[str]:
    words = corpus.words
    made: list[str] = []
    kinds = ["common", "rare", "two", "typo", "prefix", "from", "media"]
    for i in range(count):
        kind = kinds[i % len(kinds)]
        common = words[rng.randrange(50)]
        rare = words[rng.randrange(1_000, len(words))]
        if kind == "common":
            made.append(common)
        elif kind == "rare":
            made.append(rare)
        elif kind == "two":
            made.append(f"{common} {words[rng.randrange(500)]}")
        elif kind == "typo":
            pos = len(rare) // 2
            made.append(rare[:pos] + ("x" if rare[pos] != "x" else "y") + rare[pos + 1 :])
        elif kind == "prefix":
            made.append(f"{common} {rare[:4]}")
        elif kind == "from":
            made.append(f"{common} from:{rng.choice(usernames)}")
        else:
            made.append(f"{common} has:media")
    return made


async def measure_search(
    settings: Settings, services: Services, qs: list[str]
) -> dict[str, dict[str, float]]:
    engine: list[float] = []
    for q in qs:
        started = time.perf_counter()
        await services.search.search(parse_search_query(q), page=1, per_page=20)
        engine.append((time.perf_counter() - started) * 1000)
    api: list[float] = []
    found: list[int] = []
    async with AsyncTestClient(app=create_app(settings, run_relay=False)) as client:
        # Litestar's default logging config shows every Typesense request at INFO.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        for q in qs[:20]:  # warm the caches of the process like a running app's
            await client.get("/api/v1/search", params={"q": q})
        for q in qs:
            started = time.perf_counter()
            response = await client.get("/api/v1/search", params={"q": q})
            api.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, response.text
            found.append(response.json()["found"])
    return {
        "engine": {
            "p50_ms": percentile(engine, 0.5),
            "p99_ms": percentile(engine, 0.99),
            "mean_ms": statistics.fmean(engine),
        },
        "api": {
            "p50_ms": percentile(api, 0.5),
            "p99_ms": percentile(api, 0.99),
            "mean_ms": statistics.fmean(api),
            "median_found": statistics.median(found),
        },
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    def log(line: str) -> None:
        print(line, flush=True)

    tag = secrets.token_hex(3)
    machine = Settings.from_env()
    settings = machine.with_overrides(
        database_url=with_database(machine.database_url, f"chirp_bench_{tag}"),
        redis_prefix=f"bench:{tag}:",
        stream=f"BENCH_{tag.upper()}",
        subject_prefix=f"bench_{tag}",
        search_collection=f"bench_{tag}_tweets",
        var_dir=machine.var_dir if machine.var_dir.is_absolute() else ROOT / machine.var_dir,
        db_pool_size=20,
    )
    urls = ServiceUrls(
        settings.database_url,
        settings.redis_url,
        settings.nats_url,
        settings.typesense_url,
        settings.typesense_api_key,
    )
    stack = ensure_services(urls, settings.var_dir, log=log)
    try:
        async with bench_database(
            settings, args.keep, process_name="bench-search", drop_search_index=True
        ) as services:
            await services.search.ensure()
            async with running_worker(settings, services):
                log(f"generating {args.tweets:,} tweets by {args.users:,} users")
                ids, usernames = await generate(services, args.tweets, args.users, args.seed, log)
                rows = await services.db.pool.fetch("SELECT id, author_id FROM tweets")
                authors = {r["id"]: r["author_id"] for r in rows}

                log("publishing TweetPosted events; the worker indexes them as they come")
                started = time.perf_counter()
                publish_rate = await publish_all(services, ids, authors)
                published = time.perf_counter()
                log(f"  published {publish_rate:,.0f} events/s")
                await wait_indexed(services, len(ids), log)
                index_seconds = time.perf_counter() - started
                drain_seconds = time.perf_counter() - published
                index_rate = len(ids) / index_seconds
                log(f"  indexed {index_rate:,.0f} tweets/s end to end ({index_seconds:.1f} s)")
                info = await services.link.js.consumer_info(services.names.stream, CONSUMER)
            dead = (await services.link.js.stream_info(services.names.dead_letter_stream)).state

            log("measuring the import ceiling (raw Typesense imports)")
            ceiling = await import_ceiling(services, ids, min(len(ids), args.ceiling_sample))
            log(f"  {ceiling:,.0f} documents/s")

            log(f"running {args.queries:,} queries")
            rng = random.Random(args.seed + 1)
            qs = queries(Corpus(args.seed), usernames, args.queries, rng)
            latency = await measure_search(settings, services, qs)
    finally:
        stack.stop()
    return {
        "tweets": args.tweets,
        "users": args.users,
        "queries": args.queries,
        "cpus": os.cpu_count(),
        "publish_events_per_s": round(publish_rate),
        "index_tweets_per_s": round(index_rate),
        "index_seconds": round(index_seconds, 1),
        "index_drain_after_publish_seconds": round(drain_seconds, 1),
        "import_ceiling_docs_per_s": round(ceiling),
        "index_vs_ceiling": round(index_rate / ceiling, 2),
        "consumer_pending_after": info.num_pending,
        "dead_lettered": dead.messages,
        "search": latency,
        "settings_env": " ".join(
            f"{k}={v}"
            for k, v in settings.to_env().items()
            if k.endswith(("DATABASE_URL", "STREAM", "SUBJECT_PREFIX", "SEARCH_COLLECTION"))
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tweets", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument("--ceiling-sample", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the data it created")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    text = json.dumps(report, indent=2)
    print(text)
    if args.keep:
        print(f"kept: {report['settings_env']}")
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
