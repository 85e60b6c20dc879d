"""`chirp trace TWEET_ID [USERNAME]`: one tweet's way through the pipeline, each step with what
is known about it — stored, its outbox row, published, in the stream and where each consumer
is with it, fanned out (to how many, how long it took), in USERNAME's timeline or why not,
indexed. It reports what can be known and says so when something cannot (records expire)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from nats.js.errors import NotFoundError

from domain.events import AnyEvent, TweetDeleted, TweetPosted, decode_event
from domain.ids import encode_member, id_timestamp_ms
from domain.model import Tweet, User
from realtime.jetstream import NATS_ERRORS
from storage.fanout_log import FanoutLog, FanoutRecord
from storage.operations import OperationsRepository
from storage.redis_store import REDIS_ERRORS, SENTINEL
from storage.search_index import MissingCollection, SearchRejected, SearchUnavailable
from web.container import Services

# A published event is in the stream within this long after its tweet was created.
SEARCH_WINDOW = timedelta(minutes=10)
SCAN_LIMIT = 2000


@dataclass(frozen=True)
class Step:
    name: str
    # "ok", "no" (it did not happen and will not), "wait" (not yet), "info"
    state: str
    detail: str


@dataclass(frozen=True)
class StreamHit:
    seq: int
    event: AnyEvent


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


async def trace_tweet(services: Services, tweet_id: int, username: str | None) -> list[Step]:
    ops = OperationsRepository(services.db)
    steps: list[Step] = []
    tweet = await services.tweets.get(tweet_id)
    if tweet is None:
        return [Step("stored", "no", f"no tweet {tweet_id} in Postgres")]
    author = await services.users.get(tweet.author_id)
    author_name = f"@{author.username}" if author else f"user {tweet.author_id}"
    steps.append(
        Step(
            "stored",
            "ok",
            f"by {author_name} at {_when(tweet.created_at)}"
            + (" — since deleted" if tweet.deleted else ""),
        )
    )
    entries = await ops.tweet_events(tweet_id)
    posted = next((e for e in entries if isinstance(e.event, TweetPosted)), None)
    if posted is None:
        steps.append(
            Step("outbox", "info", "no outbox row (published rows are pruned after a day)")
        )
    else:
        request = f", request {posted.event.request_id}" if posted.event.request_id else ""
        steps.append(Step("outbox", "ok", f"TweetPosted event {posted.event.event_id}{request}"))
        if posted.published_at is None:
            steps.append(
                Step("published", "wait", "not yet: the relay retries every second (NATS down?)")
            )
        else:
            delay = (posted.published_at - posted.created_at).total_seconds()
            steps.append(
                Step(
                    "published",
                    "ok",
                    f"at {_when(posted.published_at)}, {_ms(max(0.0, delay))} after commit",
                )
            )
    removed = next((e for e in entries if isinstance(e.event, TweetDeleted)), None)
    if removed is not None:
        published = _when(removed.published_at) if removed.published_at else "not yet"
        steps.append(
            Step(
                "deleted",
                "info",
                f"TweetDeleted event {removed.event.event_id}, published: {published}",
            )
        )
    steps += await _stream_steps(services, tweet)
    record: FanoutRecord | None = None
    try:
        record = await FanoutLog(services.redis, services.keys).get(tweet_id)
    except REDIS_ERRORS:
        steps.append(Step("fanned out", "info", "unknown: Redis is unavailable"))
    else:
        steps.append(_fanout_step(record, author))
    if username is not None:
        steps.append(await _timeline_step(services, ops, tweet, author, username))
    steps.append(await _index_step(services, tweet))
    return steps


def _fanout_step(record: FanoutRecord | None, author: User | None) -> Step:
    if record is None:
        return Step(
            "fanned out",
            "wait",
            "no record: not fanned out yet, or over a day ago (records expire)",
        )
    if record.mode == "celebrity":
        return Step(
            "fanned out",
            "info",
            "celebrity author: not pushed; followers merge it at read time"
            f" (handled {_ms(record.lag_seconds)} after posting)",
        )
    return Step(
        "fanned out",
        "ok",
        f"to {record.followers} follower timeline(s) in {_ms(record.seconds)};"
        f" created → written {_ms(record.lag_seconds)}",
    )


async def _stream_steps(services: Services, tweet: Tweet) -> list[Step]:
    if not services.link.connected:
        return [Step("in stream", "info", "unknown: NATS is not connected")]
    try:
        hit, first_seq = await _find_posted(services, tweet)
        if hit is None:
            if first_seq is not None and first_seq > 1:
                detail = "not found: aged out of the stream (kept 7 days), or never published"
            else:
                detail = "not found in the stream"
            return [Step("in stream", "no", detail)]
        steps = [Step("in stream", "ok", f"{services.names.stream} sequence {hit.seq}")]
        for consumer in await services.link.js.consumers_info(services.names.stream):
            floor = consumer.ack_floor.stream_seq if consumer.ack_floor else 0
            delivered = consumer.delivered.stream_seq if consumer.delivered else 0
            if hit.seq <= floor:
                state, detail = "ok", "acknowledged"
            elif hit.seq <= delivered:
                state, detail = "wait", "delivered, not acknowledged yet (or redelivering)"
            else:
                state, detail = "wait", f"pending: {hit.seq - delivered} message(s) ahead of it"
            steps.append(Step(f"consumer {consumer.name}", state, detail))
        return steps
    except NATS_ERRORS as error:
        return [Step("in stream", "info", f"unknown: JetStream did not answer ({error!r})")]


async def _find_posted(services: Services, tweet: Tweet) -> tuple[StreamHit | None, int | None]:
    """The stream message carrying the tweet's TweetPosted. JetStream cannot look a message up
    by Nats-Msg-Id, so: binary search by stored time for the tweet's creation, then read the
    posted subject forward from there."""
    js = services.link.js
    stream = services.names.stream
    info = await js.stream_info(stream)
    first, last = info.state.first_seq, info.state.last_seq
    if info.state.messages == 0:
        return None, first
    created = datetime.fromtimestamp(id_timestamp_ms(tweet.id) / 1000, UTC)
    low, high = first, last
    while low < high:
        middle = (low + high) // 2
        stored = await _stored_at(services, middle)
        if stored is None or stored < created - timedelta(seconds=1):
            low = middle + 1
        else:
            high = middle
    subject = services.names.subject(TweetPosted.kind)
    seq = low
    for _ in range(SCAN_LIMIT):
        try:
            message = await js.get_msg(stream, seq, subject=subject, next=True)
        except NotFoundError:
            return None, first
        if message.seq is None or message.data is None:
            return None, first
        with contextlib.suppress(Exception):
            event = decode_event(message.data)
            if isinstance(event, TweetPosted) and event.tweet_id == tweet.id:
                return StreamHit(message.seq, event), first
        if message.time is not None and message.time > created + SEARCH_WINDOW:
            return None, first
        seq = message.seq + 1
    return None, first


async def _stored_at(services: Services, seq: int) -> datetime | None:
    try:
        message = await services.link.js.get_msg(services.names.stream, seq)
    except NotFoundError:
        return None
    return message.time


async def _timeline_step(
    services: Services,
    ops: OperationsRepository,
    tweet: Tweet,
    author: User | None,
    username: str,
) -> Step:
    name = f"in @{username}'s timeline"
    user = await services.users.get_by_username(username)
    if user is None:
        return Step(name, "no", f"no user @{username}")
    key = services.keys.timeline(user.id)
    try:
        async with services.redis.pipeline(transaction=False) as pipe:
            pipe.zscore(key, encode_member(tweet.id))
            pipe.zscore(key, SENTINEL)
            pipe.zcard(key)
            pipe.zrange(key, 1, 1)
            pipe.zscore(services.keys.author_tweets(tweet.author_id), encode_member(tweet.id))
            present, complete, size, lowest, in_author_list = await pipe.execute()
    except REDIS_ERRORS:
        return Step(name, "info", "unknown: Redis is unavailable (reads come from Postgres)")
    if tweet.deleted:
        where = "still in" if present is not None else "not in"
        return Step(name, "no", f"deleted: never shown ({where} {key}; reads drop it)")
    if present is not None:
        return Step(name, "ok", f"in {key}")
    own = user.id == tweet.author_id
    if not own and not await services.follows.is_following(user.id, tweet.author_id):
        return Step(name, "no", f"@{username} does not follow the author")
    if author is not None and author.is_celebrity and not own:
        cached = "in" if in_author_list is not None else "not cached in"
        return Step(
            name,
            "ok",
            f"celebrity merge: not in {key}, merged at read time ({cached}"
            f" {services.keys.author_tweets(tweet.author_id)})",
        )
    if complete is None:
        return Step(
            name,
            "info",
            f"{key} is not in Redis (expired or never built): rebuilt from Postgres on the"
            " next read, with the tweet",
        )
    last_seen = await services.users.last_seen_at(user.id)
    active_since = datetime.now(UTC) - timedelta(days=services.settings.active_days)
    if not own and last_seen is not None and last_seen < active_since:
        return Step(
            name,
            "no",
            f"inactive since {_when(last_seen)}: no fanout; the timeline is rebuilt on the"
            " next visit",
        )
    if size - 1 >= services.timelines.max_entries and lowest:
        oldest = int(lowest[0])
        if tweet.id < oldest:
            return Step(
                name,
                "info",
                f"older than the {services.timelines.max_entries} entries kept: paging past"
                " them reads Postgres",
            )
    follow_id = None if own else await ops.follow_id(user.id, tweet.author_id)
    if follow_id is not None and follow_id > tweet.id:
        return Step(
            name,
            "wait",
            "followed after the tweet: the follow merges recent tweets (not done yet?)",
        )
    return Step(name, "wait", f"not in {key} yet: fanout not done (see above)")


async def _index_step(services: Services, tweet: Tweet) -> Step:
    try:
        found = await services.search.documents([tweet.id])
    except MissingCollection:
        return Step("indexed", "wait", "no search collection yet (the indexer creates it)")
    except SearchUnavailable:
        return Step("indexed", "info", "unknown: Typesense is unavailable")
    except SearchRejected as error:
        return Step("indexed", "info", f"unknown: Typesense refused the lookup ({error})")
    if tweet.deleted:
        if tweet.id in found:
            return Step("indexed", "wait", "deleted, still in the index (removal pending)")
        return Step("indexed", "ok", "deleted and removed from the index")
    if tweet.id in found:
        return Step("indexed", "ok", f"in Typesense ({services.search.alias})")
    return Step("indexed", "wait", "not in the index (yet?)")
