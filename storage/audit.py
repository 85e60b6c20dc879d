"""Auditing derived state against Postgres, the source of truth (`chirp audit`): home timelines in
Redis, the counters Postgres keeps beside its rows (followers, following, tweets; likes,
replies), and a user's tweets in the search index. Each check reports drift; each repair brings
the state back to what Postgres says, with the same effects the write path uses.

What a home timeline should hold is what a rebuild (`HomeTimeline.populate`) puts there: the
newest `timeline_max` live tweets, replies included, of the user and of the normal
(non-celebrity) authors they follow. What it may lack without that being drift:
- tweets older than its oldest entry once it is full (trimmed to the cap);
- anything, while its user is inactive (no fanout; the timeline is rebuilt on their next visit);
- tweets and follows younger than the grace period (their fanout may still be under way).
A timeline with no key at all is no drift either: the next read rebuilds it."""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import redis.asyncio as aioredis

from domain.events import FanoutModeChanged
from domain.ids import smallest_id_at
from domain.rules import is_celebrity_after
from storage.hydrate import TweetReader
from storage.postgres import Database
from storage.redis_store import RedisKeys, RedisTimelineStore
from storage.repositories import TweetRepository, insert_event
from storage.request_id import current_request_id
from storage.search_index import MissingCollection
from storage.search_sync import SearchSync
from storage.timeline import HomeTimeline

# Why an entry must not be in a timeline.
DELETED = "deleted"
UNKNOWN = "no such tweet"
NOT_FOLLOWED = "author not followed"
CELEBRITY = "celebrity author (merged at read time)"
NO_USER = "no such user"

# Timelines audited at once: each costs a Redis read and a few Postgres queries.
CONCURRENCY = 16
# Rows per recount query, and timelines per batch of tasks (`--all` may mean millions).
BATCH = 1000


class ExtraEntry(msgspec.Struct, frozen=True):
    tweet_id: int
    reason: str


class TimelineDrift(msgspec.Struct, frozen=True):
    user_id: int
    key: str
    # Entries besides the sentinel.
    size: int
    # The sentinel is there: without it the read path ignores the set and rebuilds it, keeping
    # whatever the set held.
    complete: bool
    # Holds the cap: older tweets are legitimately trimmed away.
    full: bool
    active: bool
    # Newest first.
    missing: list[int]
    extra: list[ExtraEntry]
    # The key belongs to no user.
    orphan: bool = False

    @property
    def clean(self) -> bool:
        return self.complete and not self.orphan and not self.missing and not self.extra


class TimelineFindings(msgspec.Struct, frozen=True):
    # Timelines that exist in Redis and were compared.
    audited: int
    # Users asked about who have no timeline in Redis: no drift, rebuilt on read.
    without_timeline: list[int]
    drifted: list[TimelineDrift]

    @property
    def missing(self) -> int:
        return sum(len(d.missing) for d in self.drifted)

    @property
    def extra(self) -> int:
        return sum(len(d.extra) for d in self.drifted)

    @property
    def incomplete(self) -> int:
        return sum(1 for d in self.drifted if not d.complete)

    @property
    def clean(self) -> bool:
        return not self.drifted


class CounterDrift(msgspec.Struct, frozen=True):
    table: str  # "users" or "tweets"
    row_id: int
    column: str
    stored: int
    recount: int


class CounterFindings(msgspec.Struct, frozen=True):
    users: int
    tweets: int
    wrong: list[CounterDrift]

    @property
    def clean(self) -> bool:
        return not self.wrong


class CounterRepair(msgspec.Struct, frozen=True):
    users: int
    tweets: int
    # Authors whose celebrity flag changed with their recounted followers.
    mode_changes: list[int]


class IndexDrift(msgspec.Struct, frozen=True):
    """The search index compared for some tweets (not the whole index, as `SearchSync.verify`)."""

    checked: int
    collection: str | None
    missing: list[int]
    stale: list[int]
    extra: list[int]

    @property
    def clean(self) -> bool:
        return not self.missing and not self.stale and not self.extra


_USER_STATE = "SELECT last_seen_at FROM users WHERE id = $1"
_FOLLOWEES = (
    "SELECT f.followee_id, f.id AS follow_id, u.is_celebrity FROM follows f"
    " JOIN users u ON u.id = f.followee_id WHERE f.follower_id = $1"
)
_TWEET_STATES = "SELECT id, author_id, deleted_at FROM tweets WHERE id = ANY($1::bigint[])"
# Each counter and the count it must equal, for the row aliased `x`.
_USER_RECOUNTS = {
    "followers_count": "SELECT count(*) FROM follows WHERE followee_id = x.id",
    "following_count": "SELECT count(*) FROM follows WHERE follower_id = x.id",
    "tweets_count": "SELECT count(*) FROM tweets WHERE author_id = x.id AND deleted_at IS NULL",
}
_TWEET_RECOUNTS = {
    "like_count": "SELECT count(*) FROM likes WHERE tweet_id = x.id",
    "reply_count": (
        "SELECT count(*) FROM tweets r WHERE r.reply_to = x.id AND r.deleted_at IS NULL"
    ),
}


