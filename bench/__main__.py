"""`make bench` (or `uv run --group bench python -m bench`): every benchmark, one run.

    python -m bench --size smoke                 # CI size, a few minutes
    python -m bench --size small --only timeline # one benchmark
    python -m bench --size full                  # 100,000 users, 1,000,000 tweets

One data set is generated per run (bench/datagen.py) into its own database, Redis prefix and
stream (never those of `make run` or the tests), and removed at the end unless --keep. Each
benchmark prints a table and writes JSON and a PNG into bench/results/ (git-ignored); the
targets of all of them, met or not, are collected in bench/results/summary.json. The search
benchmark (bench/search.py) brings its own data set, sized from --size."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from bench import fanout, posting, push_latency, timeline
from bench import search as search_bench
from bench.common import (
    RESULTS,
    bench_database,
    bench_settings,
    cpu_jiffies,
    log,
    new_tag,
    python_loop_ns,
    start_stack,
    steal_share,
)
from bench.context import Context
from bench.datagen import SIZES, celebrity_threshold, generate
from bench.report import Report

STEP_SECONDS = {"smoke": 3.0, "small": 8.0, "full": 10.0}
SEARCH_SIZES = {
    "smoke": {"tweets": 20_000, "users": 2_000, "queries": 200, "ceiling_sample": 10_000},
    "small": {"tweets": 200_000, "users": 10_000, "queries": 1_000, "ceiling_sample": 50_000},
    "full": {"tweets": 1_000_000, "users": 10_000, "queries": 2_000, "ceiling_sample": 100_000},
}
GRAPH_BENCHMARKS: dict[str, Callable[[Context], Awaitable[dict[str, Any]]]] = {
    "timeline": timeline.run,
    "fanout": fanout.run,
    "push": push_latency.run,
    "posting": posting.run,
}
ALL = [*GRAPH_BENCHMARKS, "search"]


async def run_search(size: str) -> dict[str, Any]:
    report = Report("search", size)
    args = argparse.Namespace(seed=7, keep=False, **SEARCH_SIZES[size])
    figures = await search_bench.run(args)
    report.columns = ["measure", "value"]
    api = figures["search"]["api"]
    newest = figures["search"]["newest_answers"]
    report.rows = [
        ["indexing tweets/s (end to end)", figures["index_tweets_per_s"]],
        ["raw import ceiling docs/s", figures["import_ceiling_docs_per_s"]],
        ["API search p50 ms", round(api["p50_ms"], 2)],
        ["API search p99 ms", round(api["p99_ms"], 2)],
        ["engine p99 ms", round(figures["search"]["engine"]["p99_ms"], 2)],
        ["hydration p99 ms", round(figures["search"]["hydrate"]["p99_ms"], 2)],
        [
            "past the budget: answers (same first page)",
            f"{newest['count']} ({newest['same_first_page']})",
        ],
    ]
    per_kind = figures["search"]["by_kind"]
    for kind, timings in per_kind["api"].items():
        engine = per_kind["engine"][kind]
        report.rows.append(
            [
                f"{kind}: API p50/p99, engine p99 ms",
                f"{timings['p50_ms']:.1f} / {timings['p99_ms']:.1f}, {engine['p99_ms']:.1f}",
            ]
        )
    report.target("search p99 (API)", api["p99_ms"], 100, "max", " ms")
    report.data = {"search": figures}
    return report.finish()


async def main_async(args: argparse.Namespace) -> None:
    only = [n.strip() for n in args.only.split(",")] if args.only else ALL
    unknown = set(only) - set(ALL)
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {sorted(unknown)}; choose from {ALL}")
    size = SIZES[args.size]
    tag = new_tag()
    settings = bench_settings(tag, celebrity_threshold=celebrity_threshold(size["users"]))
    documents: list[dict[str, Any]] = []
    started = time.time()
    speed_before, jiffies = python_loop_ns(), cpu_jiffies()
    log(f"machine: a pure-Python loop at {speed_before} ns per iteration")
    stack = start_stack(settings)
    try:
        graph_benches = [n for n in only if n in GRAPH_BENCHMARKS]
        if graph_benches:
            async with bench_database(settings, keep=args.keep) as services:
                database = settings.database_url.rsplit("/", 1)[-1]
                log(
                    f"generating the {args.size} graph: {size['users']:,} users, "
                    f"{size['tweets']:,} tweets (database {database})"
                )
                graph = await generate(services, **size, seed=args.seed)
                log(f"  {graph.summary()}")
                ctx = Context(
                    size=args.size,
                    settings=settings,
                    services=services,
                    graph=graph,
                    step=args.step or STEP_SECONDS[args.size],
                    web_processes=args.web_processes,
                )
                for name in graph_benches:
                    log(f"\n-- {name} --")
                    document = await GRAPH_BENCHMARKS[name](ctx)
                    document["graph"] = graph.summary()
                    documents.append(document)
        if "search" in only:
            log("\n-- search --")
            documents.append(await run_search(args.size))
    finally:
        stack.stop()
    targets = [t for d in documents for t in d["targets"]]
    summary = {
        "size": args.size,
        "seconds": round(time.time() - started, 1),
        "targets": targets,
        # Compare runs of different days through these: ratios in one run hold, rates move.
        "machine": {
            "python_loop_ns": [speed_before, python_loop_ns()],
            "steal_share": steal_share(jiffies, cpu_jiffies()),
            "cpus": os.cpu_count(),
        },
        "loadavg": {d["benchmark"]: [d["loadavg_start"], d["loadavg_end"]] for d in documents},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n== targets ==")
    for t in targets:
        op = ">=" if t["kind"] == "min" else "<="
        print(
            f"  {'MET   ' if t['met'] else 'MISSED'} {t['name']}: {t['measured']:,}{t['unit']}"
            f" ({op} {t['target']}{t['unit']})"
        )
    machine = summary["machine"]
    print(
        f"  machine: a pure-Python loop at {machine['python_loop_ns']} ns per iteration"
        f" (start, end); CPU stolen by the hypervisor: {machine['steal_share']}"
    )
    print(f"  total {summary['seconds']} s; results in {RESULTS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=list(SIZES), default="smoke")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(ALL)}")
    parser.add_argument("--step", type=float, help="seconds per measured step")
    parser.add_argument(
        "--web-processes",
        type=int,
        default=os.cpu_count() or 1,
        help="chirp serve workers (default: one per core, the best measured on 2 cores)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    uvloop.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
