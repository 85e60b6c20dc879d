"""What happened, in the past tense. Every event carries its own id (a Snowflake), which is
also its JetStream message id, so a republished event is recognised as the same one."""

from __future__ import annotations

from typing import ClassVar

import msgspec


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    event_id: int
    # The id of the request that caused it (X-Request-ID), so the workers' log lines about
    # it can be found with the web app's; absent from events written before it existed.
    request_id: str | None = None
    # The name after the subject prefix, e.g. "tweet.posted" → subject "chirp.tweet.posted".
    kind: ClassVar[str]


class TweetPosted(Event, frozen=True, tag="tweet.posted"):
    kind: ClassVar[str] = "tweet.posted"
    tweet_id: int
    author_id: int
    reply_to: int | None = None


class TweetDeleted(Event, frozen=True, tag="tweet.deleted"):
    kind: ClassVar[str] = "tweet.deleted"
    tweet_id: int
    author_id: int
    reply_to: int | None = None


class Followed(Event, frozen=True, tag="follow.created"):
    kind: ClassVar[str] = "follow.created"
    follower_id: int
    followee_id: int


class Unfollowed(Event, frozen=True, tag="follow.removed"):
    kind: ClassVar[str] = "follow.removed"
    follower_id: int
    followee_id: int


class FanoutModeChanged(Event, frozen=True, tag="author.mode"):
    """An author crossed the celebrity threshold: their tweets are now pushed at write time
    (celebrity=False) or merged at read time (celebrity=True)."""

    kind: ClassVar[str] = "author.mode"
    author_id: int
    celebrity: bool


AnyEvent = TweetPosted | TweetDeleted | Followed | Unfollowed | FanoutModeChanged


def ordering_key(event: AnyEvent) -> int:
    """The author whose tweets the event moves in or out of timelines. Events with the same
    key are applied in stream order (a push must not land after the unfollow that should
    have removed it); events with different keys touch disjoint entries and may run at once."""
    if isinstance(event, Followed | Unfollowed):
        return event.followee_id
    return event.author_id


_decoder = msgspec.json.Decoder(AnyEvent)
_encoder = msgspec.json.Encoder()


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def decode_event(data: bytes) -> AnyEvent:
    event: AnyEvent = _decoder.decode(data)
    return event
