"""Events travel as JSON tagged with their type; decoding gives back the same event."""

from __future__ import annotations

import json

import msgspec
import pytest

from domain.events import (
    Event,
    FanoutModeChanged,
    Followed,
    TweetDeleted,
    TweetPosted,
    Unfollowed,
    decode_event,
    encode_event,
    ordering_key,
)

BIG = 2**62 + 12345

EVENTS: list[Event] = [
    TweetPosted(event_id=BIG, tweet_id=BIG + 1, author_id=BIG + 2, reply_to=BIG + 3),
    TweetPosted(event_id=1, tweet_id=2, author_id=3),
    TweetDeleted(event_id=BIG, tweet_id=BIG + 1, author_id=5),
    Followed(event_id=BIG, follower_id=1, followee_id=2),
    Unfollowed(event_id=BIG, follower_id=1, followee_id=2),
    FanoutModeChanged(event_id=BIG, author_id=9, celebrity=True),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_an_event_round_trips_exactly(event: Event) -> None:
    assert decode_event(encode_event(event)) == event


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_the_type_tag_is_the_events_kind(event: Event) -> None:
    body = json.loads(encode_event(event))
    assert body["type"] == event.kind
    assert body["event_id"] == event.event_id  # 64-bit ints stay exact in the payload


def test_kinds_map_to_subject_suffixes() -> None:
    assert [e.kind for e in EVENTS] == [
        "tweet.posted",
        "tweet.posted",
        "tweet.deleted",
        "follow.created",
        "follow.removed",
        "author.mode",
    ]


@pytest.mark.parametrize(
    "payload",
    [b"{}", b'{"type": "tweet.exploded", "event_id": 1}', b'{"type": "tweet.posted"}', b"nope"],
)
def test_unknown_or_incomplete_payloads_are_refused(payload: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_event(payload)


def test_events_are_immutable() -> None:
    event = Followed(event_id=1, follower_id=1, followee_id=2)
    with pytest.raises(AttributeError):
        event.follower_id = 3  # type: ignore[misc]


def test_events_about_one_authors_tweets_share_an_ordering_key() -> None:
    author, reader = 7, 9
    about_author = [
        TweetPosted(event_id=1, tweet_id=10, author_id=author),
        TweetDeleted(event_id=2, tweet_id=10, author_id=author),
        Followed(event_id=3, follower_id=reader, followee_id=author),
        Unfollowed(event_id=4, follower_id=reader, followee_id=author),
        FanoutModeChanged(event_id=5, author_id=author, celebrity=True),
    ]
    assert {ordering_key(e) for e in about_author} == {author}
    assert ordering_key(TweetPosted(event_id=6, tweet_id=11, author_id=reader)) == reader
