"""The whole fault-suite run as one async function, `run_fault_suite`.

1. A database of its own (created, migrated, dropped at the end), private NATS, Redis and
   Typesense, and the Chirp processes: by default two `chirp serve`, two
   `chirp worker fanout` and two `chirp worker search-indexer`.
2. Users signed up and an initial follow graph (a few celebrities above the threshold, edge
   users around it, most below), then the load (tests/faults/load.py) for `duration` seconds
   while faults are injected at seeded random moments: kill -9 of a web process, a fanout
   worker or a search indexer (started again after a short down time), and stop + start of
   NATS, Redis and Typesense.
3. Once the load has stopped and everything is back up, the invariants
   (tests/faults/invariants.py) are checked until they hold or `converge_timeout` passes.

The report has the figures: acknowledged, deleted, lost, duplicated, wrong timelines, wrong
counters, the faults by kind, the time to converge and how the work was split."""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from launcher.services import drop_database, ensure_database
from storage.postgres import migrate
from tests.faults.cluster import Cluster, running_cluster
from tests.faults.invariants import (
    CATEGORIES,
    DUPLICATED,
    LEDGER,
    LOST,
    WRONG_COUNTERS,
    WRONG_SEARCH,
    WRONG_TIMELINES,
    Checker,
    Findings,
)
from tests.faults.load import CELEBRITY, EDGE, ApiPool, Attempts, Load
from web.settings import Settings

FAULT_KINDS = (
    "kill web",
    "kill fanout",
    "kill search-indexer",
    "restart nats",
    "restart redis",
    "restart typesense",
)

Log = Callable[[str], None]


@dataclass(frozen=True)
class FaultPlan:
    duration: float = 600.0  # seconds of load (and faults)
    seed: int = 7
    users: int = 40
    celebrities: int = 3
    edges: int = 2
    # Mean seconds between a user's requests.
    think: float = 1.0
    # Mean seconds between the starts of two faults.
    fault_interval: float = 6.0
    # Longest a killed process or stopped service stays down.
    max_downtime: float = 2.5
    # Seconds of load before the first fault.
    warmup: float = 3.0
    converge_timeout: float = 120.0
    web: int = 2
    fanout: int = 2
    indexers: int = 2
    request_timeout: float = 15.0
    # Entries kept per Redis timeline (CHIRP_TIMELINE_MAX): smaller gets trimming sooner.
    timeline_max: int = 800
    # A request with no usable answer for this long stops the run.
    give_up_after: float = 120.0


@dataclass
class Fault:
    at: float
    kind: str
    target: str
    downtime: float
    back_after: float

    def line(self) -> str:
        return (
            f"[{self.at:7.2f} s] {self.kind:<20} {self.target:<17} down {self.downtime:.1f} s,"
            f" back after {self.back_after:.1f} s"
        )


