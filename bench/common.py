"""What every benchmark shares: its own database, Redis prefix and stream names (so a running
`make run` or test suite is never touched), the real `chirp serve` / worker processes, a small
HTTP/1.1 keep-alive load generator on raw asyncio streams, and percentiles."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psutil

from launcher.process import free_port
from launcher.services import (
    EmbeddedStack,
    drop_database,
    ensure_database,
    ensure_services,
)
from storage.postgres import migrate
from web.container import Services, provide_services
from web.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def percentile(values: Sequence[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def python_loop_ns() -> float:
    """ns per iteration of a fixed pure-Python loop, best of five, on one core: how fast this
    machine is at the moment. The same code served `/health` 1.6x slower on the same
    machine on another day; this puts runs of different days on one scale."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)


# Twice a second, the CPU time a fixed loop took, in ns per iteration, with the moment
# (perf_counter: CLOCK_MONOTONIC, the same clock in every process of the machine).
_HOST_SPEED_SAMPLER = """
import time
while True:
    started = time.thread_time()
    total = 0
    for i in range(100_000):
        total += i
    print(time.perf_counter(), round((time.thread_time() - started) * 10_000, 1), flush=True)
    time.sleep(0.5)
"""


class HostSpeed:
    """How fast the machine was, moment by moment, while a step ran: a process of its own
    timing a pure-Python loop twice a second (1-3% of one core). On 11-26 the same loop
    took 28 to 58 ns per iteration within one idle minute, with no steal reported, and an
    open-loop step paced at 80% of a peak measured in a fast moment queued up in a slow one:
    this tells those runs from the server's own stalls. CPU time, not wall time, so the
    step's own load on the cores does not count as slowness."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", _HOST_SPEED_SAMPLER], stdout=subprocess.PIPE, text=True
        )

    def stop(self) -> list[tuple[float, float]]:
        """The samples: (perf_counter moment, ns per iteration)."""
        self._process.terminate()
        output, _ = self._process.communicate(timeout=10)
        samples = []
        for line in output.splitlines():
            moment, _, ns = line.partition(" ")
            with contextlib.suppress(ValueError):
                samples.append((float(moment), float(ns)))
        return samples


def half_second_p99(latencies: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """(began, latency ms) pairs to the p99 of each half second, by when requests began
    (the half seconds counted from 0.0 on the same clock)."""
    buckets: dict[int, list[float]] = {}
    for began, ms in latencies:
        buckets.setdefault(int(began * 2), []).append(ms)
    return [(key / 2, percentile(values, 0.99)) for key, values in sorted(buckets.items())]


def cpu_jiffies() -> dict[str, int]:
    """The machine's CPU time by state since boot (/proc/stat; empty elsewhere)."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()[1:9]
    except OSError:
        return {}
    names = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"]
    return dict(zip(names, map(int, fields), strict=False))


def steal_share(before: dict[str, int], after: dict[str, int]) -> float | None:
    """Of the CPU time between two cpu_jiffies(), the share the hypervisor gave others."""
    if not before or not after:
        return None
    spent = sum(after.values()) - sum(before.values())
    return round((after["steal"] - before["steal"]) / spent, 4) if spent else None


def log(line: str) -> None:
    print(line, flush=True)


def bench_settings(tag: str, **overrides: Any) -> Settings:
    machine = Settings.from_env()
    values: dict[str, Any] = {
        "database_url": with_database(machine.database_url, f"chirp_bench_{tag}"),
        "redis_prefix": f"bench:{tag}:",
        "stream": f"BENCH_{tag.upper()}",
        "subject_prefix": f"bench_{tag}",
        "search_collection": f"bench_{tag}_tweets",
        "var_dir": ROOT / "var",
        "log_level": "WARNING",
        "secret_key": "bench-secret",
        # Load comes from a handful of clients on loopback: lift the per-user limits.
        "tweets_per_hour": 100_000_000,
        "sign_ups_per_hour": 100_000_000,
        "db_pool_size": 20,
    }
    values.update(overrides)
    return machine.with_overrides(**values)