def _recount_query(table: str, recounts: dict[str, str]) -> str:
    """Each counter beside its recount (`re_<counter>`), for the rows with the given ids."""
    columns = ", ".join(f"x.{c}, ({q}) AS re_{c}" for c, q in recounts.items())
    return f"SELECT x.id, {columns} FROM {table} x WHERE x.id = ANY($1::bigint[]) ORDER BY x.id"


def _reset_query(table: str, recounts: dict[str, str]) -> str:
    assignments = ", ".join(f"{c} = ({q})" for c, q in recounts.items())
    return f"UPDATE {table} x SET {assignments} WHERE x.id = $1 RETURNING x.*"


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


class TimelineAuditor:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: RedisKeys,
        store: RedisTimelineStore,
        timelines: HomeTimeline,
        tweets: TweetRepository,
        db: Database,
        *,
        active_days: int,
        grace: timedelta,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._store = store
        self._timelines = timelines
        self._tweets = tweets
        self._db = db
        self._active = timedelta(days=active_days)
        self.grace = grace
        # Every timeline key starts with this: RedisKeys.timeline without the user id.
        self._key_head = keys.timeline(0)[:-1]

    # -- which timelines ------------------------------------------------------------------

    async def timeline_users(self) -> AsyncIterator[int]:
        """Every user with a timeline key, once each (SCAN may return a key twice)."""
        seen: set[int] = set()
        pattern = _glob_escape(self._key_head) + "*"
        async for raw in self._redis.scan_iter(match=pattern, count=1000):
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            suffix = key[len(self._key_head) :]
            if not suffix.isdigit():
                continue
            user_id = int(suffix)
            if user_id not in seen:
                seen.add(user_id)
                yield user_id

    async def sample_users(self, size: int) -> list[int]:
        """Up to `size` users with a timeline, chosen uniformly (reservoir sampling over one
        pass of the keyspace, so no key list is ever held)."""
        sample: list[int] = []
        seen = 0
        async for user_id in self.timeline_users():
            seen += 1
            if len(sample) < size:
                sample.append(user_id)
            else:
                slot = random.randrange(seen)
                if slot < size:
                    sample[slot] = user_id
        return sample

    # -- audit ----------------------------------------------------------------------------

    async def audit(self, user_ids: Sequence[int]) -> TimelineFindings:
        semaphore = asyncio.Semaphore(CONCURRENCY)

        async def one(user_id: int) -> TimelineDrift | None:
            async with semaphore:
                return await self.audit_timeline(user_id)

        without: list[int] = []
        drifted: list[TimelineDrift] = []
        for start in range(0, len(user_ids), BATCH):
            batch = user_ids[start : start + BATCH]
            results = await asyncio.gather(*(one(u) for u in batch))
            without += [u for u, r in zip(batch, results, strict=True) if r is None]
            drifted += [r for r in results if r is not None and not r.clean]
        return TimelineFindings(
            audited=len(user_ids) - len(without), without_timeline=without, drifted=drifted
        )

    async def audit_timeline(self, user_id: int) -> TimelineDrift | None:
        """The timeline compared with what Postgres says it should hold; None when it has no
        key. Redis is read first, so every decision is taken on Postgres as it is afterwards:
        a write in between can only look like drift within the grace period."""
        key = self._keys.timeline(user_id)
        held = await self._store.timeline_held(user_id)
        if held is None:
            return None
        complete, members = held.complete, held.ids
        # Marked: older entries were dropped, and below its oldest one Postgres serves.
        full = held.truncated
        now = datetime.now(UTC)
        last_seen = await self._db.pool.fetchval(_USER_STATE, user_id)
        if last_seen is None:
            return TimelineDrift(
                user_id,
                key,
                len(members),
                complete,
                full,
                active=False,
                missing=[],
                extra=[ExtraEntry(m, NO_USER) for m in members],
                orphan=True,
            )
        active = last_seen >= now - self._active
        followees = await self._db.pool.fetch(_FOLLOWEES, user_id)
        normal = {r["followee_id"] for r in followees if not r["is_celebrity"]}
        celebrities = {r["followee_id"] for r in followees if r["is_celebrity"]}
        expected = await self._tweets.ids_by_authors(
            [user_id, *normal], before=None, after=None, limit=self._store.max_entries
        )
        present = set(members)
        wanted = set(expected)

        grace_floor = smallest_id_at(int((time.time() - self.grace.total_seconds()) * 1000))
        missing: list[int] = []
        if complete and active:
            # A full set keeps only the newest entries: below its oldest one, Postgres serves.
            floor = min(members, default=0) if full else 0
            missing = [t for t in expected if t not in present and floor < t < grace_floor]
        candidates = [m for m in members if m not in wanted]
        states = {
            r["id"]: r for r in await self._db.pool.fetch(_TWEET_STATES, [*candidates, *missing])
        }
        if missing:
            # A follow this recent may still be merging the followee's tweets.
            fresh = {r["followee_id"] for r in followees if r["follow_id"] >= grace_floor}
            missing = [
                t
                for t in missing
                if states[t]["deleted_at"] is None and states[t]["author_id"] not in fresh
            ]
        extra: list[ExtraEntry] = []
        for tweet_id in candidates:
            state = states.get(tweet_id)
            if state is None:
                extra.append(ExtraEntry(tweet_id, UNKNOWN))
            elif state["deleted_at"] is not None:
                # The deletion's fanout may still be on its way.
                if state["deleted_at"] < now - self.grace:
                    extra.append(ExtraEntry(tweet_id, DELETED))
            elif state["author_id"] == user_id or state["author_id"] in normal:
                continue  # an older tweet that belongs here, kept below the newest ones
            elif state["author_id"] in celebrities:
                extra.append(ExtraEntry(tweet_id, CELEBRITY))
            else:
                extra.append(ExtraEntry(tweet_id, NOT_FOLLOWED))
        return TimelineDrift(
            user_id,
            key,
            len(members),
            complete,
            full,
            active,
            missing=missing,
            extra=sorted(extra, key=lambda e: -e.tweet_id),
        )

    # -- repair ---------------------------------------------------------------------------

    async def repair(self, drifted: Sequence[TimelineDrift]) -> int:
        """Removes the entries that must not be there, then merges in what a rebuild holds
        (the sentinel included, trimmed to the cap): the timeline ends up as a rebuild would
        leave it, without ever being absent for a concurrent reader. Returns how many
        timelines were touched."""
        for drift in drifted:
            if drift.orphan:
                await self._store.drop_timeline(drift.user_id)
                continue
            # Extras first: removed after the merge, they would have pushed valid entries
            # out of a full set.
            await self._store.unpush_from_timelines(
                [drift.user_id], [e.tweet_id for e in drift.extra]
            )
            await self._timelines.populate(drift.user_id)
        return len(drifted)