@dataclass
class Report:
    plan: FaultPlan
    findings: Findings
    converged: bool
    converge_seconds: float
    load_seconds: float
    acknowledged: int
    deleted: int
    replies: int
    likes: int
    follows: int
    celebrities: list[str]
    faults: list[Fault]
    attempts: Attempts
    split: dict[str, dict[str, float]]
    restarts: dict[str, int]
    service_restarts: dict[str, int]
    dead_letters: int
    unexpected_exits: list[str]
    workdir: Path
    checks: int = 0

    def count(self, category: str) -> int:
        return self.findings.total(category)

    @property
    def lost(self) -> int:
        return self.count(LOST)

    @property
    def duplicated(self) -> int:
        return self.count(DUPLICATED)

    @property
    def wrong_timelines(self) -> int:
        return self.count(WRONG_TIMELINES)

    @property
    def wrong_counters(self) -> int:
        return self.count(WRONG_COUNTERS)

    @property
    def wrong_search(self) -> int:
        return self.count(WRONG_SEARCH)

    @property
    def ledger_mismatches(self) -> int:
        return self.count(LEDGER)

    @property
    def faults_by_kind(self) -> Counter[str]:
        return Counter(f.kind for f in self.faults)

    @property
    def clean(self) -> bool:
        return self.converged and self.findings.clean and not self.unexpected_exits

    def table(self) -> str:
        plan = self.plan
        rows: list[tuple[str, str]] = [
            ("seed / users / load", f"{plan.seed} / {plan.users} / {self.load_seconds:.0f} s"),
            ("acknowledged tweets (201)", str(self.acknowledged)),
            ("  of them replies", str(self.replies)),
            ("deleted (204)", str(self.deleted)),
            ("likes / follows at the end", f"{self.likes} / {self.follows}"),
            ("celebrities at the end", ", ".join(self.celebrities) or "none"),
        ]
        for category in CATEGORIES:
            rows.append((category, str(self.count(category))))
            for place, n in sorted(self.findings.problems[category].items()):
                rows.append((f"  {place}", str(n)))
        rows += [
            ("faults injected", str(len(self.faults))),
            *((f"  {k}", str(n)) for k, n in sorted(self.faults_by_kind.items())),
            ("unexpected process exits", str(len(self.unexpected_exits))),
            (
                "time to converge",
                f"{self.converge_seconds:.1f} s ({self.checks} checks)"
                if self.converged
                else f"NOT within {plan.converge_timeout:.0f} s ({self.findings.summary()})",
            ),
            ("dead letters", str(self.dead_letters)),
            ("redis timelines absent at the end", str(self.findings.redis_timelines_absent)),
            ("requests answered", str(sum(self.attempts.answered.values()))),
            *((f"  by web-{web}", str(n)) for web, n in sorted(self.attempts.by_web.items())),
            ("failed attempts (retried)", str(sum(self.attempts.failures.values()))),
            *((f"  {what}", str(n)) for what, n in sorted(self.attempts.failures.items())),
            (
                "searches (status: n)",
                ", ".join(f"{s}: {n}" for s, n in sorted(self.attempts.search.items())) or "-",
            ),
        ]
        rows.append(("work split (this run's counters)", ""))
        for slot, figures in self.split.items():
            text = ", ".join(f"{k} {v:.0f}" for k, v in sorted(figures.items())) or "nothing"
            rows.append((f"  {slot} (started {self.restarts[slot]}x)", text))
        width = max(len(k) for k, _ in rows)
        lines = [f"{k:<{width}}  {v}" for k, v in rows]
        if self.findings.examples:
            lines += ["", "examples:", *(f"  {e}" for e in self.findings.examples)]
        if self.attempts.server_errors:
            lines += ["", "server errors:", *(f"  {e}" for e in self.attempts.server_errors[:10])]
        for note in self.unexpected_exits:
            lines += ["", note]
        lines += ["", f"logs: {self.workdir}"]
        return "\n".join(lines)


def suite_settings(base: Settings, workdir: Path, tag: str) -> Settings:
    """The run's own database, names and limits; the service URLs come later."""
    parts = urlsplit(base.database_url)
    return base.with_overrides(
        database_url=urlunsplit(parts._replace(path=f"/chirp_faults_{tag}")),
        redis_prefix=f"faults:{tag}:",
        stream=f"FAULTS_{tag.upper()}",
        subject_prefix=f"faults_{tag}",
        search_collection=f"faults_{tag}_tweets",
        celebrity_threshold=5,
        celebrity_hysteresis=0.5,
        # The load is many requests from one address: lift the per-client limits.
        tweets_per_hour=1_000_000,
        sign_ups_per_hour=1_000_000,
        sign_in_attempts_per_minute=1_000_000,
        var_dir=workdir / "var",
        media_dir=str(workdir / "media"),
        secret_key="fault-suite-secret",
        log_json=True,
        log_level="INFO",
        db_pool_size=5,
        web_processes=1,
        host="127.0.0.1",
    )


