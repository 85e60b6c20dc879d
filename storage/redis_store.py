"""Redis adapters: home timelines, per-author tweet lists, the tweet and author caches and
rate-limit counters. Everything here is derived from Postgres and can be rebuilt from it.

Timelines are sorted sets whose members all have score 0 and are zero-padded Snowflake ids:
Redis orders equal-score members lexicographically, which for fixed-width digits is numeric
order, so ordering and cursors stay exact (a 63-bit id as a double score would not). Each
complete timeline also holds a sentinel member (all zeros, always the lowest): a set without
it — never built, expired, or created by a fanout push after expiry — is treated as missing
and rebuilt from Postgres."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Generic, TypeVar

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from domain.ids import encode_member
from domain.model import Author, Tweet
from storage.metrics import RATE_LIMIT_REJECTIONS
from storage.resp import RespClient, Script
from storage.unique import unique_string

SENTINEL = encode_member(0)
# In a set that has dropped entries (trimmed to its cap, or merged from a capped source):
# what is older than its oldest entry must come from Postgres. Sorts just above the sentinel.
TRIMMED = encode_member(1)

# Errors that mean "Redis is not usable right now": the caller falls back to Postgres.
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


def connect_redis(url: str, *, max_connections: int = 64) -> aioredis.Redis:
    """A client with short timeouts: a dead Redis must cost a request milliseconds, not
    seconds, before it falls back to Postgres. Creating it does not connect."""
    client: aioredis.Redis = aioredis.Redis.from_url(
        url,
        socket_connect_timeout=0.5,
        socket_timeout=2.0,
        max_connections=max_connections,
        retry_on_timeout=False,
    )
    return client


class RedisKeys:
    """Every Redis key Chirp uses (listed in the README's operator table)."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def timeline(self, user_id: int) -> str:
        return f"{self.prefix}tl:{user_id}"

    def author_tweets(self, author_id: int) -> str:
        return f"{self.prefix}ut:{author_id}"

    def tweet(self, tweet_id: int) -> str:
        return f"{self.prefix}tw:{tweet_id}"

    def tweet_prefix(self) -> str:
        """What `tweet` puts before the id (the timeline read's script builds those keys)."""
        return f"{self.prefix}tw:"

    def author(self, user_id: int) -> str:
        return f"{self.prefix}au:{user_id}"

    def online(self, user_id: int) -> str:
        return f"{self.prefix}on:{user_id}"

    def rate(self, name: str, subject: str, window: int) -> str:
        return f"{self.prefix}rl:{name}:{subject}:{window}"

    def fanout(self, tweet_id: int) -> str:
        return f"{self.prefix}fo:{tweet_id}"

    def fanout_recent(self) -> str:
        return f"{self.prefix}fo:recent"

    def follow_version(self, user_id: int) -> str:
        return f"{self.prefix}fv:{user_id}"

    def celebrity_version(self) -> str:
        return f"{self.prefix}cv"

    def like_version(self, user_id: int) -> str:
        return f"{self.prefix}lv:{user_id}"

    def session(self, token_hash: bytes) -> str:
        return f"{self.prefix}ss:{token_hash.hex()}"


def lex_range(before: int | None, after: int | None) -> tuple[str, str]:
    """ZREVRANGEBYLEX bounds (max, min) for ids strictly inside (after, before)."""
    upper = "(" + encode_member(before) if before is not None else "+"
    lower = "(" + encode_member(max(after, 1)) if after is not None else "(" + TRIMMED
    return upper, lower


# The first ARGV[5] keys are version values (GET), a missing one set to ARGV[7] first (a
# fresh token: see new_version). Then per sorted set: false when it is
# missing (no sentinel), else {1 if marked TRIMMED else 0, page}. ARGV: sentinel,
# ZREVRANGEBYLEX max and min, count, number of version keys, the TRIMMED marker, the token,
# its TTL; then, when ARGV[9] is not empty, the tweet cache's key prefix: the reply ends with
# the newest ARGV[4] members of all the pages together and the cached copy of each (false
# where none), which spares the read a second round trip for them. Those keys are made
# here, not passed in: one more reason this script cannot run on Redis Cluster.
_PAGES = Script("""
local out = {}
local plain = tonumber(ARGV[5])
for i = 1, plain do
  local value = redis.call('GET', KEYS[i])
  if not value then
    redis.call('SET', KEYS[i], ARGV[7], 'EX', ARGV[8])
    value = ARGV[7]
  end
  out[i] = value
end
for i = plain + 1, #KEYS do
  if redis.call('ZSCORE', KEYS[i], ARGV[1]) then
    out[i] = {redis.call('ZSCORE', KEYS[i], ARGV[6]) and 1 or 0,
              redis.call('ZREVRANGEBYLEX', KEYS[i], ARGV[2], ARGV[3], 'LIMIT', 0, ARGV[4])}
  else
    out[i] = false
  end
end
if ARGV[9] ~= '' then
  -- Each page is newest first, so the newest of all is a merge of their heads (a tweet in
  -- two pages comes out twice in a row). Sorting every page's members together cost a
  -- quarter of the script's time for a reader following a few celebrities.
  local pages, heads = {}, {}
  for i = plain + 1, #KEYS do
    if out[i] and #out[i][2] > 0 then
      pages[#pages + 1] = out[i][2]
      heads[#heads + 1] = 1
    end
  end
  local want, prefix = tonumber(ARGV[4]), ARGV[9]
  local newest, keys, last = {}, {}, nil
  local n = 0
  while n < want do
    local best, from = nil, 0
    for i = 1, #pages do
      local m = pages[i][heads[i]]
      -- Fixed-width digits: string order is id order.
      if m and (not best or m > best) then best, from = m, i end
    end
    if not best then break end
    heads[from] = heads[from] + 1
    if best ~= last then
      n = n + 1
      newest[n] = best
      -- The cache key holds the id without the padding (a pattern with a capture, as
      -- string.match takes, cost Redis a microsecond per member).
      keys[n] = prefix .. string.sub(best, (string.find(best, '[1-9]')))
      last = best
    end
  end
  local blobs = {}
  if n > 0 then blobs = redis.call('MGET', unpack(keys)) end
  out[#KEYS + 1] = newest
  out[#KEYS + 2] = blobs
end
return out
""")


# Adds members (score 0) to every key, then keeps the newest ARGV[1] entries above the
# sentinel and the TRIMMED marker, setting the marker when it drops any: below a marked set's
# oldest entry, Postgres may hold more. ARGV[2], when not empty, is the oldest member of a
# source merged only in part (capped): below it the set cannot know what it misses, so it
# keeps nothing there and is marked; likewise below the oldest entry of a set already
# marked. ARGV[3], when not empty: a rebuild (add the sentinel, set this TTL, unmark).
# ARGV[4], when not empty: a TTL for a key that has none (one this push creates: a set with
# no sentinel is read as missing and rebuilt by merging, so what it holds is kept, and it
# must not outlive its purpose). ARGV[5..]: members.
_ADD = Script(f"""
local max, floor, ttl, new_ttl = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local members = {{}}
for j = 5, #ARGV do
  members[#members + 1] = 0
  members[#members + 1] = ARGV[j]
end
if ttl ~= '' then
  members[#members + 1] = 0
  members[#members + 1] = '{SENTINEL}'
end
if #members == 0 then return 0 end
local written = 0
for i = 1, #KEYS do
  local key = KEYS[i]
  local marked = redis.call('ZSCORE', key, '{TRIMMED}')
  if marked and ttl ~= '' then
    -- A rebuild brings everything down to its own floor: the set is whole again.
    redis.call('ZREM', key, '{TRIMMED}')
    marked = false
  end
  local cut = floor
  if marked then
    -- Below a marked set's oldest entry nothing is known: an older member added now
    -- (an uncapped merge, a late push) would hide the ones Postgres holds around it.
    local oldest = redis.call('ZRANGEBYLEX', key, '({TRIMMED}', '+', 'LIMIT', 0, 1)[1]
    if oldest and (cut == '' or oldest > cut) then
      cut = oldest
    end
  end
  redis.call('ZADD', key, unpack(members))
  if cut ~= '' then
    redis.call('ZREMRANGEBYLEX', key, '({TRIMMED}', '(' .. cut)
    if not marked then
      redis.call('ZADD', key, 0, '{TRIMMED}')
      marked = true
    end
  end
  local base = marked and 2 or 1
  if redis.call('ZREMRANGEBYRANK', key, base, -(max + 1)) > 0 and not marked then
    redis.call('ZADD', key, 0, '{TRIMMED}')
  end
  if ttl ~= '' then
    redis.call('EXPIRE', key, tonumber(ttl))
  elseif new_ttl ~= '' and redis.call('TTL', key) < 0 then
    redis.call('EXPIRE', key, tonumber(new_ttl))
  end
  written = written + 1
end
return written
""")


# The push case of _ADD (no floor, no rebuild), for many pushes in one call, in fewer
# commands per key: what a key holds decides which of _ADD's steps can change anything, and
# the others are skipped (an empty key needs no marker lookup and no trim; a set that stays
# under its cap, no trim; a marked set, no cut unless a member is older than its oldest
# entry). The result is _ADD's, key for key (tests/integration/test_timeline_push.py).
# ARGV[1]: the cap; ARGV[2], when not empty: a TTL for a key that has none (as _ADD's
# ARGV[4]). Then groups: a key count c, a member count n, the n members; the group's members
# go to the next c KEYS.
_PUSH = Script(f"""
local max, new_ttl = tonumber(ARGV[1]), ARGV[2]
local at, first = 3, 1
while at <= #ARGV do
  local count, n = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
  local members, lowest = {{}}, ARGV[at + 2]
  for j = at + 2, at + n + 1 do
    members[#members + 1] = 0
    members[#members + 1] = ARGV[j]
    if ARGV[j] < lowest then lowest = ARGV[j] end
  end
  at = at + n + 2
  for i = first, first + count - 1 do
    local key = KEYS[i]
    local size = redis.call('ZCARD', key)
    local marked, oldest = false, nil
    if size >= max then
      -- At its cap a set is nearly always marked: one command reads the marker and the
      -- oldest entry (ZRANGE costs more than ZSCORE, less than ZSCORE plus ZRANGEBYLEX).
      local head = redis.call('ZRANGE', key, 0, 2)
      local k = head[1] == '{SENTINEL}' and 2 or 1
      marked = head[k] == '{TRIMMED}'
      if marked then oldest = head[k + 1] end
    elseif size > 0 then
      marked = redis.call('ZSCORE', key, '{TRIMMED}') ~= false
      if marked then
        oldest = redis.call('ZRANGEBYLEX', key, '({TRIMMED}', '+', 'LIMIT', 0, 1)[1]
      end
    end
    redis.call('ZADD', key, unpack(members))
    if oldest and lowest < oldest then
      redis.call('ZREMRANGEBYLEX', key, '({TRIMMED}', '(' .. oldest)
    end
    local base = marked and 2 or 1
    if size + n > max + base
        and redis.call('ZREMRANGEBYRANK', key, base, -(max + 1)) > 0 and not marked then
      redis.call('ZADD', key, 0, '{TRIMMED}')
    end
    if new_ttl ~= '' and (size == 0 or redis.call('TTL', key) < 0) then
      redis.call('EXPIRE', key, tonumber(new_ttl))
    end
  end
  first = first + count
end
return first - 1
""")

# A push: (ids of the users or authors whose sets get them, tweet ids).
Push = tuple[Sequence[int], Sequence[int]]


# Version keys expire (a missing one is set to a fresh token by the next read, which at
# worst makes every process reload its copy once), so they do not pile up per user.
VERSION_TTL = 7 * 86_400


def new_version() -> str:
    """A version value never handed out before. Versions are not counters: a Redis restart
    empties them, and a counter starting again (or a version missing again) would match what
    some process cached before the restart, so a stale follow list would look current. A
    missing version is set to a fresh one by the read that finds it missing, for the same
    reason."""
    return unique_string()


class TimelinePage(msgspec.Struct, frozen=True):
    ids: list[int]
    # The set was trimmed to its cap: older entries exist only in Postgres.
    truncated: bool


class TimelineHeld(msgspec.Struct, frozen=True):
    """A whole home timeline set, as the audit and an unfollow's cleanup read it."""

    ids: list[int]  # oldest first
    # It has its sentinel (a set without one is read as missing and rebuilt).
    complete: bool
    # It was trimmed to its cap: older entries exist only in Postgres.
    truncated: bool


class HomePages(msgspec.Struct, frozen=True):
    # (follow list version, celebrity set version), set by the read where missing
    versions: tuple[bytes | None, bytes | None]
    home: TimelinePage | None
    authors: dict[int, TimelinePage | None]
    # Version of the user's likes (`lv:{user}`), for the per-process copy of them.
    likes_version: bytes | None = None
    # The tweet cache's copies of the newest ids of all these pages together (None where
    # the cache has none), fetched in the same round trip.
    cached_tweets: dict[int, bytes | None] = {}


class RedisTimelineStore:
    def __init__(
        self,
        client: aioredis.Redis,
        reads: RespClient,
        keys: RedisKeys,
        *,
        max_entries: int,
        ttl: int,
    ) -> None:
        self._redis = client
        self._reads = reads
        self._keys = keys
        self.max_entries = max_entries
        self._ttl = ttl
        self._add = client.register_script(_ADD.body)

    async def _pages(
        self,
        keys: Sequence[str],
        before: int | None,
        after: int | None,
        count: int,
        *,
        values: Sequence[str] = (),
        with_tweets: bool = False,
    ) -> tuple[list[bytes | None], list[TimelinePage | None], dict[int, bytes | None]]:
        """One script call for any number of sets: a page of each, None where the set is
        missing (no sentinel); in the same round trip, the plain `values` and, `with_tweets`,
        the cached copies of the newest `count` ids of the pages together. On Redis Cluster
        the keys of one call must share a slot."""
        upper, lower = lex_range(before, after)
        replies = await self._reads.evalsha(
            _PAGES,
            [*values, *keys],
            [
                SENTINEL,
                upper,
                lower,
                count,
                len(values),
                TRIMMED,
                new_version(),
                VERSION_TTL,
                self._keys.tweet_prefix() if with_tweets else "",
            ],
        )
        cached: dict[int, bytes | None] = {}
        if with_tweets:
            blobs = replies.pop()
            cached = dict(zip(map(int, replies.pop()), blobs, strict=True))
        pages = [
            None
            if reply is None
            else TimelinePage(ids=[int(m) for m in reply[1]], truncated=reply[0] == 1)
            for reply in replies[len(values) :]
        ]
        return replies[: len(values)], pages, cached

    async def timeline_page(
        self, user_id: int, *, before: int | None, after: int | None, count: int
    ) -> TimelinePage | None:
        """Newest-first ids of the home timeline inside the window; None when the timeline is
        missing and must be rebuilt."""
        _, (page,), _ = await self._pages([self._keys.timeline(user_id)], before, after, count)
        return page

    async def home_pages(
        self,
        user_id: int,
        celebrity_ids: Sequence[int],
        *,
        before: int | None,
        after: int | None,
        count: int,
    ) -> HomePages:
        """The home timeline's page, the given celebrities' pages, the versions of the
        user's follow list, of the celebrity set and of the user's likes, and the cached
        copies of the tweets the page will most likely show, in one round trip."""
        versions, pages, cached = await self._pages(
            [self._keys.timeline(user_id), *(self._keys.author_tweets(a) for a in celebrity_ids)],
            before,
            after,
            count,
            values=[
                self._keys.follow_version(user_id),
                self._keys.celebrity_version(),
                self._keys.like_version(user_id),
            ],
            with_tweets=True,
        )
        return HomePages(
            versions=(versions[0], versions[1]),
            home=pages[0],
            authors=dict(zip(celebrity_ids, pages[1:], strict=True)),
            likes_version=versions[2],
            cached_tweets=cached,
        )

    async def author_pages(
        self, author_ids: Sequence[int], *, before: int | None, after: int | None, count: int
    ) -> dict[int, TimelinePage | None]:
        if not author_ids:
            return {}
        keys = [self._keys.author_tweets(a) for a in author_ids]
        _, pages, _ = await self._pages(keys, before, after, count)
        return dict(zip(author_ids, pages, strict=True))

    async def bump_follow_version(self, user_id: int) -> None:
        """After the user's follow list changed (and was committed): every process's cached
        copy of it is stale from now on."""
        await self._redis.set(self._keys.follow_version(user_id), new_version(), ex=VERSION_TTL)

    async def bump_like_versions(self, user_ids: Sequence[int]) -> None:
        """After the users liked or unliked (committed): cached copies of their likes are
        stale."""
        if not user_ids:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                pipe.set(self._keys.like_version(user_id), new_version(), ex=VERSION_TTL)
            await pipe.execute()

    async def bump_celebrity_version(self) -> None:
        """After an author changed fanout mode: every cached split of follow lists into
        normal authors and celebrities is stale."""
        await self._redis.set(self._keys.celebrity_version(), new_version(), ex=VERSION_TTL)

    async def populate_timeline(self, user_id: int, tweet_ids: Sequence[int]) -> None:
        """Merges the ids into the timeline and marks it complete. Existing entries are kept
        rather than replaced: a push that raced this rebuild must not be wiped out, and stale
        entries are filtered at read time anyway."""
        await self._populate(self._keys.timeline(user_id), tweet_ids)

    async def populate_author(self, author_id: int, tweet_ids: Sequence[int]) -> None:
        await self._populate(self._keys.author_tweets(author_id), tweet_ids)

    async def _populate(self, key: str, tweet_ids: Sequence[int]) -> None:
        """`tweet_ids`: the source's newest, newest first, at most max_entries of them; as
        many as that means older ones may exist."""
        capped = len(tweet_ids) >= self.max_entries
        await self._add_members(
            [key], tweet_ids, floor=tweet_ids[-1] if capped else None, ttl=self._ttl
        )

    async def _add_members(
        self,
        keys: Sequence[str],
        tweet_ids: Sequence[int],
        *,
        floor: int | None = None,
        ttl: int | None = None,
        new_key_ttl: int | None = None,
    ) -> None:
        await self._add(
            keys=keys,
            args=[
                self.max_entries,
                encode_member(floor) if floor is not None else "",
                ttl if ttl is not None else "",
                new_key_ttl if new_key_ttl is not None else "",
                *(encode_member(t) for t in tweet_ids),
            ],
        )

    async def keep_alive(self, user_id: int) -> None:
        await self._redis.expire(self._keys.timeline(user_id), self._ttl)

    async def push_to_timelines(self, user_ids: Sequence[int], tweet_ids: Sequence[int]) -> None:
        """Adds the tweets to each timeline, then trims it to the cap (above the sentinel
        and the TRIMMED marker)."""
        await self.push_many(timelines=[(user_ids, tweet_ids)])

    async def push_many(
        self,
        timelines: Sequence[Push] = (),
        authors: Sequence[Push] = (),
        *,
        keys_per_call: int = 1000,
    ) -> None:
        """Any number of pushes into home timelines and authors' lists in one round trip
        (_PUSH calls of at most `keys_per_call` keys each: a script blocks Redis while it
        runs). A pipeline of ZADD + ZREMRANGEBYRANK per follower spent its time packing
        commands in Python: 24k inserts/s against 163k/s for a script (bench/fanout.py).
        On Redis Cluster the keys of one call must share a slot: group by slot there."""
        # Into a set still being rebuilt too: the rebuild read Postgres before this tweet
        # committed, and merges into what is there (skipping it lost the tweet until the
        # set expired). A set a push creates expires like a rebuilt one: a follower who
        # never reads their timeline again (so never has it rebuilt, with a TTL) left it in
        # Redis for good.
        calls = [
            *self._push_calls(timelines, self._keys.timeline, self._ttl, keys_per_call),
            *self._push_calls(authors, self._keys.author_tweets, self._ttl, keys_per_call),
        ]
        if calls:
            await self._reads.evalsha_many(_PUSH, calls)

    def _push_calls(
        self, pushes: Sequence[Push], key: Callable[[int], str], new_key_ttl: int | str, limit: int
    ) -> list[tuple[list[str], list[int | str]]]:
        calls: list[tuple[list[str], list[int | str]]] = []
        keys: list[str] = []
        args: list[int | str] = []
        for owners, tweet_ids in pushes:
            if not tweet_ids:
                continue
            members = [encode_member(t) for t in tweet_ids]
            start = 0
            while start < len(owners):
                if len(keys) >= limit:
                    calls.append((keys, [self.max_entries, new_key_ttl, *args]))
                    keys, args = [], []
                part = owners[start : start + limit - len(keys)]
                keys += [key(o) for o in part]
                args += [len(part), len(members), *members]
                start += len(part)
        if keys:
            calls.append((keys, [self.max_entries, new_key_ttl, *args]))
        return calls

    async def merge_into_timelines(
        self, user_ids: Sequence[int], tweet_ids: Sequence[int], *, capped: bool
    ) -> None:
        """Adds an author's newest tweets (newest first) to the timelines. `capped`: the list
        was cut at a limit, so the author's older tweets are missing below its oldest."""
        if user_ids and tweet_ids:
            await self._add_members(
                [self._keys.timeline(u) for u in user_ids],
                tweet_ids,
                floor=tweet_ids[-1] if capped else None,
                new_key_ttl=self._ttl,
            )

    async def timeline_held(self, user_id: int) -> TimelineHeld | None:
        """Everything the home timeline holds, whole or not; None when it has no key."""
        members: list[bytes] = await self._reads.execute(
            "ZRANGE", self._keys.timeline(user_id), 0, -1
        )
        if not members:
            return None
        sentinel, trimmed = SENTINEL.encode(), TRIMMED.encode()
        return TimelineHeld(
            ids=[int(m) for m in members if m not in (sentinel, trimmed)],
            complete=sentinel in members,
            truncated=trimmed in members,
        )

    async def unpush_from_timelines(
        self, user_ids: Sequence[int], tweet_ids: Sequence[int]
    ) -> None:
        if not tweet_ids:
            return
        members = [encode_member(t) for t in tweet_ids]
        async with self._redis.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                pipe.zrem(self._keys.timeline(user_id), *members)
            await pipe.execute()

    async def unpush_from_author(self, author_id: int, tweet_id: int) -> None:
        await self._redis.zrem(self._keys.author_tweets(author_id), encode_member(tweet_id))

    async def drop_timeline(self, user_id: int) -> None:
        await self._redis.delete(self._keys.timeline(user_id))


T = TypeVar("T")


class RedisObjectCache(Generic[T]):
    """A msgspec-encoded object per key, read in one MGET and written in one pipeline.

    Decoded objects are kept per process by their encoded bytes: the same cached version
    always comes back as the same (immutable) object, so what is derived from it once (a
    tweet's JSON, web/tweet_json.py) can be reused as long as the cache holds that version."""

    def __init__(
        self,
        client: aioredis.Redis,
        reads: RespClient,
        key: Callable[[int], str],
        type_: type[T],
        *,
        ttl: int,
        decoded_kept: int = 20_000,
    ) -> None:
        self._redis = client
        self._reads = reads
        self._key = key
        self._decoder = msgspec.msgpack.Decoder(type_)
        self._encoder = msgspec.msgpack.Encoder()
        self._ttl = ttl
        self._decoded: dict[bytes, T] = {}
        self._decoded_kept = decoded_kept

    def decode(self, blob: bytes) -> T:
        value = self._decoded.get(blob)
        if value is None:
            value = self._decoder.decode(blob)
            if len(self._decoded) >= self._decoded_kept:
                # Cheaper than tracking recency, and what is still read comes back at once.
                self._decoded.clear()
            self._decoded[blob] = value
        return value

    async def get_many(self, ids: Sequence[int]) -> dict[int, T]:
        if not ids:
            return {}
        values: list[bytes | None] = await self._reads.execute("MGET", *[self._key(i) for i in ids])
        decode = self.decode
        return {i: decode(v) for i, v in zip(ids, values, strict=True) if v is not None}

    async def put_many(self, objects: dict[int, T]) -> None:
        if not objects:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for object_id, value in objects.items():
                pipe.set(self._key(object_id), self._encoder.encode(value), ex=self._ttl)
            await pipe.execute()

    async def invalidate(self, ids: Sequence[int]) -> None:
        if ids:
            await self._redis.delete(*[self._key(i) for i in ids])


def tweet_cache(
    client: aioredis.Redis, reads: RespClient, keys: RedisKeys, ttl: int
) -> RedisObjectCache[Tweet]:
    return RedisObjectCache(client, reads, keys.tweet, Tweet, ttl=ttl)


def author_cache(
    client: aioredis.Redis, reads: RespClient, keys: RedisKeys, ttl: int
) -> RedisObjectCache[Author]:
    return RedisObjectCache(client, reads, keys.author, Author, ttl=ttl)


class RateLimitDecision(msgspec.Struct, frozen=True):
    allowed: bool
    limit: int
    remaining: int
    reset: int  # seconds until the window resets


class RedisRateLimiter:
    """Fixed-window counters in Redis, shared by every app process. When Redis is down the
    limits are kept per process in memory instead: looser, but never off."""

    def __init__(self, client: aioredis.Redis, keys: RedisKeys) -> None:
        self._redis = client
        self._keys = keys
        self._local: dict[str, tuple[int, int]] = {}

    async def hit(self, name: str, subject: str, *, limit: int, window: int) -> RateLimitDecision:
        now = int(time.time())
        window_start = now - now % window
        reset = window_start + window - now
        key = self._keys.rate(name, subject, window_start)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.incr(key)
                pipe.expire(key, window + 1)
                count, _ = await pipe.execute()
        except REDIS_ERRORS:
            count = self._hit_locally(key, window_start)
        if count > limit:
            RATE_LIMIT_REJECTIONS.labels(limit=name).inc()
        return RateLimitDecision(
            allowed=count <= limit, limit=limit, remaining=max(0, limit - count), reset=reset
        )

    def _hit_locally(self, key: str, window_start: int) -> int:
        if len(self._local) > 100_000:
            self._local = {k: v for k, v in self._local.items() if v[1] >= window_start}
        count = self._local.get(key, (0, window_start))[0] + 1
        self._local[key] = (count, window_start)
        return count


class RedisBreaker:
    """After a Redis failure, skip Redis for a moment and go straight to Postgres, so an
    outage costs one failed call per interval instead of one per request."""

    def __init__(self, cooldown: float = 1.0) -> None:
        self._cooldown = cooldown
        self._open_until = 0.0

    @property
    def closed(self) -> bool:
        return time.monotonic() >= self._open_until

    def trip(self) -> None:
        self._open_until = time.monotonic() + self._cooldown


K = TypeVar("K")


class PendingWrites(Generic[K]):
    """Writes that stop other processes from serving a stale copy (a dropped cache entry, a
    sign-out's tombstone, a version bump), by what they are about. Tried even while the
    breaker is open: a skipped one would leave the copies stale for their whole lifetime,
    while a failed attempt costs little. What Redis did not take is kept and written again
    with the next attempt that gets through; where they can, callers treat a pending key
    as already changed (a token refused, a cached tweet not read)."""

    def __init__(
        self,
        write: Callable[[list[K]], Awaitable[object]],
        breaker: RedisBreaker,
        *,
        limit: int = 100_000,
    ) -> None:
        self._write = write
        self._breaker = breaker
        self._limit = limit
        self._keys: set[K] = set()

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __iter__(self) -> Iterator[K]:
        return iter(self._keys)

    def add(self, key: K) -> None:
        """Marks a write as pending without trying it (tests stand in for a failed one)."""
        self._keys.add(key)

    async def write(self, keys: Sequence[K] = ()) -> None:
        """These keys' writes, with every pending one."""
        pending = [*self._keys, *keys]
        if not pending:
            return
        try:
            await self._write(pending)
        except REDIS_ERRORS:
            self._breaker.trip()
            if len(self._keys) < self._limit:
                self._keys.update(keys)
        else:
            self._keys.difference_update(pending)
