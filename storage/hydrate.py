"""Turning tweet ids into what readers see: tweets from the cache (one MGET, misses from
Postgres in one query, then cached), their authors likewise, and the reader's likes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from domain.model import Author, Tweet, TweetView
from storage.local_cache import ExpiringCache
from storage.metrics import CACHE_REQUESTS, labelled
from storage.redis_store import REDIS_ERRORS, PendingWrites, RedisBreaker, RedisObjectCache
from storage.repositories import TweetRepository, UserRepository

# Which of these tweet ids the viewer likes.
LikedLookup = Callable[[list[int]], Awaitable[set[int]]]


def _count_cache(cache: str, hits: int, misses: int) -> None:
    if hits:
        labelled(CACHE_REQUESTS, cache, "hit").inc(hits)
    if misses:
        labelled(CACHE_REQUESTS, cache, "miss").inc(misses)


class TweetReader:
    def __init__(
        self,
        tweets: TweetRepository,
        users: UserRepository,
        tweet_cache: RedisObjectCache[Tweet],
        author_cache: RedisObjectCache[Author],
        breaker: RedisBreaker,
    ) -> None:
        self._tweets = tweets
        self._users = users
        self._tweet_cache = tweet_cache
        self._author_cache = author_cache
        self._breaker = breaker
        # Authors never change (usernames and display names are set at sign-up), so each
        # process keeps the ones it has seen and a timeline page usually needs no author
        # round trip; the expiry bounds staleness should profiles ever become editable.
        self._local_authors: ExpiringCache[int, Author] = ExpiringCache(300.0)
        # Tweets whose cached copy could not be dropped after a change: dropped with the
        # next invalidation that gets through, and never read from the cache meanwhile.
        self._unforgotten: PendingWrites[int] = PendingWrites(tweet_cache.invalidate, breaker)

    async def tweets(
        self, ids: Sequence[int], prefetched: Mapping[int, bytes | None] | None = None
    ) -> dict[int, Tweet]:
        """`prefetched`: the tweet cache's copies of some of these, read by the caller in an
        earlier round trip (None: the cache has none)."""
        # Copies prefetched before a pending invalidation goes through below are as stale as
        # the cache was then: those ids are read again after it.
        pending = frozenset(self._unforgotten) if self._unforgotten else frozenset()
        if pending and self._breaker.closed:
            await self.forget_tweets([])
        found: dict[int, Tweet] = {}
        remote = ids
        if prefetched:
            decode = self._tweet_cache.decode
            for i in ids:
                blob = prefetched.get(i)
                if blob is not None and i not in pending:
                    found[i] = decode(blob)
            remote = [i for i in ids if i not in prefetched or i in pending]
            _count_cache("tweet", len(found), len(ids) - len(remote) - len(found))
        if remote:
            found.update(await self._cached(self._tweet_cache, remote))
        stale = self._unforgotten
        if stale:
            found = {i: t for i, t in found.items() if i not in stale}
        missing = [i for i in ids if i not in found]
        if missing:
            loaded = await self._tweets.get_many(missing)
            found.update(loaded)
            await self._store(
                self._tweet_cache, {i: t for i, t in loaded.items() if i not in stale}
            )
        return found

    async def authors(self, ids: Sequence[int]) -> dict[int, Author]:
        found: dict[int, Author] = {}
        remote = []
        for i in ids:
            known = self._local_authors.get(i)
            if known is None:
                remote.append(i)
            else:
                found[i] = known
        # A hit in this process's copy counts as a cache hit like any other.
        _count_cache("author", len(found), 0)
        if not remote:
            return found
        cached: dict[int, Author] = await self._cached(self._author_cache, remote)
        missing = [i for i in remote if i not in cached]
        if missing:
            loaded = await self._users.authors(missing)
            cached.update(loaded)
            await self._store(self._author_cache, loaded)
        for author in cached.values():
            self._local_authors.put(author.id, author)
        return found | cached

    async def views(
        self,
        viewer_id: int | None,
        ids: Sequence[int],
        *,
        visible_authors: set[int] | None = None,
        liked: LikedLookup | None = None,
        prefetched: Mapping[int, bytes | None] | None = None,
    ) -> list[TweetView]:
        """The tweets in the order given, without deleted or unknown ones (and, when
        `visible_authors` is given, without tweets by anyone else)."""
        tweets = await self.tweets(ids, prefetched)
        shown = [
            tweets[i]
            for i in ids
            if i in tweets
            and not tweets[i].deleted
            and (visible_authors is None or tweets[i].author_id in visible_authors)
        ]
        return await self.render(viewer_id, shown, liked=liked)

    async def render(
        self,
        viewer_id: int | None,
        tweets: Sequence[Tweet],
        *,
        liked: LikedLookup | None = None,
    ) -> list[TweetView]:
        """`liked`: how to tell which of the tweets the viewer likes, when the caller has a
        cheaper way than asking Postgres."""
        tweet_ids = [t.id for t in tweets]
        author_ids = list({t.author_id for t in tweets})
        if liked is not None and tweet_ids:
            liked_ids_of = liked(tweet_ids)
        else:
            liked_ids_of = self._liked(viewer_id, tweet_ids)
        local = self._local_authors.get_all(author_ids)
        if local is not None:
            # Every author is in this process's copy (the usual case): no lookup to overlap
            # with, and two tasks cost more than the likes lookup itself.
            _count_cache("author", len(local), 0)
            authors, liked_ids = local, await liked_ids_of
        else:
            # Independent lookups (Redis and Postgres): one round trip of latency, not two.
            authors, liked_ids = await asyncio.gather(self.authors(author_ids), liked_ids_of)
        return [
            TweetView(tweet=t, author=authors[t.author_id], liked=t.id in liked_ids)
            for t in tweets
            if t.author_id in authors
        ]

    async def _liked(self, viewer_id: int | None, tweet_ids: list[int]) -> set[int]:
        if viewer_id is None or not tweet_ids:
            return set()
        return await self._tweets.liked_among(viewer_id, tweet_ids)

    async def remember_tweets(self, tweets: Sequence[Tweet]) -> None:
        """Caches tweets just posted, as Postgres holds them: only before anyone else can
        know their ids (a cached copy written after a like's invalidation would be stale
        for the cache's lifetime)."""
        await self._store(self._tweet_cache, {t.id: t for t in tweets})

    async def forget_tweets(self, ids: Sequence[int]) -> None:
        """Drops cached copies after a change (likes, replies, deletion), or leaves them
        pending (PendingWrites). A skipped invalidation left the old copy (counts, a deleted
        tweet shown) for the cache's whole lifetime, while the Redis that tripped the
        breaker was often back already (a restarted Redis fails each pooled connection
        once)."""
        await self._unforgotten.write(ids)

    async def _cached(self, cache: RedisObjectCache[Any], ids: Sequence[int]) -> dict[int, Any]:
        if not ids or not self._breaker.closed:
            return {}
        try:
            found = await cache.get_many(ids)
        except REDIS_ERRORS:
            self._breaker.trip()
            return {}
        _count_cache(
            "tweet" if cache is self._tweet_cache else "author", len(found), len(ids) - len(found)
        )
        return found

    async def _store(self, cache: RedisObjectCache[Any], objects: dict[int, Any]) -> None:
        if not objects or not self._breaker.closed:
            return
        try:
            await cache.put_many(objects)
        except REDIS_ERRORS:
            self._breaker.trip()