async def inject_faults(
    cluster: Cluster,
    plan: FaultPlan,
    rng: random.Random,
    *,
    started: float,
    until: float,
    log: Log,
) -> list[Fault]:
    """Faults at seeded random moments, their kinds in seeded shuffled rounds (so a short run
    still gets every kind). A fault's restart runs in the background, so faults overlap (a
    web process down while Redis restarts), but at most one process of each kind is down at
    a time: the other one is there to take over. Returns once every fault is over."""
    loop = asyncio.get_running_loop()
    faults: list[Fault] = []
    busy: set[str] = set()
    running: set[asyncio.Task[None]] = set()
    cycle: list[str] = []
    # Each kind's processes are killed in turn, from a seeded first one.
    turns = {kind: rng.randrange(2) for kind in FAULT_KINDS}

    def target_for(kind: str) -> str | None:
        verb, what = kind.split(" ", 1)
        if verb == "restart":
            return None if what in busy else what
        slots = [slot.name for slot in cluster.of(what)]
        if any(name in busy for name in slots):
            return None
        turns[kind] += 1
        return slots[turns[kind] % len(slots)]

    async def inflict(kind: str, target: str, downtime: float, at: float) -> None:
        try:
            if kind.startswith("kill"):
                slot = next(s for s in cluster.slots if s.name == target)
                await cluster.restart_slot(slot, downtime)
            else:
                await cluster.restart_service(target, downtime)
        finally:
            busy.discard(target)
        fault = Fault(at, kind, target, downtime, loop.time() - started - at)
        faults.append(fault)
        log(fault.line())

    await asyncio.sleep(plan.warmup)
    try:
        while loop.time() < until:
            if not cycle:
                cycle = list(FAULT_KINDS)
                rng.shuffle(cycle)
            kind = cycle.pop()
            while (target := target_for(kind)) is None:
                await asyncio.sleep(0.2)
            busy.add(target)
            downtime = rng.uniform(0.3, plan.max_downtime)
            task = asyncio.create_task(inflict(kind, target, downtime, loop.time() - started))
            running.add(task)
            pause = rng.uniform(0.5, 1.5) * plan.fault_interval
            await asyncio.sleep(max(0.0, min(pause, until - loop.time())))
    finally:
        # Every fault ends with its process or service back, even when the run is failing.
        await asyncio.gather(*running, return_exceptions=True)
    for task in running:
        task.result()
    return sorted(faults, key=lambda f: f.at)


