"""Post -> seen on an open follower's WebSocket, under steady load.

A real `chirp serve` and a real `chirp worker fanout`. 50 readers keep `/api/v1/stream`
open; each follows 10 ordinary authors. The authors post at a steady rate (open loop) while
other users post in the background; for every (tweet, socket) pair the latency runs from the
moment the POST was sent to the moment the socket received the tweet. The whole path is
in it: the 201 commit, the relay's publish to JetStream, the fanout worker's pull, ZADDs
and presence check, the NATS live subject, the app's hub, hydration and the socket write."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from websockets.asyncio.client import connect

from bench.common import ChirpProcess, log, percentile, post_json, run_load, serving
from bench.context import Context
from bench.report import Report
from storage.fanout_log import FanoutLog
from web.security import hash_token

SOCKETS = 50
AUTHORS = 10
RATES = {"smoke": (10.0, 40.0), "small": (20.0, 100.0), "full": (20.0, 150.0)}


async def run(ctx: Context) -> dict[str, Any]:
    report = Report("push", ctx.size)
    graph = ctx.graph
    pool = ctx.services.db.pool
    readers = list(graph.tokens.items())
    sockets = readers[:SOCKETS]
    background = [t for _, t in readers[SOCKETS:]] or [t for _, t in readers]
    reader_ids = set(graph.tokens)
    authors = [
        graph.user_ids[i]
        for i in range(graph.users - 1, -1, -1)
        if graph.followers[i] <= graph.threshold and graph.user_ids[i] not in reader_ids
    ][:AUTHORS]
    author_tokens = [f"bench-author-{a}" for a in authors]
    await pool.copy_records_to_table(
        "access_tokens",
        records=[(hash_token(t), a) for a, t in zip(authors, author_tokens, strict=True)],
        columns=["token_hash", "user_id"],
    )
    await pool.execute(
        "INSERT INTO follows (follower_id, followee_id, id)"
        " SELECT f, a, 1 FROM unnest($1::bigint[]) f, unnest($2::bigint[]) a"
        " ON CONFLICT DO NOTHING",
        [u for u, _ in sockets],
        authors,
    )

    rate, background_rate = RATES[ctx.size]
    seconds = ctx.step * 3
    sent: dict[int, float] = {}
    answered: dict[int, float] = {}
    seen: dict[int, list[float]] = {}
    decoder = msgspec.json.Decoder()

    def record(status: int, body: bytes, began: float, done: float) -> None:
        if status == 201:
            tweet_id = int(decoder.decode(body)["id"])
            sent[tweet_id] = began
            answered[tweet_id] = done

    async def listen(token: str, ready: asyncio.Event, stop: asyncio.Event, url: str) -> None:
        async with connect(f"{url}/api/v1/stream?access_token={token}", max_queue=None) as ws:
            ready.set()
            while not stop.is_set():
                try:
                    message = await asyncio.wait_for(ws.recv(), 0.5)
                except TimeoutError:
                    continue
                now = time.perf_counter()
                event = decoder.decode(message)
                if event.get("event") == "tweet":
                    seen.setdefault(int(event["tweet"]["id"]), []).append(now)

    def post_as(tokens: list[str]) -> Any:
        def next_post(n: int) -> bytes:
            body = msgspec.json.encode({"text": f"live {n} hello"})
            return post_json("/api/v1/tweets", body, tokens[n % len(tokens)])

        return next_post

    worker = ChirpProcess(ctx.settings, "worker", "fanout")
    try:
        async with serving(ctx.settings, ctx.web_processes) as s:
            url = f"ws://{s.host}:{s.port}"
            stop = asyncio.Event()
            readies = [asyncio.Event() for _ in sockets]
            tasks = [
                asyncio.create_task(listen(t, r, stop, url))
                for (_, t), r in zip(sockets, readies, strict=True)
            ]
            await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 30)
            await asyncio.sleep(1.0)
            log(
                f"  {len(tasks)} sockets open; posting {rate}/s (+{background_rate}/s background)"
                f" for {seconds:.0f} s"
            )
            # This process both posts and reads the sockets: a delivery is timed when its
            # loop gets to it, so how late the loop runs is part of every figure.
            lags: list[float] = []
            lag_watch = asyncio.create_task(watch_loop_lag(lags, stop))
            measured, bg = await asyncio.gather(
                run_load(
                    s.host,
                    s.port,
                    post_as(author_tokens),
                    concurrency=16,
                    seconds=seconds,
                    rate=rate,
                    expect=201,
                    on_response=record,
                ),
                run_load(
                    s.host,
                    s.port,
                    post_as(background),
                    concurrency=16,
                    seconds=seconds,
                    rate=background_rate,
                    expect=201,
                ),
            )
            await asyncio.sleep(3.0)
            stop.set()
            await asyncio.gather(*tasks, lag_watch, return_exceptions=True)
    finally:
        worker.stop()

    latencies = [
        (t - sent[tweet_id]) * 1000
        for tweet_id, times in seen.items()
        if tweet_id in sent
        for t in times
    ]
    expected = len(sent) * len(sockets)
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    log(f"  {len(latencies):,} of {expected:,} deliveries; p50 {p50:.1f} ms p99 {p99:.1f} ms")
    stages = await split_into_stages(ctx, sent, answered, seen)
    loop_lag = (round(percentile(lags, 0.5), 1), round(percentile(lags, 0.99), 1))
    stages["this process's loop running late"] = loop_lag
    for stage, (s50, s99) in stages.items():
        log(f"    {stage:<34} p50 {s50:7.1f} ms  p99 {s99:7.1f} ms")
    report.columns = [
        "posts",
        "sockets",
        "deliveries",
        "expected",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
    ]
    report.rows = [
        [
            len(sent),
            len(sockets),
            len(latencies),
            expected,
            round(p50, 1),
            round(percentile(latencies, 0.9), 1),
            round(p99, 1),
            round(max(latencies, default=0), 1),
        ]
    ]
    report.target("post -> socket p99", p99, 1000, "max", " ms")
    report.target("deliveries / expected", len(latencies) / max(1, expected), 1.0, "min")
    report.data = {
        "rate_per_s": rate,
        "background_rate_per_s": background_rate,
        "seconds": seconds,
        "posts_measured": measured.summary(),
        "posts_background": bg.summary(),
        "p50_ms": p50,
        "p99_ms": p99,
        "stages_p50_p99_ms": stages,
    }
    report.notes.append("where the time goes (p50 / p99 ms of each stage, per delivery):")
    for stage, (s50, s99) in stages.items():
        report.notes.append(f"  {stage}: {s50:.1f} / {s99:.1f}")

    def plot(figure: Any) -> None:
        ax = figure.subplots()
        ordered = sorted(latencies)
        ax.plot(ordered, [i / max(1, len(ordered)) for i in range(len(ordered))])
        ax.axvline(1000, color="red", linestyle="--", label="p99 budget 1 s")
        ax.set_xscale("log")
        ax.set_xlabel("post -> socket latency, ms")
        ax.set_ylabel("fraction of deliveries")
        ax.legend()

    report.plot = plot
    return report.finish()


async def split_into_stages(
    ctx: Context,
    sent: dict[int, float],
    answered: dict[int, float],
    seen: dict[int, list[float]],
) -> dict[str, tuple[float, float]]:
    """Each delivery's latency in three parts, from the fanout worker's record of each tweet
    (`fo:{tweet_id}`, written once its timelines and live messages are out): the request
    (sent -> 201), the fanout (201 -> the worker done: the relay's publish, JetStream, the
    worker's fetch, query, pushes and live publish) and the live path (the worker done ->
    the socket: the NATS subject, the app's hub, hydration, the socket write)."""
    log_ = FanoutLog(ctx.services.redis, ctx.services.keys)
    # The records' times are wall-clock; the load generator's are perf_counter.
    offset = time.time() - time.perf_counter()
    request: list[float] = []
    fanout: list[float] = []
    live: list[float] = []
    for tweet_id, times in seen.items():
        if tweet_id not in sent:
            continue
        record = await log_.get(tweet_id)
        if record is None:
            continue
        done = record.at - offset
        for t in times:
            request.append((answered[tweet_id] - sent[tweet_id]) * 1000)
            fanout.append((done - answered[tweet_id]) * 1000)
            live.append((t - done) * 1000)
    return {
        name: (round(percentile(values, 0.5), 1), round(percentile(values, 0.99), 1))
        for name, values in (
            ("request (sent -> 201)", request),
            ("fanout (201 -> worker done)", fanout),
            ("live (worker done -> socket)", live),
        )
    }


async def watch_loop_lag(lags: list[float], stop: asyncio.Event, every: float = 0.005) -> None:
    """How much later than asked this process's event loop wakes a task, in ms."""
    while not stop.is_set():
        asked = time.perf_counter()
        await asyncio.sleep(every)
        lags.append((time.perf_counter() - asked - every) * 1000)
