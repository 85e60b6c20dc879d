"""Fanout: timeline inserts per second, against `redis-benchmark`'s pipelined ZADD measured
on the same Redis in the same run.

1. ceiling: `redis-benchmark -P 64` running `ZADD <prefix>zb:<random> 0 <random>`
   (random keys, like timeline inserts), keys under the run's own prefix;
2. one tweet to 10,000 followers: the worker's own code (`Fanout.fan_out_tweet`: the
   follower query read in chunks, a push script call per chunk, the presence check for live
   push), called in this process;
3. steady posting: a real `chirp worker fanout` process working off TweetPosted events for
   tweets by ordinary (non-celebrity) authors of the graph, published to JetStream as fast as
   the relay would (its `publish_many`, 500 events at a time); from the first publish until
   the consumer is idle (polled every 5 ms: the whole phase takes a few tenths of a second,
   so 50 ms polls misstated it by up to a quarter)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import subprocess
import time
from datetime import UTC, datetime
from typing import Any

from bench.common import ChirpProcess, CpuMeter, log
from bench.context import Context
from bench.report import Report
from bench.search import snowflake
from domain.events import TweetPosted, encode_event
from web.workers import fanout_consumer

STEADY_TWEETS = {"smoke": 1_000, "small": 5_000, "full": 10_000}
FANOUT_FOLLOWERS = 10_000


def redis_benchmark(ctx: Context, requests: int) -> dict[str, Any]:
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return {"error": "redis-benchmark not found (apt-get install redis-tools)"}
    from urllib.parse import urlsplit

    url = urlsplit(ctx.settings.redis_url)
    argv = [binary, "-h", url.hostname or "127.0.0.1", "-p", str(url.port or 6379)]
    if url.password:
        argv += ["-a", url.password]
    argv += ["-c", "50", "-P", "64", "-n", str(requests), "-r", "100000", "--csv"]
    argv += ["ZADD", f"{ctx.settings.redis_prefix}zb:__rand_int__", "0", "__rand_int__"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=300).stdout
    last = [line for line in out.strip().splitlines() if line.startswith('"ZADD')][-1]
    rate = float(last.split(",")[1].strip('"'))
    return {"command": " ".join(argv[argv.index("-c") :]), "zadd_per_s": rate}


async def make_big_author(ctx: Context) -> tuple[int, list[int]]:
    """An ordinary author (below the threshold) with exactly 10,000 followers: users of the
    graph and, if it is smaller than that, extra users made for the purpose."""
    pool = ctx.services.db.pool
    now_ms = int(time.time() * 1000)
    author = snowflake(now_ms - 39 * 86_400_000, 3_000_000)
    followers = [u for u in ctx.graph.user_ids][:FANOUT_FOLLOWERS]
    extra = [
        snowflake(now_ms - 39 * 86_400_000, 3_000_001 + i)
        for i in range(FANOUT_FOLLOWERS - len(followers))
    ]
    rows = [(author, "fan10k", "Fan 10k", "x")] + [
        (u, f"x{i}", "x", "x") for i, u in enumerate(extra)
    ]
    await pool.copy_records_to_table(
        "users", records=rows, columns=["id", "username", "display_name", "password_hash"]
    )
    followers += extra
    await pool.copy_records_to_table(
        "follows",
        records=[(f, author, snowflake(now_ms - 1000, i)) for i, f in enumerate(followers)],
        columns=["follower_id", "followee_id", "id"],
    )
    await pool.execute(
        "UPDATE users SET followers_count = $2 WHERE id = $1", author, len(followers)
    )
    return author, followers


async def insert_tweets(ctx: Context, authors: list[int], first_seq: int) -> list[int]:
    now_ms = int(time.time() * 1000)
    ids = [snowflake(now_ms, first_seq + i) for i in range(len(authors))]
    await ctx.services.db.pool.copy_records_to_table(
        "tweets",
        records=[
            (t, a, f"steady {i}", datetime.now(UTC))
            for i, (t, a) in enumerate(zip(ids, authors, strict=True))
        ],
        columns=["id", "author_id", "text", "created_at"],
    )
    return ids


async def run(ctx: Context) -> dict[str, Any]:
    report = Report("fanout", ctx.size)
    s = ctx.services

    log("redis-benchmark: pipelined ZADD")
    ceiling = await asyncio.to_thread(
        redis_benchmark, ctx, 2_000_000 if ctx.size != "smoke" else 1_000_000
    )
    log(f"  {ceiling}")

    log(f"one tweet to {FANOUT_FOLLOWERS:,} followers (Fanout.fan_out_tweet, in process)")
    author, followers = await make_big_author(ctx)
    _, fanout = fanout_consumer(s)
    single: list[float] = []
    for attempt in range(3):
        [tweet_id] = await insert_tweets(ctx, [author], 3_500_000 + attempt)
        event = TweetPosted(event_id=tweet_id + 1, tweet_id=tweet_id, author_id=author)
        started = time.perf_counter()
        await fanout.fan_out_tweet(event)
        elapsed = time.perf_counter() - started
        single.append(len(followers) / elapsed)
        log(f"  {elapsed * 1000:,.0f} ms: {single[-1]:,.0f} inserts/s")
    single_rate = sorted(single)[1]

    count = STEADY_TWEETS[ctx.size]
    log(f"steady posting: {count:,} tweets through a `chirp worker fanout` process")
    rng = random.Random(11)
    graph = ctx.graph
    normal = [i for i in range(graph.users) if graph.followers[i] <= graph.threshold]
    chosen = [rng.choice(normal) for _ in range(count)]
    authors = [graph.user_ids[i] for i in chosen]
    # Every follower is active (datagen sets last_seen_at to now), plus the author's own.
    expected_inserts = sum(graph.followers[i] + 1 for i in chosen)
    ids = await insert_tweets(ctx, authors, 3_600_000)
    worker = ChirpProcess(ctx.settings, "worker", "fanout")
    try:
        for _ in range(600):
            with contextlib.suppress(Exception):
                await s.link.js.consumer_info(s.names.stream, "fanout")
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        meter = CpuMeter(worker.pid, served_by="fanout worker")
        started = time.perf_counter()
        window = 500
        for offset in range(0, count, window):
            batch = list(
                zip(ids[offset : offset + window], authors[offset : offset + window], strict=True)
            )
            events = [TweetPosted(event_id=t + 7, tweet_id=t, author_id=a) for t, a in batch]
            # As the outbox relay publishes.
            failed = await s.publisher.publish_many(
                [(e.event_id, e.kind, encode_event(e)) for e in events]
            )
            for error in failed:
                if error is not None:
                    raise error
        published = time.perf_counter() - started
        while True:
            info = await s.link.js.consumer_info(s.names.stream, "fanout")
            if info.num_pending == 0 and info.num_ack_pending == 0:
                break
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - started
        cpu = meter.per_request(count)
    finally:
        worker.stop()
    steady_rate = expected_inserts / elapsed
    log(
        f"  {count:,} tweets, {expected_inserts:,} inserts in {elapsed:.2f} s "
        f"(published in {published:.2f} s): {steady_rate:,.0f} inserts/s,"
        f" {count / elapsed:,.0f} tweets/s"
    )
    log(f"  CPU µs per tweet: {cpu}")

    zadd = ceiling.get("zadd_per_s", float("nan"))
    report.columns = ["measure", "inserts/s", "vs ZADD ceiling"]
    report.rows = [
        ["redis-benchmark ZADD -P 64", zadd, 1.0],
        ["one tweet -> 10,000 followers", single_rate, single_rate / zadd],
        ["steady posting (worker process)", steady_rate, steady_rate / zadd],
    ]
    report.target("fanout (10k followers) / pipelined ZADD", single_rate / zadd, 0.25, "min")
    report.target("fanout (steady) / pipelined ZADD", steady_rate / zadd, 0.25, "min")
    report.data = {
        "redis_benchmark": ceiling,
        "single_tweet_10k": {"followers": len(followers), "runs_inserts_per_s": single},
        "steady": {
            "tweets": count,
            "inserts": expected_inserts,
            "seconds": round(elapsed, 2),
            "publish_seconds": round(published, 2),
            "inserts_per_s": round(steady_rate),
            "tweets_per_s": round(count / elapsed, 1),
            "cpu_us_per_tweet": cpu,
        },
    }

    def plot(figure: Any) -> None:
        ax = figure.subplots()
        names = [r[0] for r in report.rows]
        ax.barh(names, [r[1] for r in report.rows], color=["grey", "tab:blue", "tab:orange"])
        ax.axvline(0.25 * zadd, color="red", linestyle="--", label="target: 25% of ZADD")
        ax.set_xlabel("timeline inserts per second")
        ax.legend()

    report.plot = plot
    return report.finish()
