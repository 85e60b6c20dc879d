"""A deterministic synthetic social graph, loaded with COPY.

Followers follow a power law: the user of popularity rank r (1 = most followed) has
max(10, 0.3 * N * r^-0.59) followers, so with N users a handful (about six, at every size)
are above the celebrity threshold (N/10, capped at the default 10,000), the median user has
tens of followers and the mean is around 80 at full size. Followers are drawn uniformly,
so most users follow tens of people and about a third follow the top celebrity. Tweets are
spread over the last 30 days by uniformly chosen authors, with the search benchmark's
Zipf vocabulary. The same seed gives the same graph, ids and texts."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from bench.search import Corpus, snowflake
from web.container import Services
from web.security import hash_token

SIZES: dict[str, dict[str, int]] = {
    "smoke": {"users": 2_000, "tweets": 20_000, "readers": 300},
    "small": {"users": 20_000, "tweets": 200_000, "readers": 1_000},
    "full": {"users": 100_000, "tweets": 1_000_000, "readers": 2_000},
}
ALPHA = 0.59
MIN_FOLLOWERS = 10


def celebrity_threshold(users: int) -> int:
    return max(50, min(10_000, users // 10))


def follower_count(rank: int, users: int) -> int:
    return min(users - 1, max(MIN_FOLLOWERS, int(0.3 * users * rank**-ALPHA)))


class Progress:
    """A one-line progress bar on a terminal, a line per 10% otherwise."""

    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.total = max(1, total)
        self.done = 0
        self.started = time.perf_counter()
        self.tty = sys.stdout.isatty()
        self._last_tenth = -1

    def advance(self, n: int) -> None:
        self.done += n
        fraction = min(1.0, self.done / self.total)
        rate = self.done / max(1e-9, time.perf_counter() - self.started)
        if self.tty:
            bar = "#" * int(fraction * 30)
            sys.stdout.write(
                f"\r  {self.label:<10} [{bar:<30}] {fraction:4.0%} {self.done:>10,} ({rate:,.0f}/s)"
            )
            if self.done >= self.total:
                sys.stdout.write("\n")
            sys.stdout.flush()
        elif int(fraction * 10) != self._last_tenth:
            self._last_tenth = int(fraction * 10)
            print(
                f"  {self.label:<10} {fraction:4.0%} {self.done:>10,} ({rate:,.0f}/s)", flush=True
            )


@dataclass
class Graph:
    users: int
    tweets: int
    user_ids: list[int]
    followers: list[int]  # follower count per user index
    tokens: dict[int, str]  # user id -> bearer token, for the sampled readers
    threshold: int
    follows: int
    seconds: float

    def summary(self) -> dict[str, object]:
        ordered = sorted(self.followers)
        return {
            "users": self.users,
            "tweets": self.tweets,
            "follows": self.follows,
            "celebrity_threshold": self.threshold,
            "celebrities": sum(1 for f in self.followers if f > self.threshold),
            "followers_max": ordered[-1],
            "followers_median": ordered[len(ordered) // 2],
            "followers_mean": round(self.follows / self.users, 1),
            "readers_with_tokens": len(self.tokens),
            "load_seconds": round(self.seconds, 1),
        }


def chunks(items: Iterator[tuple[object, ...]], size: int) -> Iterator[list[tuple[object, ...]]]:
    batch: list[tuple[object, ...]] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


async def generate(
    services: Services, *, users: int, tweets: int, readers: int, seed: int = 7
) -> Graph:
    started = time.perf_counter()
    rng = random.Random(seed)
    threshold = celebrity_threshold(users)
    now_ms = int(time.time() * 1000)
    user_ids = [snowflake(now_ms - 40 * 86_400_000, i) for i in range(users)]
    followers = [follower_count(i + 1, users) for i in range(users)]
    following = [0] * users
    # Who follows whom, decided up front so the users' counters can go in with the users.
    edges: list[tuple[int, int]] = []
    progress = Progress("graph", sum(followers))
    for followee in range(users):
        picked = rng.sample(range(users), followers[followee] + 1)
        chosen = [f for f in picked if f != followee][: followers[followee]]
        for f in chosen:
            following[f] += 1
            edges.append((f, followee))
        progress.advance(len(chosen))
    rng.shuffle(edges)  # follow order (and ids) not grouped by followee

    authors = [rng.randrange(users) for _ in range(tweets)]
    tweet_counts = [0] * users
    for a in authors:
        tweet_counts[a] += 1

    pool = services.db.pool
    progress = Progress("users", users)
    user_rows = (
        (
            user_ids[i],
            f"u{i}",
            f"User {i}",
            "x",
            followers[i],
            following[i],
            tweet_counts[i],
            followers[i] > threshold,
        )
        for i in range(users)
    )
    for batch in chunks(user_rows, 20_000):
        await pool.copy_records_to_table(
            "users",
            records=batch,
            columns=[
                "id",
                "username",
                "display_name",
                "password_hash",
                "followers_count",
                "following_count",
                "tweets_count",
                "is_celebrity",
            ],
        )
        progress.advance(len(batch))

    progress = Progress("follows", len(edges))
    follow_base = now_ms - 35 * 86_400_000
    follow_rows = (
        (user_ids[f], user_ids[e], snowflake(follow_base + n // 64, n))
        for n, (f, e) in enumerate(edges)
    )
    for batch in chunks(follow_rows, 100_000):
        await pool.copy_records_to_table(
            "follows", records=batch, columns=["follower_id", "followee_id", "id"]
        )
        progress.advance(len(batch))

    corpus = Corpus(seed)
    span_ms = 30 * 86_400_000
    start_ms = now_ms - span_ms - 60_000
    progress = Progress("tweets", tweets)

    def tweet_rows() -> Iterator[tuple[object, ...]]:
        for n in range(tweets):
            ms = start_ms + (n * span_ms) // tweets
            yield (
                snowflake(ms, n),
                user_ids[authors[n]],
                corpus.text(),
                datetime.fromtimestamp(ms / 1000, UTC),
            )

    for batch in chunks(tweet_rows(), 50_000):
        await pool.copy_records_to_table(
            "tweets", records=batch, columns=["id", "author_id", "text", "created_at"]
        )
        progress.advance(len(batch))

    # Bearer tokens for a sample of readers (tokens are stored hashed, as the app does).
    sampled = sorted(rng.sample(range(users), min(readers, users)))
    tokens = {user_ids[i]: f"bench-token-{seed}-{i}" for i in sampled}
    await pool.copy_records_to_table(
        "access_tokens",
        records=[(hash_token(t), uid) for uid, t in tokens.items()],
        columns=["token_hash", "user_id"],
    )
    # As a table at steady state is (autovacuum): hint bits set and pages marked all-visible,
    # which index-only scans need. Left to autovacuum, it ran during the first benchmark and
    # the first reads of each page set the hint bits, both charged to what was measured.
    await pool.execute("VACUUM ANALYZE")
    return Graph(
        users=users,
        tweets=tweets,
        user_ids=user_ids,
        followers=followers,
        tokens=tokens,
        threshold=threshold,
        follows=len(edges),
        seconds=time.perf_counter() - started,
    )
