"""Timeline reads against a real `chirp serve`: throughput and p50/p99 against concurrency for
`GET /health` (the framework's ceiling: same server, same client, no I/O), the home timeline
on the Redis path, and the home timeline on the Postgres-only fallback (the same server
pointed at a Redis that does not answer). Then the Redis path at 80% of its peak, open loop,
for the p99 budget."""

from __future__ import annotations

from typing import Any

from bench.common import (
    CpuMeter,
    HostSpeed,
    get_request,
    half_second_p99,
    log,
    percentile,
    run_load,
    serving,
)
from bench.context import Context
from bench.report import Report
from launcher.process import free_port

LEVELS = [1, 4, 16, 64]


async def run(ctx: Context) -> dict[str, Any]:
    report = Report("timeline", ctx.size)
    tokens = list(ctx.graph.tokens.values())
    health = get_request("/health")
    timeline = [get_request("/api/v1/timeline?limit=20", t) for t in tokens]

    def next_timeline(n: int) -> bytes:
        return timeline[n % len(timeline)]

    curves: dict[str, list[dict[str, Any]]] = {"health": [], "timeline": [], "fallback": []}
    # At the highest concurrency: µs of CPU per request by part (CpuMeter), and Redis's own
    # time per script call (INFO commandstats, as differences: the Redis may be shared).
    cpu: dict[str, dict[str, float]] = {}
    script_us: float | None = None
    async with serving(ctx.settings, ctx.web_processes) as s:
        log(f"warming {len(tokens)} timelines (first read rebuilds each from Postgres)")
        warm = await run_load(
            s.host, s.port, next_timeline, concurrency=8, seconds=600, rate=None, limit=len(tokens)
        )
        log(f"  {warm.requests} warmed, {warm.errors} errors")
        for level in LEVELS:
            for name, req in (("health", lambda n: health), ("timeline", next_timeline)):
                meter, scripts = CpuMeter(s.pid), await script_time(ctx)
                r = await run_load(s.host, s.port, req, concurrency=level, seconds=ctx.step)
                if level == LEVELS[-1]:
                    cpu[name] = meter.per_request(r.requests)
                    if name == "timeline":
                        script_us = scripts.per_call(await script_time(ctx))
                curves[name].append(r.summary())
                log(
                    f"  {name:<9} c={level:<3} {r.throughput:>8,.0f}/s"
                    f" p99 {r.summary()['p99_ms']} ms"
                )
        peak = max(c["rps"] for c in curves["timeline"])
        began: list[tuple[float, float]] = []

        def note(status: int, body: bytes, start: float, done: float) -> None:
            if status == 200:  # as the run's own latencies
                began.append((start, (done - start) * 1000))

        host = HostSpeed()
        try:
            at80 = await run_load(
                s.host,
                s.port,
                next_timeline,
                concurrency=64,
                seconds=ctx.step * 2,
                rate=0.8 * peak,
                on_response=note,
            )
        finally:
            host_ns = host.stop()
        log(f"  timeline at 80% of peak ({0.8 * peak:,.0f}/s): {at80.summary()}")
    # Over time, in seconds from the first request: the p99 of each half second beside the
    # host's speed then.
    origin = min((b for b, _ in began), default=0.0)
    over_time = {
        "p99_ms_by_half_second": [
            [t, round(p, 2)] for t, p in half_second_p99([(b - origin, ms) for b, ms in began])
        ],
        "host_loop_ns": [[round(t - origin, 1), ns] for t, ns in host_ns if t >= origin],
    }
    speeds = [ns for _, ns in over_time["host_loop_ns"]]

    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    async with serving(ctx.settings.with_overrides(redis_url=dead_redis), ctx.web_processes) as s:
        for level in LEVELS:
            meter = CpuMeter(s.pid)
            r = await run_load(s.host, s.port, next_timeline, concurrency=level, seconds=ctx.step)
            if level == LEVELS[-1]:
                cpu["fallback"] = meter.per_request(r.requests)
            curves["fallback"].append(r.summary())
            log(f"  fallback  c={level:<3} {r.throughput:>8,.0f}/s p99 {r.summary()['p99_ms']} ms")

    health_peak = max(c["rps"] for c in curves["health"])
    fallback_peak = max(c["rps"] for c in curves["fallback"])
    report.columns = ["path", "conc", "req/s", "p50 ms", "p99 ms", "errors"]
    for name, points in curves.items():
        for p in points:
            report.rows.append(
                [name, p["concurrency"], p["rps"], p["p50_ms"], p["p99_ms"], p["errors"]]
            )
    a = at80.summary()
    report.rows.append(["timeline@80%", 64, a["rps"], a["p50_ms"], a["p99_ms"], a["errors"]])
    report.notes.append(f"CPU per request at {LEVELS[-1]} connections, µs, by process:")
    for name, per in cpu.items():
        report.notes.append(f"  {name:<9} " + ", ".join(f"{p} {v:,.1f}" for p, v in per.items()))
    if script_us is not None:
        report.notes.append(f"Redis's own time per timeline script call: {script_us:.1f} µs")
    if speeds:
        report.notes.append(
            "The host during the 80% run, a pure-Python loop's CPU time per iteration: "
            f"{min(speeds)} to {max(speeds)} ns (median {percentile(speeds, 0.5)})"
        )
    report.target("timeline / trivial endpoint throughput", peak / health_peak, 0.5, "min")
    report.target("timeline p99 at 80% of peak", a["p99_ms"], 50, "max", " ms")
    report.target("Redis path / Postgres fallback throughput", peak / fallback_peak, 5, "min", "x")
    report.data = {
        "web_processes": ctx.web_processes,
        "readers": len(tokens),
        "curves": curves,
        "at_80_percent": a,
        "at_80_percent_over_time": over_time,
        "peaks": {"health": health_peak, "timeline": peak, "fallback": fallback_peak},
        "cpu_us_per_request": cpu,
        "redis_us_per_read_script": script_us,
    }

    def plot(figure: Any) -> None:
        left, right, timed = figure.subplots(1, 3)
        for name, points in curves.items():
            xs = [p["concurrency"] for p in points]
            left.plot(xs, [p["rps"] for p in points], marker="o", label=name)
            right.plot(xs, [p["p99_ms"] for p in points], marker="o", label=name)
        right.axhline(50, color="grey", linestyle="--", label="p99 budget")
        for ax, label in ((left, "requests/s"), (right, "p99 ms")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrent connections")
            ax.set_ylabel(label)
            ax.legend()
        right.set_yscale("log")
        seconds = [t for t, _ in over_time["p99_ms_by_half_second"]]
        timed.plot(seconds, [p for _, p in over_time["p99_ms_by_half_second"]], label="p99 ms")
        timed.axhline(50, color="grey", linestyle="--")
        timed.set_xlabel("seconds into the 80% run")
        timed.set_ylabel("p99 ms of each half second")
        host_axis = timed.twinx()
        host_axis.plot(
            [t for t, _ in over_time["host_loop_ns"]], speeds, color="tab:red", label="host"
        )
        host_axis.set_ylabel("host: ns per loop iteration (higher is slower)", color="tab:red")

    report.plot = plot
    report.figure_size = (15, 4.5)
    return report.finish()


class ScriptTime:
    """Redis's own running total for EVALSHA (the read path's one call per read)."""

    def __init__(self, calls: int, usec: int) -> None:
        self.calls = calls
        self.usec = usec

    def per_call(self, later: ScriptTime) -> float | None:
        calls = later.calls - self.calls
        return (later.usec - self.usec) / calls if calls > 0 else None


async def script_time(ctx: Context) -> ScriptTime:
    stats = (await ctx.services.redis.info("commandstats")).get("cmdstat_evalsha", {})
    return ScriptTime(int(stats.get("calls", 0)), int(stats.get("usec", 0)))