def start_stack(settings: Settings) -> EmbeddedStack:
    urls = settings.service_urls()
    return ensure_services(urls, settings.var_dir, log=log)


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@contextlib.asynccontextmanager
async def bench_database(
    settings: Settings,
    keep: bool = False,
    *,
    process_name: str = "bench",
    drop_search_index: bool = False,
) -> AsyncIterator[Services]:
    """A fresh migrated database and the services wired to it; everything the run created
    (database, stream, Redis keys, and with `drop_search_index` the run's own search alias
    and collections) is removed afterwards unless `keep`."""
    await ensure_database(settings.database_url)
    await migrate(settings.database_url, quiet=True)
    try:
        async with provide_services(settings, process_name=process_name, wait_for_nats=True) as s:
            try:
                yield s
            finally:
                if not keep:
                    if drop_search_index:
                        with contextlib.suppress(Exception):
                            await s.search.drop_everything()
                    for stream in (s.names.stream, s.names.dead_letter_stream):
                        with contextlib.suppress(Exception):
                            await s.link.js.delete_stream(stream)
                    await delete_keys(s, f"{s.keys.prefix}*")
    finally:
        if not keep:
            await drop_database(settings.database_url)


async def delete_keys(services: Services, pattern: str) -> None:
    batch: list[bytes] = []
    async for key in services.redis.scan_iter(pattern, count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            await services.redis.unlink(*batch)
            batch = []
    if batch:
        await services.redis.unlink(*batch)


def new_tag() -> str:
    return secrets.token_hex(3)


# -- the real processes ------------------------------------------------------------------


class ChirpProcess:
    """`chirp serve` or `chirp worker NAME` as its own process, with these settings."""

    def __init__(self, settings: Settings, *argv: str) -> None:
        env = {**os.environ, **settings.to_env(), "CHIRP_LOG_LEVEL": "WARNING"}
        self.settings = settings
        self.argv = argv
        self.process = subprocess.Popen(
            [sys.executable, "-m", "web.cli", *argv], env=env, cwd=ROOT, stdout=subprocess.DEVNULL
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    async def wait_http(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.argv} exited with {self.process.returncode}")
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, ValueError):
                conn = await Connection.open(self.settings.host, self.settings.port)
                try:
                    status, _ = await conn.request(b"GET /health HTTP/1.1\r\nHost: b\r\n\r\n")
                finally:
                    conn.close()
                if status == 200:
                    return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.argv} did not answer within {timeout} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@dataclass(frozen=True)
class Served:
    host: str
    port: int
    pid: int  # the `chirp serve` process; its web workers are its children


