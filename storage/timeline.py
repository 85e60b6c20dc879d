"""The home timeline read path (DESIGN.md "Read path") and the operations that keep the
Redis copy in step: populate (rebuild), merge and unmerge on follow changes.

Read: the precomputed timeline from Redis, merged with the recent tweets of followed
celebrities (never fanned out), hydrated, filtered. A missing timeline is rebuilt from Postgres;
a page reaching past what Redis keeps, or Redis being down, is answered from Postgres."""

from __future__ import annotations

import time
from collections.abc import Sequence

import msgspec

from domain.model import TweetView
from domain.timeline import in_window, merge_newest_first, page_cursor, visible_authors
from storage.hydrate import LikedLookup, TweetReader
from storage.local_cache import ExpiringCache
from storage.metrics import TIMELINE_ASSEMBLY_SECONDS, labelled
from storage.redis_store import (
    REDIS_ERRORS,
    HomePages,
    RedisBreaker,
    RedisTimelineStore,
    TimelinePage,
)
from storage.repositories import FollowRepository, TweetRepository

NO_UPPER_BOUND = 2**63 - 1


Followees = tuple[tuple[int, ...], tuple[int, ...]]  # (normal authors, celebrities)


# The per-process copies below hold ids in tuples and dicts of ints, which the cyclic
# collector untracks, not in lists and frozensets, which it walks element by element: over a
# warm process's 2,000 readers each full collection took 7-8 ms of CPU, now 1-3.5
# (bench/timeline.py at full size, measured with gc.callbacks).
class CachedFollowees(msgspec.Struct, frozen=True, gc=False):
    versions: tuple[bytes | None, bytes | None]
    normal: tuple[int, ...]
    celebrities: tuple[int, ...]


class CachedLikes(msgspec.Struct, frozen=True, gc=False):
    version: bytes | None
    # Every tweet from this id on that the user likes is among tweet_ids' keys.
    oldest: int
    tweet_ids: dict[int, None]


# How long a process keeps a reader's follow list and likes. Every read checks the copy's
# version in Redis, so this only bounds how long a change whose version bump never reached
# Redis goes unseen. Follow bumps are repeated by the fanout worker from their events until
# Redis takes them; a like's bump is retried only by the process that took the like, so it
# is lost if that process dies first (or holds 100,000 pending), and a Redis restarted from
# an append-only file a second behind can bring back a version some copies still hold: in
# those cases other processes show the old liked flag for up to this long. At 60 s every
# warm reader's copies were reloaded from Postgres each minute, in waves that queued the
# timeline at 80% of its peak for seconds at a time (p99 100-200 ms; bench/timeline.py).
COPY_SECONDS = 600.0

# Per user, the most likes a process keeps (the newest); older pages ask Postgres.
LIKES_KEPT = 2_000


class HomePage(msgspec.Struct, frozen=True):
    items: list[TweetView]
    next_cursor: int | None
    # Where the page came from: "redis", "rebuilt" or "postgres" (metrics and tests).
    source: str


