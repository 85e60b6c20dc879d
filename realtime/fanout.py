"""The fanout worker: keeps home timelines in Redis in step with the events.

Every effect is idempotent (ZADD and ZREM of the same members, cache drops), so a redelivered
event changes nothing. Decisions are taken from Postgres at processing time, not from the
event: a tweet deleted before its TweetPosted is processed is not pushed, and a follow undone
before its Followed is processed is not merged.

The TweetPosted events of one fetched batch are fanned out together (`fan_out_tweets`), before
the batch's other events, which go one at a time in their lanes (realtime/consumer.py). Why
that order is safe, although it is not stream order:
- every decision is read from Postgres when it is applied, so an event does not depend on
  the ones before it having been applied, only on what has committed;
- the one thing that must not happen is a push landing after the removal that should have
  removed it. Removals (TweetDeleted, Unfollowed) are applied after the posts of their batch
  are pushed, and batches one after another: a TweetDeleted comes after its TweetPosted in
  the stream (the tweet committed before it could be deleted), so in the same batch or a
  later one, and unpushes what the post pushed; an Unfollowed applied after a push removes
  what the push added, and a push applied after an unfollow committed no longer sees the
  follower. A TweetDeleted overtaking its TweetPosted (a post's event republished late by
  the relay) finds the tweet deleted in Postgres when the post is handled: never pushed;
- a Followed merges the followee's tweets from Postgres, whether or not this batch's posts
  were pushed before it; a FanoutModeChanged reads the author's mode from Postgres, as the
  posts do."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
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
from realtime.consumer import EventConsumer
from realtime.jetstream import NatsLink, StreamNames
from realtime.live import LiveEvent, LivePublisher
from storage.fanout_log import FanoutLog, FanoutRecord
from storage.hydrate import TweetReader
from storage.metrics import FANOUT_LAG_SECONDS, FANOUT_TWEETS, labelled
from storage.redis_store import REDIS_ERRORS, Push, RedisTimelineStore
from storage.repositories import (
    FollowRepository,
    PostedTweet,
    TweetRepository,
    UserRepository,
)
from storage.request_id import bound_request_id, current_request_id
from storage.timeline import HomeTimeline

log = logging.getLogger("chirp.fanout")

CONSUMER = "fanout"


@dataclass
class _Part:
    """The tweets of one part of a batch, sorted by how they are fanned out."""

    followers: dict[int, list[int]]  # author -> active followers
    pushed: dict[int, list[int]] = field(default_factory=dict)  # author -> tweets
    merged: dict[int, list[int]] = field(default_factory=dict)  # celebrities': read time
    alone: list[PostedTweet] = field(default_factory=list)  # fanned out on their own

    @property
    def own(self) -> dict[int, list[int]]:
        return {**self.pushed, **self.merged}


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
        part_size: int = 128,
        parts_at_once: int = 3,
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
        self._part_size = part_size
        self._parts_at_once = parts_at_once
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

    async def warm_up(self) -> None:
        """Runs the follower query on as many pool connections as a batch's parts use at
        once, before the first batch: a new Postgres backend loads its catalog caches and
        plans the query on first use, which made the first part of a new worker's first
        batch take about 25 ms instead of 3 (bench/fanout.py)."""
        since = self._active_since()
        await asyncio.gather(
            *(
                self._follows.audiences([], since, up_to=self._chunk_size)
                for _ in range(self._parts_at_once)
            )
        )

    async def fan_out_tweet(self, event: TweetPosted) -> None:
        await self.fan_out_tweets([event])

    async def fan_out_tweets(self, events: Sequence[TweetPosted]) -> None:
        """The TweetPosted events of one fetched batch, fanned out together, in parts of
        `part_size` tweets: per part, one query for the live tweets, their authors and
        those authors' active followers, one round trip of pushes, one presence lookup, one
        round trip of records. One event at a time, each tweet paid those round trips
        whatever its audience: bench/fanout.py's steady posting went from about 850 to
        about 4,800 tweets/s. A few parts are in flight at once, so that Redis pushes one
        while the worker and Postgres prepare the next (as one part, the batch left Redis
        idle during its query and the worker's own work). The parts are independent: every
        decision is a tweet's own, read from Postgres. An author with more followers than a
        chunk is fanned out on their own, chunk by chunk, after the parts. Raises when
        anything fails, once every part has finished: the consumer then handles the events
        one at a time."""
        by_tweet = {e.tweet_id: e for e in events}
        ids = list(by_tweet)
        parts = [ids[i : i + self._part_size] for i in range(0, len(ids), self._part_size)]
        active_since = self._active_since()
        at_once = asyncio.Semaphore(self._parts_at_once)

        async def fan_out_part(part: list[int]) -> list[PostedTweet]:
            async with at_once:
                started = time.perf_counter()
                found, followers = await self._follows.audiences(
                    part, active_since, up_to=self._chunk_size
                )
                sorted_part = self._sort_part(found, followers)
                await self._push_part(sorted_part)
                await self._tell_part(sorted_part, by_tweet, started)
                return sorted_part.alone

        # Every part finishes (or fails) before the batch does; then the first failure,
        # if any, is raised.
        results = await asyncio.gather(*(fan_out_part(p) for p in parts), return_exceptions=True)
        alone: list[PostedTweet] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            alone += result
        for tweet in alone:
            await self._fan_out_alone(tweet, by_tweet[tweet.tweet_id].request_id)

    def _sort_part(self, found: Sequence[PostedTweet], followers: dict[int, list[int]]) -> _Part:
        part = _Part(followers)
        for tweet in sorted(found):
            if tweet.author_is_celebrity:
                part.merged.setdefault(tweet.author_id, []).append(tweet.tweet_id)
            elif tweet.author_followers > self._chunk_size:
                part.alone.append(tweet)
            else:
                part.pushed.setdefault(tweet.author_id, []).append(tweet.tweet_id)
        return part

    async def _push_part(self, part: _Part) -> None:
        followers = part.followers
        # The author's own timeline too: read-your-writes was best effort in the request.
        await self._store.push_many(
            timelines=[([a, *followers[a]], ids) for a, ids in part.pushed.items()]
            + [([a], ids) for a, ids in part.merged.items()],
            authors=[([a], ids) for a, ids in part.own.items()],
            keys_per_call=self._chunk_size,
        )

    async def _tell_part(
        self, part: _Part, by_tweet: dict[int, TweetPosted], started: float
    ) -> None:
        """Live push and records of a part, once its timelines hold its tweets: a socket
        that reconnects and reads its timeline must find what it was not sent live."""
        followers = part.followers
        live: dict[int, list[LiveEvent]] = {}
        for author_id, ids in part.own.items():
            tweets = [LiveEvent(event="tweet", id=t, author_id=author_id) for t in ids]
            for user_id in (author_id, *followers.get(author_id, ())):
                live.setdefault(user_id, []).extend(tweets)
        await self._live.to_online(live)
        for author_id, ids in part.merged.items():
            for tweet_id in ids:
                await self._live.to_author_followers(
                    LiveEvent(event="tweet", id=tweet_id, author_id=author_id)
                )
        entries = [
            self._entry(t, "push", len(followers[a]), started, by_tweet[t].request_id)
            for a, ids in part.pushed.items()
            for t in ids
        ] + [
            self._entry(t, "celebrity", 0, started, by_tweet[t].request_id)
            for ids in part.merged.values()
            for t in ids
        ]
        await self._record(entries)

    async def _fan_out_alone(self, tweet: PostedTweet, request_id: str | None) -> None:
        """A tweet of an author with many followers: chunk by chunk, so that their list
        never sits in memory at once and Redis is never blocked for long."""
        started = time.perf_counter()
        live = LiveEvent(event="tweet", id=tweet.tweet_id, author_id=tweet.author_id)
        own: list[Push] = [([tweet.author_id], [tweet.tweet_id])]
        await self._store.push_many(timelines=own, authors=own)
        await self._live.to_online_users([tweet.author_id], live)
        written = await self.push_to_followers(tweet.author_id, [tweet.tweet_id], live)
        await self._record([self._entry(tweet.tweet_id, "push", written, started, request_id)])

    def _entry(
        self,
        tweet_id: int,
        mode: str,
        followers: int,
        started: float,
        request_id: str | None = None,
    ) -> FanoutRecord:
        now = time.time()
        return FanoutRecord(
            tweet_id=tweet_id,
            mode=mode,
            followers=followers,
            seconds=time.perf_counter() - started,
            lag_seconds=max(0.0, now - id_timestamp_ms(tweet_id) / 1000),
            at=now,
            request_id=request_id or current_request_id(),
        )

    async def _record(self, entries: Sequence[FanoutRecord]) -> None:
        """Metrics, log lines and the operators' records (`fo:{tweet_id}`) of fanouts."""
        pushes = [e for e in entries if e.mode == "push"]
        if pushes:
            labelled(FANOUT_TWEETS, "push").inc(len(pushes))
        if len(pushes) < len(entries):
            labelled(FANOUT_TWEETS, "celebrity").inc(len(entries) - len(pushes))
        for entry in pushes:
            FANOUT_LAG_SECONDS.observe(entry.lag_seconds)
        if log.isEnabledFor(logging.DEBUG):
            for entry in entries:
                with bound_request_id(entry.request_id):
                    log.debug(
                        "tweet fanned out",
                        extra={
                            "tweet_id": entry.tweet_id,
                            "mode": entry.mode,
                            "followers": entry.followers,
                            "lag": entry.lag_seconds,
                        },
                    )
        if self._fanout_log is None or not entries:
            return
        try:
            await self._fanout_log.record_many(entries)
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
        chunks = self._follows.active_follower_chunks(
            author_id, self._active_since(), self._chunk_size
        )
        # The query for the next chunk runs while this one is pushed.
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
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
        chunks = self._follows.active_follower_chunks(
            event.author_id, self._active_since(), self._chunk_size
        )
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
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


@dataclass(frozen=True)
class FanoutTuning:
    # Events fetched at most at once (a fetch takes what is there: under light load, a few);
    # their TweetPosted are fanned out together. Larger batches share the round trips among
    # more tweets, but the batch's other events and its acks wait until all its parts are
    # written (about 90 ms for 768 at full speed in bench/fanout.py).
    batch: int = 768
    # Followers per query fetch and per Redis script call; an author with more followers
    # than this is fanned out on their own, chunk by chunk.
    chunk_size: int = 1000
    # Tweets of a batch per follower query, push round trip and live push; `parts_at_once`
    # of them in flight, so that one part's query and Python work overlap another's push
    # (10,000 tweets of steady posting on bench/fanout.py's smoke graph, on 2 cores: about
    # 145k inserts/s with the batch as one part, about 165k with parts of 128; parts of 64
    # did no better). The follower query checks each follower's last visit in `users`, a
    # hash of the whole table or a lookup per follower: per tweet it costs less in larger
    # parts (on the full graph, 283 µs of Postgres per tweet in parts of 128, 124 in parts
    # of 256; steady fanout with batches of 768, 110k -> 141k inserts/s).
    part_size: int = 256
    parts_at_once: int = 3
    # Deliveries of a failing event before it is parked on the dead-letter stream.
    max_deliver: int = 10
    # First redelivery delay of a failing event, doubling each time.
    redelivery_delay: float = 0.5


def fanout_event_consumer(
    link: NatsLink, names: StreamNames, fanout: Fanout, tuning: FanoutTuning | None = None
) -> EventConsumer:
    tuning = tuning or FanoutTuning()

    async def fan_out_posts(events: Sequence[AnyEvent]) -> None:
        await fanout.fan_out_tweets([e for e in events if isinstance(e, TweetPosted)])

    return EventConsumer(
        link,
        names,
        CONSUMER,
        fanout.handle,
        bulk_kinds=(TweetPosted,),
        bulk_handler=fan_out_posts,
        batch=tuning.batch,
        max_deliver=tuning.max_deliver,
        redelivery_delay=tuning.redelivery_delay,
    )
