"""The home timeline as pure functions: which entries a page holds, given what the stores
returned. The stores may hold stale entries (a deleted tweet, an unfollowed author pushed by a
fanout that raced the unfollow); the page is filtered here so readers never see them."""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable


def merge_newest_first(*sources: Iterable[int]) -> list[int]:
    """Union of several newest-first id lists, newest first, without duplicates."""
    merged: list[int] = []
    last: int | None = None
    for tweet_id in heapq.merge(*sources, reverse=True):
        if tweet_id != last:
            merged.append(tweet_id)
            last = tweet_id
    return merged


def in_window(tweet_id: int, before: int | None, after: int | None) -> bool:
    return (before is None or tweet_id < before) and (after is None or tweet_id > after)


def visible_authors(viewer_id: int, following: Collection[int]) -> set[int]:
    return {viewer_id, *following}


def page_cursor(page_ids: list[int], limit: int, more: bool) -> int | None:
    """The cursor for the next (older) page: the oldest id shown, when anything is left."""
    if more and len(page_ids) == limit:
        return page_ids[-1]
    return None
