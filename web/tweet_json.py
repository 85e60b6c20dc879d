"""Lists of tweets as the API's JSON bytes, reusing each tweet's encoding while it is unchanged.

Turning twenty TweetViews into TweetOut structs and then JSON (the times formatted, the
author nested, ids as strings) was a fifth of a timeline read's CPU (bench/timeline.py). The
caches hand out one object per cached version of a tweet and of an author
(storage.redis_store.RedisObjectCache, TweetReader's author copy), so a tweet's JSON can be
kept per process and reused for as long as the same objects come back: a like, a reply or a
deletion changes the cached copy, hence the object, hence a new encoding. Only `liked` differs
between readers; it is the last field, appended per reader. Image URLs are presigned per
window (domain.media.read_url_window): an encoding with images is reused only within its
window."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import msgspec

from domain.model import Author, Tweet, TweetView
from web.schemas import MediaUrl, tweet_out

_NOT_LIKED = b"false}"
_LIKED = b"true}"


class TweetJson:
    def __init__(
        self,
        media_url: MediaUrl,
        url_window: Callable[[], Hashable],
        *,
        kept: int = 20_000,
    ) -> None:
        self._media_url = media_url
        self._url_window = url_window
        self._kept = kept
        self._encoder = msgspec.json.Encoder()
        # tweet id -> (the Tweet and Author it was made from, its URL window, the JSON up to
        # and including `"liked":`)
        self._encoded: dict[int, tuple[Tweet, Author, Hashable, bytes]] = {}

    def list_body(self, views: Sequence[TweetView], next_cursor: int | None) -> bytes:
        """The bytes of `TweetListOut(tweets=[...], next_cursor=...)`."""
        window = self._url_window() if any(v.tweet.media for v in views) else None
        tweets = b",".join(
            self._prefix(v, window) + (_LIKED if v.liked else _NOT_LIKED) for v in views
        )
        cursor = b"null" if next_cursor is None else b'"%d"' % next_cursor
        return b'{"tweets":[' + tweets + b'],"next_cursor":' + cursor + b"}"

    def _prefix(self, view: TweetView, window: Hashable) -> bytes:
        tweet, author = view.tweet, view.author
        if not tweet.media:
            window = None
        entry = self._encoded.get(tweet.id)
        if entry is not None and entry[0] is tweet and entry[1] is author and entry[2] == window:
            return entry[3]
        unliked = msgspec.structs.replace(view, liked=False) if view.liked else view
        encoded = self._encoder.encode(tweet_out(unliked, self._media_url))
        prefix = encoded[: -len(_NOT_LIKED)]
        if len(self._encoded) >= self._kept:
            self._encoded.clear()  # what is still read is encoded again at once
        self._encoded[tweet.id] = (tweet, author, window, prefix)
        return prefix
