"""Posting throughput: `POST /api/v1/tweets` answered 201 per second against a real
`chirp serve`, with the outbox row in the same transaction and the relay publishing to
JetStream in the same process (the fanout worker is not running: its cost is measured by
bench/fanout.py). Afterwards, the outbox must be fully published within a few seconds."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec

from bench.common import log, post_json, run_load, serving
from bench.context import Context
from bench.report import Report

LEVELS = [4, 16, 64]


async def run(ctx: Context) -> dict[str, Any]:
    report = Report("posting", ctx.size)
    tokens = list(ctx.graph.tokens.values())
    pool = ctx.services.db.pool

    def next_post(n: int) -> bytes:
        body = msgspec.json.encode({"text": f"bench post {n} hello world"})
        return post_json("/api/v1/tweets", body, tokens[n % len(tokens)])

    points: list[dict[str, Any]] = []
    async with serving(ctx.settings, ctx.web_processes) as s:
        await run_load(s.host, s.port, next_post, concurrency=4, seconds=1.0, expect=201)
        for level in LEVELS:
            r = await run_load(
                s.host, s.port, next_post, concurrency=level, seconds=ctx.step, expect=201
            )
            points.append(r.summary())
            log(
                f"  posting c={level:<3} {r.throughput:>7,.0f} 201/s"
                f" p99 {points[-1]['p99_ms']} ms errors {r.errors}"
            )
        started = time.perf_counter()
        backlog = -1
        while time.perf_counter() - started < 15:
            backlog = await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            if backlog == 0:
                break
            await asyncio.sleep(0.1)
        drained = time.perf_counter() - started
        total = await pool.fetchval("SELECT count(*) FROM outbox")
    log(f"  outbox: {total:,} events, {backlog} unpublished after {drained:.1f} s")
    peak = max(p["rps"] for p in points)
    report.columns = ["conc", "201/s", "p50 ms", "p99 ms", "errors"]
    report.rows = [
        [p["concurrency"], p["rps"], p["p50_ms"], p["p99_ms"], p["errors"]] for p in points
    ]
    report.target("outbox unpublished after the run", float(backlog), 0, "max")
    report.data = {
        "web_processes": ctx.web_processes,
        "points": points,
        "peak_201_per_s": peak,
        "outbox_events": total,
        "outbox_unpublished": backlog,
        "outbox_drain_seconds": round(drained, 2),
    }

    def plot(figure: Any) -> None:
        ax = figure.subplots()
        xs = [p["concurrency"] for p in points]
        ax.plot(xs, [p["rps"] for p in points], marker="o", label="201/s")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent connections")
        ax.set_ylabel("tweets posted per second")
        twin = ax.twinx()
        twin.plot(xs, [p["p99_ms"] for p in points], marker="s", color="tab:red", label="p99 ms")
        twin.set_ylabel("p99 ms")
        ax.legend(loc="upper left")
        twin.legend(loc="upper right")

    report.plot = plot
    return report.finish()