@contextlib.asynccontextmanager
async def serving(settings: Settings, processes: int = 1) -> AsyncIterator[Served]:
    """A real `chirp serve` on a free loopback port.
    With CHIRP_BENCH_PROFILE=<dir>, py-spy records the server while it serves."""
    settings = settings.with_overrides(host="127.0.0.1", port=free_port(), web_processes=processes)
    server = ChirpProcess(settings, "serve")
    try:
        await server.wait_http()
        profile = os.environ.get("CHIRP_BENCH_PROFILE")
        spy = None
        if profile:
            os.makedirs(profile, exist_ok=True)
            spy = subprocess.Popen(  # noqa: ASYNC220 - started once, not awaited
                [
                    "py-spy",
                    "record",
                    "--pid",
                    str(server.pid),
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--subprocesses",
                    "-o",
                    f"{profile}/serve-{server.pid}.txt",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        try:
            yield Served(settings.host, settings.port, server.pid)
        finally:
            if spy is not None:
                spy.send_signal(2)
                spy.wait(30)
    finally:
        server.stop()


# -- where the CPU goes ------------------------------------------------------------------


class CpuMeter:
    """The CPU time every process on the machine used over a measured step, grouped into
    the parts of a request (the measured process and its children under `served_by`: the
    web workers, or the fanout worker; Redis, Postgres, NATS, this load generator, the
    rest), per request: on a machine where all of them share the cores, this is what a
    request costs and where, which the throughput alone does not tell."""

    def __init__(self, server_pid: int, served_by: str = "web") -> None:
        self._server_pid = server_pid
        self._served_by = served_by
        self._before = self._sample()

    def _group(self, process: psutil.Process) -> str:
        name = process.name()
        if name.startswith("redis-server"):
            return "redis"
        if name.startswith("postgres"):
            return "postgres"
        if name.startswith("nats-server"):
            return "nats"
        if process.pid == os.getpid():
            return "load generator"
        with contextlib.suppress(psutil.Error):
            if process.pid == self._server_pid or any(
                p.pid == self._server_pid for p in process.parents()
            ):
                return self._served_by
        return "other"

    def _sample(self) -> dict[int, tuple[str, float]]:
        seen: dict[int, tuple[str, float]] = {}
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                seen[process.pid] = (self._group(process), times.user + times.system)
        return seen

    def per_request(self, requests: int) -> dict[str, float]:
        """µs of CPU per request by part since the meter was made. Processes started
        meanwhile are a part of their own: their start is most of what they used (a pool
        opening Postgres connections as the load grows); those that ended are missed."""
        used: dict[str, float] = {}
        for pid, (group, seconds) in self._sample().items():
            before = self._before.get(pid)
            if before is None or before[0] != group:
                group, spent = "started meanwhile", seconds
            else:
                spent = seconds - before[1]
            used[group] = used.get(group, 0.0) + spent
        total = sum(used.values())
        per = {g: round(s / max(requests, 1) * 1e6, 1) for g, s in sorted(used.items())}
        per["total"] = round(total / max(requests, 1) * 1e6, 1)
        return per


# -- the load generator ------------------------------------------------------------------


class Connection:
    """One HTTP/1.1 keep-alive connection; requests are pre-encoded bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
                break
        body = await self.reader.readexactly(length) if length else b""
        return status, body

    def close(self) -> None:
        self.writer.close()


def get_request(path: str, token: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return f"GET {path} HTTP/1.1\r\nHost: bench\r\n{auth}\r\n".encode()


def post_json(path: str, body: bytes, token: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    requests: int = 0
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    target_rate: float | None = None

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "target_rate": self.target_rate,
            "seconds": round(self.seconds, 2),
            "requests": self.requests,
            "errors": self.errors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "rps": round(self.throughput, 1),
            "p50_ms": round(percentile(self.latencies_ms, 0.50), 2),
            "p90_ms": round(percentile(self.latencies_ms, 0.90), 2),
            "p99_ms": round(percentile(self.latencies_ms, 0.99), 2),
        }


async def run_load(
    host: str,
    port: int,
    next_request: Callable[[int], bytes],
    *,
    concurrency: int,
    seconds: float,
    rate: float | None = None,
    expect: int = 200,
    limit: int | None = None,
    on_response: Callable[[int, bytes, float, float], None] | None = None,
) -> LoadResult:
    """`concurrency` connections sending requests back to back for `seconds` (closed loop), or
    at `rate` requests/s in total (open loop: each latency counts from the moment the request
    was due, so a stalled server cannot hide its queue: no coordinated omission)."""
    result = LoadResult(concurrency=concurrency, seconds=seconds, target_rate=rate)
    conns = [await Connection.open(host, port) for _ in range(concurrency)]
    counter = 0
    start = time.perf_counter()
    deadline = start + seconds
    clock = time.perf_counter

    async def worker(conn: Connection) -> None:
        nonlocal counter
        while True:
            n = counter
            counter += 1
            if limit is not None and n >= limit:
                return
            if rate is not None:
                due = start + n / rate
                if due >= deadline:
                    return
                delay = due - clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                began = due
            else:
                began = clock()
                if began >= deadline:
                    return
            try:
                status, body = await conn.request(next_request(n))
            except (OSError, asyncio.IncompleteReadError, ValueError):
                result.errors += 1
                return
            done = clock()
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if on_response is not None:
                on_response(status, body, began, done)
            if status == expect:
                result.requests += 1
                result.latencies_ms.append((done - began) * 1000)
            else:
                result.errors += 1

    # The load generator's own collections (its heap holds the graph and every latency)
    # stalled it for up to 150 ms, which an open loop counts against the server.
    collecting = gc.isenabled()
    gc.disable()
    try:
        await asyncio.gather(*(worker(c) for c in conns))
    finally:
        if collecting:
            gc.enable()
        for c in conns:
            c.close()
    result.seconds = time.perf_counter() - start
    return result
