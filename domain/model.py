"""Entities and value types. Frozen, so a cached copy can never be changed in place.

Untracked by the cyclic collector (gc=False). msgspec already leaves a struct of plain values
untracked; this extends it to those holding other structs or tuples (a tweet with images, a
TweetView, a token's owner), which web processes keep by the thousand and make twenty of per
timeline page. None can be part of a reference cycle: they hold plain values and each
other."""

from __future__ import annotations

from datetime import datetime

import msgspec


class Author(msgspec.Struct, frozen=True, gc=False):
    """The part of a user every tweet carries; cached by id."""

    id: int
    username: str
    display_name: str


class User(msgspec.Struct, frozen=True, gc=False):
    id: int
    username: str
    display_name: str
    bio: str
    created_at: datetime
    followers_count: int
    following_count: int
    tweets_count: int
    is_celebrity: bool = False
    is_admin: bool = False

    def as_author(self) -> Author:
        return Author(id=self.id, username=self.username, display_name=self.display_name)


class Media(msgspec.Struct, frozen=True, gc=False):
    id: int
    content_type: str
    key: str
    alt: str = ""


class Tweet(msgspec.Struct, frozen=True, gc=False):
    id: int
    author_id: int
    text: str
    created_at: datetime
    reply_to: int | None = None
    media: tuple[Media, ...] = ()
    like_count: int = 0
    reply_count: int = 0
    deleted: bool = False


class TweetView(msgspec.Struct, frozen=True, gc=False):
    """A tweet as one reader sees it: with its author and whether the reader liked it."""

    tweet: Tweet
    author: Author
    liked: bool = False


class Page(msgspec.Struct, frozen=True):
    """One page of a list, newest first unless the list says otherwise."""

    items: list[TweetView]
    next_cursor: int | None
