"""The home timeline as pure functions: which entries a page holds, given what the stores
returned. The stores may hold stale entries (a deleted tweet, an unfollowed author pushed by a
fanout that raced the unfollow); the page is filtered here so readers never see them."""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable


def merge_newest_first(*sources: Iterable[int]) -> list[int]:
    """Union of several newest-first id lists, newest first, without duplicates."""
    if len(sources) == 1:  # the usual timeline read: one page, nothing to merge
        return list(dict.fromkeys(sources[0]))
    # Pages are short (a page plus one): a set and a sort in C beat a merge in Python.
    return sorted(set(itertools.chain(*sources)), reverse=True)


def in_window(tweet_id: int, before: int | None, after: int | None) -> bool:
    return (before is None or tweet_id < before) and (after is None or tweet_id > after)


def visible_authors(viewer_id: int, following: Collection[int]) -> set[int]:
    return {viewer_id, *following}


def page_cursor(page_ids: list[int], limit: int, more: bool) -> int | None:
    """The cursor for the next (older) page: the oldest id shown, when anything is left."""
    if more and len(page_ids) == limit:
        return page_ids[-1]
    return None
