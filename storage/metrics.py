"""Every Prometheus metric Chirp records (names listed in the README's operator table), and the
exposition that `/metrics` serves.

Chirp runs several processes: web processes (uvicorn --workers, `chirp up`) and one process per
worker. They use prometheus_client's multiprocess mode: the CLI points
PROMETHEUS_MULTIPROC_DIR at a directory under var/ before any process starts, each process
writes its samples into its own memory-mapped files there, and whichever web process answers
`/metrics` merges them all — so the web app's `/metrics` also shows what only the workers
record (fanout lag). One scrape target, no extra ports to open or discover. Gauges of state held
elsewhere (consumer pending counts, outbox backlog) are not recorded by anyone: `/metrics`
reads them from JetStream and Postgres at scrape time (see `web/metrics.py`).

Without PROMETHEUS_MULTIPROC_DIR (the tests' in-process app, a bare `create_app()`) the
metrics live in this process's default registry. prometheus_client makes that choice when it
is first imported, so this module decides the same way, once."""

from __future__ import annotations

import contextlib
import glob
import os
import re
from collections.abc import Iterable
from typing import TypeVar

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess
from prometheus_client.metrics_core import Metric

MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None

M = TypeVar("M", Counter, Gauge, Histogram)
_children: dict[tuple[int, tuple[str, ...]], object] = {}


def labelled(metric: M, *values: str) -> M:
    """`metric.labels(*values)`, remembered: prometheus_client builds and validates the label
    tuple on every call, which on the timeline read cost more than the recording itself.
    Made on first use, not at import (in multiprocess mode a child opens its file)."""
    key = (id(metric), values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child  # type: ignore[return-value]


# Seconds; from a few milliseconds (a cached timeline) to the budgets' seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Seconds from a tweet's creation (its id's timestamp) to the effect: DESIGN's 2-3 s fanout
# budget, our 1 s post-to-browser aim.
LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)

HTTP_REQUEST_SECONDS = Histogram(
    "chirp_http_request_duration_seconds",
    "HTTP request duration by route template, method and status.",
    ["route", "method", "status"],
    buckets=LATENCY_BUCKETS,
)
TIMELINE_ASSEMBLY_SECONDS = Histogram(
    "chirp_timeline_assembly_seconds",
    "Time to assemble one home timeline page, by where it came from.",
    ["source"],
    buckets=LATENCY_BUCKETS,
)
CACHE_REQUESTS = Counter(
    "chirp_cache_requests",
    "Tweet and author cache lookups (per id), by cache and hit or miss.",
    ["cache", "result"],
)
FANOUT_LAG_SECONDS = Histogram(
    "chirp_fanout_lag_seconds",
    "Tweet created to every active follower's timeline written (push mode).",
    buckets=LAG_BUCKETS,
)
FANOUT_TWEETS = Counter(
    "chirp_fanout_tweets",
    "Tweets handled by the fanout worker, by mode (push or celebrity).",
    ["mode"],
)
POST_TO_PUSH_SECONDS = Histogram(
    "chirp_post_to_push_seconds",
    "Tweet created to its frame sent on a follower's live socket.",
    buckets=LAG_BUCKETS,
)
EVENTS_HANDLED = Counter(
    "chirp_events",
    "Events handled by a consumer, by result (ok, failed, dead_letter).",
    ["consumer", "result"],
)
WEBSOCKETS_OPEN = Gauge(
    "chirp_websockets_open",
    "Live timeline sockets open (summed over the live web processes).",
    multiprocess_mode="livesum",
)
RATE_LIMIT_REJECTIONS = Counter(
    "chirp_rate_limit_rejections",
    "Requests refused by a rate limit, by limit.",
    ["limit"],
)
SEARCH_ANSWERS = Counter(
    "chirp_search_answers",
    "Searches answered, by answer: complete, or newest (past the budget, from the newest "
    "matches only).",
    ["answer"],
)


def exposition(scraped: Iterable[Metric] = ()) -> bytes:
    """The Prometheus text for every process's metrics, followed by `scraped` (gauges read
    at scrape time)."""
    if MULTIPROCESS_DIR is not None:
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry, path=MULTIPROCESS_DIR)  # type: ignore[no-untyped-call]
        recorded = generate_latest(registry)
    else:
        recorded = generate_latest(REGISTRY)
    families = list(scraped)
    if not families:
        return recorded
    extra = CollectorRegistry(auto_describe=False)
    extra.register(_Fixed(families))
    return recorded + generate_latest(extra)


class _Fixed:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


_LIVE_FILE = re.compile(r"gauge_live\w*?_(\d+)\.db$")


def forget_dead_processes() -> int:
    """Drops the live-gauge files of processes that are gone (a web process that crashed or
    was restarted), so `chirp_websockets_open` counts only sockets that still exist. Returns
    how many processes were forgotten."""
    if MULTIPROCESS_DIR is None:
        return 0
    dead: set[int] = set()
    for path in glob.glob(os.path.join(MULTIPROCESS_DIR, "gauge_live*.db")):
        found = _LIVE_FILE.search(os.path.basename(path))
        if found is None:
            continue
        pid = int(found.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            dead.add(pid)
        except PermissionError:
            pass  # alive, someone else's
    for pid in dead:
        # Another process starting at the same time (a replaced web process beside a new
        # one) may have removed them first: gone is what was wanted.
        with contextlib.suppress(FileNotFoundError):
            _multiprocess.mark_process_dead(pid, MULTIPROCESS_DIR)  # type: ignore[no-untyped-call]
    return len(dead)