class HomeTimeline:
    def __init__(
        self,
        store: RedisTimelineStore,
        tweets: TweetRepository,
        follows: FollowRepository,
        reader: TweetReader,
        breaker: RedisBreaker,
        *,
        merge_backfill: int = 200,
    ) -> None:
        self._store = store
        self._tweets = tweets
        self._follows = follows
        self._reader = reader
        self._breaker = breaker
        self.max_entries = store.max_entries
        self.merge_backfill = merge_backfill
        # Each user's follow list, keyed by the versions Redis keeps for it (`fv:{user}`,
        # bumped after every follow change; `cv`, bumped when an author changes fanout mode),
        # which the read fetches in the same round trip as the page: a current copy spares
        # the Postgres query that was a third of a timeline read. Entries also expire, in
        # case a bump was lost with Redis.
        self._followees: ExpiringCache[int, CachedFollowees] = ExpiringCache(COPY_SECONDS)
        self._likes: ExpiringCache[int, CachedLikes] = ExpiringCache(COPY_SECONDS)

    async def read(
        self, user_id: int, *, before: int | None = None, after: int | None = None, limit: int = 20
    ) -> HomePage:
        started = time.perf_counter()
        want = limit + 1
        source = "postgres"
        ids: list[int] | None = None
        redis_usable = self._breaker.closed
        followees: Followees | None = None
        liked: LikedLookup | None = None
        prefetched: dict[int, bytes | None] = {}
        if redis_usable:
            try:
                followees, pages = await self._redis_pages(user_id, before, after, want)
                prefetched = pages.cached_tweets
                liked = self._liked_lookup(user_id, pages.likes_version)
                ids, source = await self._candidates_from_redis(
                    user_id, followees, before, after, want, pages
                )
            except REDIS_ERRORS:
                self._breaker.trip()
        if followees is None:
            followees = await self._follows.followees(user_id)
        normal, celebrities = followees
        authors = visible_authors(user_id, [*normal, *celebrities])
        if ids is None:
            ids = await self._tweets.ids_by_authors(
                list(authors), before=before, after=after, limit=want
            )
        views = await self._reader.views(
            user_id, ids, visible_authors=authors, liked=liked, prefetched=prefetched
        )
        if len(views) < len(ids) and len(ids) == want:
            # Redis held stale entries (deleted tweets, a push that raced an unfollow) that
            # the filter dropped: fill the page from Postgres, which holds none.
            more = await self._tweets.ids_by_authors(
                list(authors), before=ids[-1], after=after, limit=want - len(views)
            )
            views += await self._reader.views(user_id, more, visible_authors=authors, liked=liked)
        page = views[:limit]
        labelled(TIMELINE_ASSEMBLY_SECONDS, source).observe(time.perf_counter() - started)
        return HomePage(
            items=page,
            next_cursor=page_cursor([v.tweet.id for v in page], limit, len(views) > limit),
            source=source,
        )

    async def _redis_pages(
        self, user_id: int, before: int | None, after: int | None, want: int
    ) -> tuple[Followees, HomePages]:
        """The timeline page and the followed celebrities' pages in one round trip, using
        this process's copy of the follow list when its versions are still current."""
        cached = self._followees.get(user_id)
        pages = await self._store.home_pages(
            user_id, cached.celebrities if cached else [], before=before, after=after, count=want
        )
        if cached is not None and cached.versions == pages.versions:
            return (cached.normal, cached.celebrities), pages
        # Versions are read before the follow list, so a change committed in between leaves
        # the copy newer than its versions say, never older: the next read reloads it.
        normal, celebrities = await self._follows.followees(user_id)
        self._followees.put(user_id, CachedFollowees(pages.versions, normal, celebrities))
        if cached is None or cached.celebrities != celebrities:
            authors = await self._store.author_pages(
                celebrities, before=before, after=after, count=want
            )
            pages = msgspec.structs.replace(pages, authors=authors)
        return (normal, celebrities), pages

    def forget_reader(self, user_id: int) -> None:
        """Drops this process's copies of the user's follow list and likes (after the user
        changed them here), whatever the versions in Redis say."""
        self._followees.evict(user_id)
        self._likes.evict(user_id)

    def _liked_lookup(self, user_id: int, version: bytes | None) -> LikedLookup:
        """Which tweets the user likes, from this process's copy of their likes from some
        tweet id on, while the version Redis keeps (`lv:{user}`, bumped after every like
        and unlike) says it is current: the liked flags were the last Postgres query of a
        timeline read. The version was read before the copy is loaded, so a like in between
        makes the copy newer than its version, never older."""

        async def liked(tweet_ids: list[int]) -> set[int]:
            oldest = min(tweet_ids)
            cached = self._likes.get(user_id)
            if cached is not None and cached.version == version and oldest >= cached.oldest:
                return {t for t in tweet_ids if t in cached.tweet_ids}
            found, complete_from = await self._tweets.liked_since(user_id, oldest, limit=LIKES_KEPT)
            self._likes.put(user_id, CachedLikes(version, complete_from, dict.fromkeys(found)))
            if oldest >= complete_from:
                return {t for t in tweet_ids if t in found}
            # A prolific liker: the copy holds only the newest likes; ask for these.
            return await self._tweets.liked_among(user_id, tweet_ids)

        return liked

    async def _candidates_from_redis(
        self,
        user_id: int,
        followees: Followees,
        before: int | None,
        after: int | None,
        want: int,
        fetched: HomePages,
    ) -> tuple[list[int], str]:
        source = "redis"
        normal, celebrities = followees
        home = fetched.home
        if home is None:
            await self.populate(user_id, normal)
            source = "rebuilt"
            home = await self._store.timeline_page(user_id, before=before, after=after, count=want)
            if home is None:  # expired between the two calls; serve this page from Postgres
                raise ConnectionError("timeline vanished during rebuild")
        pages: list[TimelinePage] = [home]
        for author_id in celebrities:
            page = fetched.authors.get(author_id)
            if page is None:
                page = await self._load_author(author_id, before, after, want)
            pages.append(page)
        merged = merge_newest_first(*(p.ids for p in pages))
        # A source trimmed to its cap that ran out inside this window knows nothing older than
        # its last entry: below that floor the page must come from Postgres.
        floors = [
            p.ids[-1] if p.ids else (before or NO_UPPER_BOUND)
            for p in pages
            if p.truncated and len(p.ids) < want
        ]
        if floors:
            floor = max(floors)
            merged = [i for i in merged if i >= floor]
            if len(merged) < want:
                older = await self._tweets.ids_by_authors(
                    [user_id, *normal, *celebrities],
                    before=merged[-1] if merged else floor,
                    after=after,
                    limit=want - len(merged),
                )
                merged = merge_newest_first(merged, older)
                source = "redis+postgres"
        return merged[:want], source

    async def _load_author(
        self, author_id: int, before: int | None, after: int | None, want: int
    ) -> TimelinePage:
        recent = await self._tweets.ids_by_authors(
            [author_id], before=None, after=None, limit=self.max_entries
        )
        await self._store.populate_author(author_id, recent)
        window = [i for i in recent if in_window(i, before, after)]
        return TimelinePage(ids=window[:want], truncated=len(recent) >= self.max_entries)

    async def populate(self, user_id: int, normal_followees: Sequence[int] | None = None) -> int:
        """Rebuilds the Redis timeline from Postgres: the user's own tweets and those of the
        normal authors they follow (celebrities are merged at read time)."""
        if normal_followees is None:
            normal_followees, _ = await self._follows.followees(user_id)
        ids = await self._tweets.ids_by_authors(
            [user_id, *normal_followees], before=None, after=None, limit=self.max_entries
        )
        await self._store.populate_timeline(user_id, ids)
        return len(ids)

    async def merge_into_timeline(self, user_id: int, author_id: int) -> None:
        """After a follow: the followee's recent tweets join the follower's timeline."""
        recent = await self._tweets.ids_by_authors(
            [author_id], before=None, after=None, limit=self.merge_backfill
        )
        await self._store.merge_into_timelines(
            [user_id], recent, capped=len(recent) >= self.merge_backfill
        )

    async def unmerge_from_timeline(self, user_id: int, author_id: int) -> None:
        """After an unfollow: the former followee's tweets leave the follower's timeline."""
        recent = await self._tweets.ids_by_authors(
            [author_id], before=None, after=None, limit=self.max_entries
        )
        # And whatever else of theirs the timeline holds, deleted tweets included. A tweet
        # deleted before this ran is not among their live ones, and the deletion's own unpush
        # reaches only the followers left when it runs: if it runs after the unfollow
        # committed (its event republished late by the relay after a NATS outage, or retried
        # through a Redis one), neither removes the tweet and the timeline keeps it for good.
        held = await self._store.timeline_held(user_id)
        theirs = await self._tweets.by_author_among(author_id, held.ids) if held else []
        await self._store.unpush_from_timelines([user_id], sorted({*recent, *theirs}))
