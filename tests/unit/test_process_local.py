"""What each process keeps for itself: expiring copies and never-repeating strings."""

from __future__ import annotations

import gc
import os
import time
from datetime import UTC, datetime

from domain.model import Author, Media, Tweet, TweetView, User
from storage.local_cache import ExpiringCache
from storage.sessions import Session
from storage.timeline import CachedFollowees, CachedLikes
from storage.unique import unique_string
from web.services import Principal


def test_get_all_answers_only_when_every_key_is_there_and_current() -> None:
    cache: ExpiringCache[int, str] = ExpiringCache(60.0)
    cache.put(1, "one")
    cache.put(2, "two")
    assert cache.get_all([1, 2]) == {1: "one", 2: "two"}
    assert cache.get_all([]) == {}
    assert cache.get_all([1, 3]) is None
    short: ExpiringCache[int, str] = ExpiringCache(0.01)
    short.put(1, "one")
    time.sleep(0.02)
    assert short.get_all([1]) is None


def test_unique_strings_never_repeat_and_a_forked_child_draws_its_own() -> None:
    here = [unique_string() for _ in range(1000)]
    assert len(set(here)) == 1000
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what it hands out next, as the parent would have
        os.write(write, "\n".join(unique_string() for _ in range(1000)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split("\n")
    os.waitpid(pid, 0)
    parent = [unique_string() for _ in range(1000)]
    assert len(set(child)) == 1000
    assert not set(child) & set(parent)


def test_what_a_warm_process_keeps_is_out_of_the_collectors_sight() -> None:
    # Full collections walking the processes' copies stalled the timeline's p99.
    now = datetime.now(UTC)
    user = User(1, "ada", "Ada", "", now, 0, 0, 0)
    tweet = Tweet(2, 1, "hi", now, media=(Media(3, "image/png", "k"),))
    kept: list[object] = [
        user,
        tweet,
        tweet.media[0],
        Author(1, "ada", "Ada"),
        TweetView(tweet, user.as_author()),
        Session(user, now, None),
        Principal(user, now, b"hash"),
        CachedFollowees((b"v", None), tuple(range(100)), (7,)),
        CachedLikes(b"v", 1, dict.fromkeys(range(100))),
    ]
    kept.append(kept[-1].tweet_ids)  # type: ignore[attr-defined]
    gc.collect()  # tuples of plain values are untracked by the first collection that sees them
    kept += [c.normal for c in kept if isinstance(c, CachedFollowees)]
    assert [type(k).__name__ for k in kept if gc.is_tracked(k)] == []