class CounterAuditor:
    """Recounts the denormalised counters. A repair locks the row first, as the write paths
    do (likes: `SELECT ... FOR UPDATE` on the tweet; follows, posts, deletions: `UPDATE` of
    the user or parent row), and recounts only then: a concurrent change either committed
    before the lock (and is in the recount) or waits for it (and applies its +1/-1 on top).
    The lock is `FOR NO KEY UPDATE`, the strength of those UPDATEs: it does not hold up
    inserts that merely reference the row (a new tweet's author, a like's tweet)."""

    def __init__(
        self,
        db: Database,
        reader: TweetReader,
        *,
        celebrity_threshold: int,
        hysteresis: float,
        next_id: Callable[[], int],
    ) -> None:
        self._db = db
        self._reader = reader
        self._threshold = celebrity_threshold
        self._hysteresis = hysteresis
        self._next_id = next_id

    async def recent_tweets(self, user_ids: Sequence[int], per_user: int) -> list[int]:
        """Each user's newest live tweets."""
        rows = await self._db.pool.fetch(
            "SELECT t.id FROM unnest($1::bigint[]) AS a(id) CROSS JOIN LATERAL"
            " (SELECT id FROM tweets WHERE author_id = a.id AND deleted_at IS NULL"
            " ORDER BY id DESC LIMIT $2) AS t",
            list(user_ids),
            per_user,
        )
        return [r["id"] for r in rows]

    async def audit(self, user_ids: Sequence[int], tweet_ids: Sequence[int]) -> CounterFindings:
        wrong: list[CounterDrift] = []
        users = tweets = 0
        for start in range(0, len(user_ids), BATCH):
            rows = await self._recount("users", _USER_RECOUNTS, user_ids[start : start + BATCH])
            users += len(rows)
            for row in rows:
                wrong += _differences("users", row, _USER_RECOUNTS)
        for start in range(0, len(tweet_ids), BATCH):
            rows = await self._recount("tweets", _TWEET_RECOUNTS, tweet_ids[start : start + BATCH])
            tweets += len(rows)
            for row in rows:
                wrong += _differences("tweets", row, _TWEET_RECOUNTS)
        return CounterFindings(users=users, tweets=tweets, wrong=wrong)

    async def _recount(
        self, table: str, recounts: dict[str, str], ids: Sequence[int]
    ) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self._db.pool.fetch(
            _recount_query(table, recounts), list(ids)
        )
        return rows

    async def repair(self, wrong: Sequence[CounterDrift]) -> CounterRepair:
        """Sets every counter of each row found wrong to its recount, one row per transaction
        (a single lock held, so no lock-order cycle with the write paths)."""
        user_ids = sorted({d.row_id for d in wrong if d.table == "users"})
        tweet_ids = sorted({d.row_id for d in wrong if d.table == "tweets"})
        changed = [u for u in user_ids if await self._repair_user(u)]
        for tweet_id in tweet_ids:
            await self._repair_tweet(tweet_id)
        # Cached tweets carry their counts.
        await self._reader.forget_tweets(tweet_ids)
        return CounterRepair(users=len(user_ids), tweets=len(tweet_ids), mode_changes=changed)

    async def _repair_user(self, user_id: int) -> bool:
        """Returns whether the recount moved the author across the celebrity threshold: then,
        as a follow would, the flag flips and a FanoutModeChanged goes into the outbox."""
        async with self._db.transaction() as connection:
            celebrity = await connection.fetchval(
                "SELECT is_celebrity FROM users WHERE id = $1 FOR NO KEY UPDATE", user_id
            )
            if celebrity is None:
                return False
            # A statement of its own, after the lock: its snapshot holds every change that
            # committed while this transaction waited for the row.
            row = await connection.fetchrow(_reset_query("users", _USER_RECOUNTS), user_id)
            assert row is not None
            now_celebrity = is_celebrity_after(
                celebrity, row["followers_count"], self._threshold, self._hysteresis
            )
            if now_celebrity == celebrity:
                return False
            await connection.execute(
                "UPDATE users SET is_celebrity = $2 WHERE id = $1", user_id, now_celebrity
            )
            await insert_event(
                connection,
                FanoutModeChanged(
                    event_id=self._next_id(),
                    author_id=user_id,
                    celebrity=now_celebrity,
                    request_id=current_request_id(),
                ),
            )
            return True

    async def _repair_tweet(self, tweet_id: int) -> None:
        async with self._db.transaction() as connection:
            locked = await connection.fetchval(
                "SELECT 1 FROM tweets WHERE id = $1 FOR NO KEY UPDATE", tweet_id
            )
            if locked is None:
                return
            await connection.execute(_reset_query("tweets", _TWEET_RECOUNTS), tweet_id)