async def converge(checker: Checker, timeout: float, log: Log) -> tuple[Findings, bool, float, int]:
    """Checks until everything holds or the timeout passes: (last findings, converged,
    seconds, checks made)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    checks = 0
    last = ""
    while True:
        findings = await checker.check()
        checks += 1
        elapsed = loop.time() - started
        if findings.clean:
            return findings, True, elapsed, checks
        summary = findings.summary()
        if summary != last:
            log(f"[converge +{elapsed:5.1f} s] {summary}")
            last = summary
        if elapsed > timeout:
            return findings, False, elapsed, checks
        await asyncio.sleep(0.5)


async def run_fault_suite(
    base: Settings, plan: FaultPlan, workdir: Path, *, log: Log = print, hold: float = 0.0
) -> Report:
    """The whole run; `base` gives the Postgres server (the run makes its own database on it)
    and the Typesense API key. Everything the run starts is stopped before it returns.

    `hold`: when something was found, keep everything (processes, services, database) up
    for that many seconds, or until a file `release` appears in the workdir, to look at."""
    tag = secrets.token_hex(3)
    settings = suite_settings(base, workdir, tag).with_overrides(timeline_max=plan.timeline_max)
    await ensure_database(settings.database_url)
    try:
        await migrate(settings.database_url, quiet=True)
        async with running_cluster(
            settings,
            workdir,
            web=plan.web,
            fanout=plan.fanout,
            indexers=plan.indexers,
            log=log,
        ) as cluster:
            report = await _run(cluster, plan, log)
            if hold and not report.clean:
                await _hold(cluster, report, hold, log)
            return report
    finally:
        with contextlib.suppress(Exception):
            await drop_database(settings.database_url)


async def _hold(cluster: Cluster, report: Report, seconds: float, log: Log) -> None:
    release = cluster.workdir / "release"
    log(report.table())
    log(
        f"holding for up to {seconds:.0f} s: database {cluster.settings.database_url},"
        f" redis {cluster.settings.redis_url} (prefix {cluster.settings.redis_prefix}),"
        f" nats {cluster.settings.nats_url}, typesense {cluster.settings.typesense_url},"
        f" web {' '.join(cluster.web_urls)}; touch {release} to end it"
    )
    deadline = asyncio.get_running_loop().time() + seconds
    while not release.exists() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(1.0)


async def _run(cluster: Cluster, plan: FaultPlan, log: Log) -> Report:
    loop = asyncio.get_running_loop()
    pool = ApiPool(cluster.web_urls, timeout=plan.request_timeout, give_up_after=plan.give_up_after)
    watching = asyncio.Event()
    watcher = asyncio.create_task(cluster.watch(watching))
    try:
        load = Load(
            pool,
            seed=plan.seed,
            users=plan.users,
            celebrities=plan.celebrities,
            edges=plan.edges,
            think=plan.think,
        )
        setup = loop.time()
        await load.sign_up()
        await load.initial_graph()
        log(
            f"{len(load.members)} users signed up, {sum(load.ledger.follows.values())} follows"
            f" ({loop.time() - setup:.1f} s); load for {plan.duration:.0f} s, seed {plan.seed}"
        )
        stop_load = asyncio.Event()
        started = loop.time()
        until = started + plan.duration
        users = asyncio.create_task(load.run(stop_load))
        injector = asyncio.create_task(
            inject_faults(
                cluster, plan, random.Random(plan.seed + 1), started=started, until=until, log=log
            )
        )
        try:
            done, _ = await asyncio.wait(
                {users, injector}, timeout=plan.duration, return_when=asyncio.FIRST_EXCEPTION
            )
            for task in done:
                task.result()  # a failure of either ends the run now
            stop_load.set()
            faults = await injector
            await users
        finally:
            stop_load.set()
            for task in (users, injector):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
        load_seconds = loop.time() - started
        await cluster.all_up()
        log(
            f"load stopped after {load_seconds:.0f} s: {len(load.ledger.tweets)} tweets"
            f" acknowledged, {len(faults)} faults; checking the invariants"
        )
        async with Checker(cluster.settings, load, pool) as checker:
            findings, converged, seconds, checks = await converge(
                checker, plan.converge_timeout, log
            )
            dead_letters = await checker.dead_letters()
        return _report(cluster, plan, load, pool, faults, findings, converged, seconds,
                       checks, load_seconds, dead_letters)  # fmt: skip
    finally:
        watching.set()
        await watcher
        await pool.close()


def _report(
    cluster: Cluster,
    plan: FaultPlan,
    load: Load,
    pool: ApiPool,
    faults: list[Fault],
    findings: Findings,
    converged: bool,
    seconds: float,
    checks: int,
    load_seconds: float,
    dead_letters: int,
) -> Report:
    ledger = load.ledger
    by_id = {m.id: m for m in load.members}
    threshold = cluster.settings.celebrity_threshold
    celebrities = sorted(
        f"@{by_id[u].username} ({by_id[u].role}, {n} followers)"
        for u, n in ledger.followers.items()
        if n > threshold or by_id[u].role in (CELEBRITY, EDGE)
    )
    split = {slot.name: slot.counters() for slot in cluster.slots}
    return Report(
        plan=plan,
        findings=findings,
        converged=converged,
        converge_seconds=seconds,
        load_seconds=load_seconds,
        acknowledged=len(ledger.tweets),
        deleted=len(ledger.deleted),
        replies=sum(1 for t in ledger.tweets.values() if t.reply_to is not None),
        likes=sum(ledger.likes.values()),
        follows=sum(ledger.follows.values()),
        celebrities=celebrities,
        faults=faults,
        attempts=pool.attempts,
        split=split,
        restarts={slot.name: slot.starts for slot in cluster.slots},
        service_restarts=dict(cluster.service_restarts),
        dead_letters=dead_letters,
        unexpected_exits=list(cluster.unexpected),
        workdir=cluster.workdir,
        checks=checks,
    )
