"""Turning tweet ids into what readers see: tweets from the cache (one MGET, misses from
Postgres in one query, then cached), their authors likewise, and the reader's likes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from domain.model import Author, Tweet, TweetView
from storage.local_cache import ExpiringCache
from storage.metrics import CACHE_REQUESTS
from storage.redis_store import REDIS_ERRORS, RedisBreaker, RedisObjectCache
from storage.repositories import TweetRepository, UserRepository

# Which of these tweet ids the viewer likes.
LikedLookup = Callable[[list[int]], Awaitable[set[int]]]


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
        self._unforgotten: set[int] = set()

    async def tweets(self, ids: Sequence[int]) -> dict[int, Tweet]:
        if self._unforgotten and self._breaker.closed:
            await self.forget_tweets([])
        found: dict[int, Tweet] = await self._cached(self._tweet_cache, ids)
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
        if found:  # a hit in this process's copy counts as a cache hit like any other
            CACHE_REQUESTS.labels(cache="author", result="hit").inc(len(found))
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
    ) -> list[TweetView]:
        """The tweets in the order given, without deleted or unknown ones (and, when
        `visible_authors` is given, without tweets by anyone else)."""
        tweets = await self.tweets(ids)
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
        # Independent lookups (Redis and Postgres): one round trip of latency, not two.
        authors, liked_ids = await asyncio.gather(
            self.authors(list({t.author_id for t in tweets})),
            liked(tweet_ids)
            if liked is not None and tweet_ids
            else self._liked(viewer_id, tweet_ids),
        )
        return [
            TweetView(tweet=t, author=authors[t.author_id], liked=t.id in liked_ids)
            for t in tweets
            if t.author_id in authors
        ]

    async def _liked(self, viewer_id: int | None, tweet_ids: list[int]) -> set[int]:
        if viewer_id is None or not tweet_ids:
            return set()
        return await self._tweets.liked_among(viewer_id, tweet_ids)

    async def forget_tweets(self, ids: Sequence[int]) -> None:
        """Drops cached copies after a change (likes, replies, deletion). Tried even while
        the breaker is open: a skipped cache read or write costs a Postgres query, but a
        skipped invalidation left the old copy (counts, a deleted tweet shown) for the
        cache's whole lifetime, while the Redis that tripped the breaker was often back
        already (a restarted Redis fails each pooled connection once)."""
        pending = [*self._unforgotten, *ids]
        if not pending:
            return
        try:
            await self._tweet_cache.invalidate(pending)
        except REDIS_ERRORS:
            self._breaker.trip()
            if len(self._unforgotten) < 100_000:
                self._unforgotten.update(ids)
        else:
            self._unforgotten.difference_update(pending)

    async def _cached(self, cache: RedisObjectCache[Any], ids: Sequence[int]) -> dict[int, Any]:
        if not ids or not self._breaker.closed:
            return {}
        try:
            found = await cache.get_many(ids)
        except REDIS_ERRORS:
            self._breaker.trip()
            return {}
        name = "tweet" if cache is self._tweet_cache else "author"
        if found:
            CACHE_REQUESTS.labels(cache=name, result="hit").inc(len(found))
        if len(ids) > len(found):
            CACHE_REQUESTS.labels(cache=name, result="miss").inc(len(ids) - len(found))
        return found

    async def _store(self, cache: RedisObjectCache[Any], objects: dict[int, Any]) -> None:
        if not objects or not self._breaker.closed:
            return
        try:
            await cache.put_many(objects)
        except REDIS_ERRORS:
            self._breaker.trip()