def _differences(table: str, row: asyncpg.Record, columns: Iterable[str]) -> list[CounterDrift]:
    """The row's counters that differ from their recount (selected as `re_<column>`)."""
    return [
        CounterDrift(table, row["id"], column, row[column], row["re_" + column])
        for column in columns
        if row[column] != row["re_" + column]
    ]


async def tweets_to_index_check(db: Database, user_ids: Sequence[int], per_user: int) -> list[int]:
    """The users' newest tweets, live or deleted (a deleted one must have left the index).
    Deleted tweets have no index by author: this scans, which an operator command may."""
    rows = await db.pool.fetch(
        "SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY author_id ORDER BY id DESC)"
        " AS rank FROM tweets WHERE author_id = ANY($1::bigint[])) AS t WHERE rank <= $2",
        list(user_ids),
        per_user,
    )
    return [r["id"] for r in rows]


async def audit_index(
    sync: SearchSync, tweets: TweetRepository, tweet_ids: Sequence[int]
) -> IndexDrift:
    """These tweets' documents compared with Postgres: a live tweet must be indexed as it is
    now, a deleted or unknown one must not be indexed."""
    rows = await tweets.get_many(tweet_ids)
    live = [rows[i] for i in tweet_ids if i in rows and not rows[i].deleted]
    collection = await sync.index.current_collection()
    try:
        indexed = await sync.index.documents(list(tweet_ids)) if collection else {}
    except MissingCollection:
        collection, indexed = None, {}
    missing: list[int] = []
    stale: list[int] = []
    for expected in await sync.documents_for(live):
        found = indexed.get(int(expected.id))
        if found is None:
            missing.append(int(expected.id))
        elif found != expected:
            stale.append(int(expected.id))
    live_ids = {t.id for t in live}
    extra = [i for i in indexed if i not in live_ids]
    return IndexDrift(
        checked=len(tweet_ids),
        collection=collection,
        missing=sorted(missing, reverse=True),
        stale=sorted(stale, reverse=True),
        extra=sorted(extra, reverse=True),
    )
