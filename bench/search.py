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
   `has:media`) through the Typesense adapter alone, through the hydration alone (the ids the
   engine found, turned into tweets from Redis/Postgres) and through the whole API
   (in-process ASGI: parsing, Typesense, hydration), and reports p50/p99 of each, overall and
   per kind of query. Each of the two hydrating passes starts with the run's Redis keys
   deleted, so both meet the cold caches the first pass would. The answers that went past the
   search budget (CHIRP_SEARCH_BUDGET_MS; from the newest matches only) are asked again with
   no budget, to count how many first pages differ from the complete answer's.

Everything it creates (database, stream, collections, Redis keys) is removed at the end unless
--keep is given. `--reuse TAG` runs only step 5 against a data set an earlier `--keep` run
left (TAG as in its database chirp_bench_TAG; give the same --seed), and removes it afterwards
unless --keep is given again. Not part of the test suite. On a machine where other runs share
the embedded Typesense, give the benchmark its own: CHIRP_VAR_DIR=/tmp/chirp-bench
CHIRP_TYPESENSE_URL=http://127.0.0.1:18208 (started there unless one answers, stopped at the
end if it was started)."""

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

from bench.common import bench_database, delete_keys, with_database
from domain.events import TweetPosted, encode_event
from domain.ids import EPOCH_MS, TIMESTAMP_SHIFT
from domain.search import parse_search_query
from launcher.services import ensure_services
from realtime.indexer import CONSUMER
from storage.search_index import SearchPage, SearchUnavailable, TypesenseIndex
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
    """One TweetPosted per tweet, published as the relay does (publish_many); returns events/s."""
    started = time.perf_counter()
    window = 2_000
    next_event = ids[-1] + 1_000_000
    for offset in range(0, len(ids), window):
        batch = ids[offset : offset + window]
        events = [
            TweetPosted(event_id=next_event + offset + i, tweet_id=t, author_id=authors[t])
            for i, t in enumerate(batch)
        ]
        failed = await services.publisher.publish_many(
            [(e.event_id, e.kind, encode_event(e)) for e in events]
        )
        for error in failed:
            if error is not None:
                raise error
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


KINDS = ("common", "rare", "two", "typo", "prefix", "from", "media")


def queries(
    corpus: Corpus, usernames: list[str], count: int, rng: random.Random
) -> list[tuple[str, str]]:
    """`count` queries as (kind, q), the kinds in turn."""
    words = corpus.words
    made: list[tuple[str, str]] = []
    for i in range(count):
        kind = KINDS[i % len(KINDS)]
        common = words[rng.randrange(50)]
        rare = words[rng.randrange(1_000, len(words))]
        if kind == "common":
            q = common
        elif kind == "rare":
            q = rare
        elif kind == "two":
            q = f"{common} {words[rng.randrange(500)]}"
        elif kind == "typo":
            pos = len(rare) // 2
            q = rare[:pos] + ("x" if rare[pos] != "x" else "y") + rare[pos + 1 :]
        elif kind == "prefix":
            q = f"{common} {rare[:4]}"
        elif kind == "from":
            q = f"{common} from:{rng.choice(usernames)}"
        else:
            q = f"{common} has:media"
        made.append((kind, q))
    return made


def summary(timings: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(timings, 0.5),
        "p99_ms": percentile(timings, 0.99),
        "max_ms": max(timings),
        "mean_ms": statistics.fmean(timings),
    }


def by_kind(kinds: list[str], timings: list[float]) -> dict[str, dict[str, float]]:
    return {
        kind: summary([t for k, t in zip(kinds, timings, strict=True) if k == kind])
        for kind in KINDS
        if kind in kinds
    }


async def measure_search(
    settings: Settings, services: Services, qs: list[tuple[str, str]]
) -> dict[str, Any]:
    kinds = [kind for kind, _ in qs]
    engine: list[float] = []
    pages: list[SearchPage] = []
    for _, q in qs:
        started = time.perf_counter()
        page = await services.search.search(parse_search_query(q), page=1, per_page=20)
        engine.append((time.perf_counter() - started) * 1000)
        pages.append(page)
    newest = await compare_newest(settings, qs, pages)

    await delete_keys(services, f"{services.keys.prefix}*")
    hydrate: list[float] = []
    for page in pages:
        started = time.perf_counter()
        await services.reader.views(None, page.ids)
        hydrate.append((time.perf_counter() - started) * 1000)

    await delete_keys(services, f"{services.keys.prefix}*")
    api: list[float] = []
    found: list[int] = []
    async with AsyncTestClient(app=create_app(settings, run_relay=False)) as client:
        # Litestar's default logging config shows every Typesense request at INFO.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        for _, q in qs[:20]:  # warm the caches of the process like a running app's
            await client.get("/api/v1/search", params={"q": q})
        for _, q in qs:
            started = time.perf_counter()
            response = await client.get("/api/v1/search", params={"q": q})
            api.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, response.text
            found.append(response.json()["found"])
    return {
        "engine": summary(engine),
        "hydrate": summary(hydrate),
        "api": {**summary(api), "median_found": statistics.median(found)},
        "newest_answers": newest,
        "by_kind": {
            "engine": by_kind(kinds, engine),
            "hydrate": by_kind(kinds, hydrate),
            "api": by_kind(kinds, api),
            "median_found": {
                kind: statistics.median(f for k, f in zip(kinds, found, strict=True) if k == kind)
                for kind in KINDS
                if kind in kinds
            },
        },
    }


async def compare_newest(
    settings: Settings, qs: list[tuple[str, str]], pages: list[SearchPage]
) -> dict[str, Any]:
    """The answers past the budget (from the newest matches only) against the complete
    answers an index without a budget gives: how many have the same first page, and what
    share of the matches their `found` counts."""
    cut = [(kind, q, page) for (kind, q), page in zip(qs, pages, strict=True) if not page.complete]
    exact_index = TypesenseIndex(
        settings.typesense_url,
        settings.typesense_api_key,
        settings.search_collection,
        timeout=60.0,
    )
    differing: list[tuple[str, str]] = []
    shares: list[float] = []
    try:
        for kind, q, page in cut:
            exact = await exact_index.search(parse_search_query(q), page=1, per_page=20)
            if page.ids != exact.ids:
                differing.append((kind, q))
            shares.append(page.found / max(exact.found, 1))
    finally:
        await exact_index.close()
    return {
        "count": len(cut),
        "by_kind": {kind: sum(1 for k, _, _ in cut if k == kind) for kind in KINDS},
        "same_first_page": len(cut) - len(differing),
        "differing": differing,
        "median_found_share": statistics.median(shares) if shares else None,
    }


def kind_table(latency: dict[str, Any]) -> str:
    """Per kind of query: p50/p99 of each layer, and how many tweets such queries find."""
    rows = [f"{'kind':>8} {'engine p50/p99':>16} {'hydrate p50/p99':>16} {'API p50/p99':>16}"]
    per = latency["by_kind"]
    for kind in per["api"]:
        cells = [
            f"{per[layer][kind]['p50_ms']:7.1f}/{per[layer][kind]['p99_ms']:<7.1f}"
            for layer in ("engine", "hydrate", "api")
        ]
        rows.append(
            f"{kind:>8} "
            + " ".join(f"{c:>16}" for c in cells)
            + f"  found ~{per['median_found'][kind]:,.0f}"
        )
    newest = latency["newest_answers"]
    rows.append(
        f"answered from the newest matches (past the budget): {newest['count']} "
        f"{ {k: n for k, n in newest['by_kind'].items() if n} }; first page the same as "
        f"the complete answer's: {newest['same_first_page']} of {newest['count']}"
    )
    return "\n".join(rows)


async def build(
    services: Services, settings: Settings, args: argparse.Namespace, log: Callable[[str], None]
) -> tuple[dict[str, Any], list[str]]:
    """Steps 1 to 4: the data set, indexed through the worker, and the import ceiling.
    Returns the indexing figures and the usernames."""
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
    return {
        "publish_events_per_s": round(publish_rate),
        "index_tweets_per_s": round(index_rate),
        "index_seconds": round(index_seconds, 1),
        "index_drain_after_publish_seconds": round(drain_seconds, 1),
        "import_ceiling_docs_per_s": round(ceiling),
        "index_vs_ceiling": round(index_rate / ceiling, 2),
        "consumer_pending_after": info.num_pending,
        "dead_lettered": dead.messages,
    }, usernames


async def run(args: argparse.Namespace) -> dict[str, Any]:
    def log(line: str) -> None:
        print(line, flush=True)

    reuse = getattr(args, "reuse", None)
    tag = reuse or secrets.token_hex(3)
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
    stack = ensure_services(settings.service_urls(), settings.var_dir, log=log)
    try:
        async with bench_database(
            settings, args.keep, process_name="bench-search", drop_search_index=True
        ) as services:
            if reuse:
                tweets = await services.db.pool.fetchval("SELECT count(*) FROM tweets")
                if not tweets:
                    raise SystemExit(f"no kept data set chirp_bench_{tag}")
                indexed = await services.search.count()
                log(f"reusing {tweets:,} tweets ({indexed:,} indexed) of chirp_bench_{tag}")
                # The order `generate` made them in, which the query mix draws from.
                usernames = [
                    r["username"]
                    for r in await services.db.pool.fetch("SELECT username FROM users ORDER BY id")
                ]
                indexing: dict[str, Any] = {}
            else:
                tweets = args.tweets
                indexing, usernames = await build(services, settings, args, log)

            log(f"running {args.queries:,} queries")
            rng = random.Random(args.seed + 1)
            qs = queries(Corpus(args.seed), usernames, args.queries, rng)
            latency = await measure_search(settings, services, qs)
            log(kind_table(latency))
    finally:
        stack.stop()
    return {
        "tweets": tweets,
        "users": len(usernames),
        "queries": args.queries,
        "cpus": os.cpu_count(),
        **indexing,
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
    parser.add_argument(
        "--reuse",
        metavar="TAG",
        help="only run the queries, against the data set chirp_bench_TAG kept by --keep",
    )
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    text = json.dumps(report, indent=2)
    print(text)
    if args.keep:
        tag = report["settings_env"].split("chirp_bench_", 1)[1].split()[0]
        print(f"kept: {report['settings_env']} (again: --reuse {tag})")
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
