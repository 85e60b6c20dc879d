"""The JSON shapes of ../shared/API.md as msgspec Structs, and the conversions from domain
objects. IDs are strings (JavaScript numbers cannot hold 64 bits); times are RFC 3339 UTC
with milliseconds."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import msgspec

from domain.model import Media, TweetView, User

# How a renderer gets a reader's URL for a tweet's image (`Chirp.media.url`): signing belongs
# to the media store, which only the composition root knows.
MediaUrl = Callable[[Media], str]


def format_time(moment: datetime) -> str:
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    # isoformat truncates to milliseconds and ends in "+00:00" for UTC; strftime cost
    # several times as much, twenty times per timeline page.
    return moment.isoformat(timespec="milliseconds")[:-6] + "Z"


class AuthorOut(msgspec.Struct):
    id: str
    username: str
    display_name: str


class MediaOut(msgspec.Struct):
    id: str
    url: str
    content_type: str
    alt: str = ""


class TweetOut(msgspec.Struct):
    id: str
    text: str
    created_at: str
    author: AuthorOut
    reply_to: str | None
    media: list[MediaOut]
    like_count: int
    reply_count: int
    liked: bool


class UserOut(msgspec.Struct):
    id: str
    username: str
    display_name: str
    bio: str
    created_at: str
    followers_count: int
    following_count: int
    tweets_count: int
    following: bool


class SessionOut(msgspec.Struct):
    user: UserOut
    token: str


class TweetListOut(msgspec.Struct):
    tweets: list[TweetOut]
    next_cursor: str | None


class UserListOut(msgspec.Struct):
    users: list[UserOut]
    next_cursor: str | None


class FollowingOut(msgspec.Struct):
    following: bool


class LikeOut(msgspec.Struct):
    liked: bool
    like_count: int


class SignUpIn(msgspec.Struct):
    username: str
    password: str
    display_name: str | None = None


class SignInIn(msgspec.Struct):
    username: str
    password: str


class TweetIn(msgspec.Struct):
    text: str
    reply_to: str | None = None
    media_ids: list[str] | None = None


def user_out(user: User, following: bool = False) -> UserOut:
    return UserOut(
        id=str(user.id),
        username=user.username,
        display_name=user.display_name,
        bio=user.bio,
        created_at=format_time(user.created_at),
        followers_count=user.followers_count,
        following_count=user.following_count,
        tweets_count=user.tweets_count,
        following=following,
    )


class MediaIn(msgspec.Struct):
    content_type: str
    size: int
    alt: str | None = None


class UploadOut(msgspec.Struct):
    method: str
    url: str
    headers: dict[str, str]


class MediaCreatedOut(msgspec.Struct):
    media_id: str
    upload: UploadOut
    expires_at: str


def tweet_out(view: TweetView, media_url: MediaUrl) -> TweetOut:
    tweet = view.tweet
    return TweetOut(
        id=str(tweet.id),
        text=tweet.text,
        created_at=format_time(tweet.created_at),
        author=AuthorOut(
            id=str(view.author.id),
            username=view.author.username,
            display_name=view.author.display_name,
        ),
        reply_to=str(tweet.reply_to) if tweet.reply_to is not None else None,
        media=[
            MediaOut(id=str(m.id), url=media_url(m), content_type=m.content_type, alt=m.alt)
            for m in tweet.media
        ],
        like_count=tweet.like_count,
        reply_count=tweet.reply_count,
        liked=view.liked,
    )


def cursor_out(cursor: int | None) -> str | None:
    return str(cursor) if cursor is not None else None
