"""The fanout worker: keeps home timelines in Redis in step with the events.

Every effect is idempotent (ZADD and ZREM of the same members, cache drops), so a redelivered
event changes nothing. Decisions are taken from Postgres at processing time, not from the
event: a tweet deleted before its TweetPosted is processed is not pushed, and a follow undone
before its Followed is processed is not merged."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

from domain.events import (
    AnyEvent,
    FanoutModeChanged,
    Followed,
    TweetDeleted,
    TweetPosted,
    Unfollowed,
)
from domain.ids import id_timestamp_ms
from realtime.live import LiveEvent, LivePublisher
from storage.fanout_log import FanoutLog, FanoutRecord
from storage.hydrate import TweetReader
from storage.metrics import FANOUT_LAG_SECONDS, FANOUT_TWEETS
from storage.redis_store import REDIS_ERRORS, RedisTimelineStore
from storage.repositories import FollowRepository, TweetRepository, UserRepository
from storage.request_id import current_request_id
from storage.timeline import HomeTimeline

log = logging.getLogger("chirp.fanout")


class Fanout:
    def __init__(
        self,
        store: RedisTimelineStore,
        timelines: HomeTimeline,
        tweets: TweetRepository,
        users: UserRepository,
        follows: FollowRepository,
        reader: TweetReader,
        live: LivePublisher,
        *,
        active_days: int,
        chunk_size: int = 1000,
        mode_change_backfill: int = 50,
        fanout_log: FanoutLog | None = None,
    ) -> None:
        self._store = store
        self._timelines = timelines
        self._tweets = tweets
        self._users = users
        self._follows = follows
        self._reader = reader
        self._live = live
        self._active = timedelta(days=active_days)
        self._chunk_size = chunk_size
        self._mode_change_backfill = mode_change_backfill
        self._fanout_log = fanout_log

    async def handle(self, event: AnyEvent) -> None:
        match event:
            case TweetPosted():
                await self.fan_out_tweet(event)
            case TweetDeleted():
                await self.fan_out_deletion(event)
            case Followed():
                await self.merge_followee(event)
                await self._store.bump_follow_version(event.follower_id)
            case Unfollowed():
                if not await self._follows.is_following(event.follower_id, event.followee_id):
                    await self._timelines.unmerge_from_timeline(
                        event.follower_id, event.followee_id
                    )
                await self._store.bump_follow_version(event.follower_id)
            case FanoutModeChanged():
                await self.change_fanout_mode(event)
                await self._store.bump_celebrity_version()

    async def merge_followee(self, event: Followed) -> None:
        if not await self._follows.is_following(event.follower_id, event.followee_id):
            return  # unfollowed again before this was processed
        followee = await self._users.get(event.followee_id)
        # A celebrity's tweets are merged at read time; pushing them would only duplicate
        # that work and grow the timeline.
        if followee is not None and not followee.is_celebrity:
            await self._timelines.merge_into_timeline(event.follower_id, event.followee_id)

    def _active_since(self) -> datetime:
        return datetime.now(UTC) - self._active

    async def fan_out_tweet(self, event: TweetPosted) -> None:
        started = time.perf_counter()
        tweet = await self._tweets.get(event.tweet_id)
        if tweet is None or tweet.deleted:
            return
        author = await self._users.get(event.author_id)
        if author is None:
            return
        live = LiveEvent(event="tweet", id=tweet.id, author_id=author.id)
        await self._store.push_to_author(author.id, tweet.id)
        # Read-your-writes was best effort in the request; make it certain here.
        await self._store.push_to_timelines([author.id], [tweet.id])
        await self._live.to_online_users([author.id], live)
        if author.is_celebrity:
            # One message for every app process with a follower of this author connected.
            await self._live.to_author_followers(live)
            await self._record(tweet.id, "celebrity", 0, started)
            return
        written = await self.push_to_followers(author.id, [tweet.id], live)
        await self._record(tweet.id, "push", written, started)

    async def _record(self, tweet_id: int, mode: str, followers: int, started: float) -> None:
        """Metrics, a log line and the operators' record (`fo:{tweet_id}`) of one fanout."""
        lag = max(0.0, time.time() - id_timestamp_ms(tweet_id) / 1000)
        seconds = time.perf_counter() - started
        FANOUT_TWEETS.labels(mode=mode).inc()
        if mode == "push":
            FANOUT_LAG_SECONDS.observe(lag)
        log.debug(
            "tweet fanned out",
            extra={"tweet_id": tweet_id, "mode": mode, "followers": followers, "lag": lag},
        )
        if self._fanout_log is None:
            return
        entry = FanoutRecord(
            tweet_id=tweet_id,
            mode=mode,
            followers=followers,
            seconds=seconds,
            lag_seconds=lag,
            at=time.time(),
            request_id=current_request_id(),
        )
        try:
            await self._fanout_log.record(entry)
        except REDIS_ERRORS as error:  # history only: never worth failing the event
            log.warning("fanout record failed", extra={"error": repr(error)})

    async def push_to_followers(
        self,
        author_id: int,
        tweet_ids: list[int],
        live: LiveEvent | None = None,
        *,
        capped: bool = False,
    ) -> int:
        """Returns how many follower timelines were written. `capped`: tweet_ids are the
        author's newest, cut at a limit (see RedisTimelineStore.merge_into_timelines)."""
        written = 0
        async for chunk in self._follows.active_follower_chunks(
            author_id, self._active_since(), self._chunk_size
        ):
            if capped:
                await self._store.merge_into_timelines(chunk, tweet_ids, capped=True)
            else:
                await self._store.push_to_timelines(chunk, tweet_ids)
            written += len(chunk)
            # Only after the timelines hold it: a socket that reconnects and reads its
            # timeline must find what it was not sent live.
            if live is not None:
                await self._live.to_online_users(chunk, live)
        return written

    async def fan_out_deletion(self, event: TweetDeleted) -> None:
        # The cache first: from then on every read drops the tweet, whatever the sets hold.
        await self._reader.forget_tweets([event.tweet_id])
        await self._store.unpush_from_author(event.author_id, event.tweet_id)
        await self._store.unpush_from_timelines([event.author_id], [event.tweet_id])
        live = LiveEvent(event="delete", id=event.tweet_id, author_id=event.author_id)
        await self._live.to_online_users([event.author_id], live)
        await self._live.to_author_followers(live)
        async for chunk in self._follows.active_follower_chunks(
            event.author_id, self._active_since(), self._chunk_size
        ):
            await self._store.unpush_from_timelines(chunk, [event.tweet_id])
            await self._live.to_online_users(chunk, live)

    async def change_fanout_mode(self, event: FanoutModeChanged) -> None:
        author = await self._users.get(event.author_id)
        if author is None or author.is_celebrity:
            return
        # Back to push mode: the tweets that were merged at read time must now be in the
        # followers' timelines, or they would vanish from them.
        recent = await self._tweets.ids_by_authors(
            [author.id], before=None, after=None, limit=self._mode_change_backfill
        )
        if recent:
            await self.push_to_followers(
                author.id, recent, capped=len(recent) >= self._mode_change_backfill
            )
