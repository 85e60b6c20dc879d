"""TweetJson writes what msgspec would write for a TweetListOut, and reuses a tweet's encoding
only while nothing it shows can have changed."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from domain.model import Author, Media, Tweet, TweetView
from web.schemas import TweetListOut, cursor_out, tweet_out
from web.tweet_json import TweetJson

ALICE = Author(id=11, username="alice", display_name='Alice "<b>" \u00e9')
WHEN = datetime(2026, 11, 25, 12, 0, 0, 123456, tzinfo=UTC)


def tweet(tweet_id: int, **changes: object) -> Tweet:
    fields: dict[str, object] = {
        "id": tweet_id,
        "author_id": ALICE.id,
        "text": f"tweet {tweet_id} \\ \n \u2603",
        "created_at": WHEN,
    }
    fields.update(changes)
    return Tweet(**fields)  # type: ignore[arg-type]


class Urls:
    def __init__(self) -> None:
        self.window = 1
        self.made = 0

    def url(self, media: Media) -> str:
        self.made += 1
        return f"https://media.example/{media.key}?window={self.window}"

    def current(self) -> int:
        return self.window


def expected(views: list[TweetView], cursor: int | None, urls: Urls) -> object:
    out = TweetListOut(
        tweets=[tweet_out(v, urls.url) for v in views], next_cursor=cursor_out(cursor)
    )
    return msgspec.json.decode(msgspec.json.encode(out))


def test_a_list_is_what_msgspec_would_write_for_every_reader() -> None:
    urls = Urls()
    encoder = TweetJson(urls.url, urls.current)
    image = Media(id=5, content_type="image/png", key="k.png", alt="a cat")
    views = [
        TweetView(tweet=tweet(3, media=(image,), like_count=2), author=ALICE, liked=True),
        TweetView(tweet=tweet(2, reply_to=1, reply_count=4), author=ALICE),
        TweetView(tweet=tweet(1), author=ALICE),
    ]
    for cursor in (None, 2**62 + 7):
        body = encoder.list_body(views, cursor)
        assert msgspec.json.decode(body) == expected(views, cursor, urls)
    # Another reader of the same tweets: the same encodings, their own `liked`.
    other = [msgspec.structs.replace(v, liked=not v.liked) for v in views]
    assert msgspec.json.decode(encoder.list_body(other, None)) == expected(other, None, urls)
    assert encoder.list_body([], None) == b'{"tweets":[],"next_cursor":null}'


def test_a_changed_tweet_or_a_new_url_window_is_encoded_again() -> None:
    urls = Urls()
    encoder = TweetJson(urls.url, urls.current)
    image = Media(id=5, content_type="image/png", key="k.png")
    first = TweetView(tweet=tweet(1, media=(image,)), author=ALICE)
    encoder.list_body([first], None)
    encoder.list_body([first], None)
    assert urls.made == 1  # the same objects: the encoding is reused

    liked_more = TweetView(tweet=tweet(1, media=(image,), like_count=1), author=ALICE)
    assert (
        msgspec.json.decode(encoder.list_body([liked_more], None))["tweets"][0]["like_count"] == 1
    )
    assert urls.made == 2
    # Equal but not the same object (a fresh copy from Postgres): encoded again, never assumed.
    encoder.list_body([TweetView(tweet=tweet(1, media=(image,), like_count=1), author=ALICE)], None)
    assert urls.made == 3

    urls.window = 2
    fresh = msgspec.json.decode(encoder.list_body([liked_more], None))["tweets"][0]
    assert fresh["media"][0]["url"].endswith("window=2")
