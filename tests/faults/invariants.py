"""The invariants checked once the load has stopped and everything is back up.

Postgres is the source of truth and the ledger is what the API acknowledged; the derived
stores (Redis timelines and author lists, the Typesense index) and what the API shows must
agree with both:

- every acknowledged tweet is in Postgres exactly once, live unless its delete was
  acknowledged; every Idempotency-Key made exactly one tweet;
- every live tweet is in the home timeline (API pages, which merge celebrities) of its author
  and of every follower, exactly once, newest first; and in the Redis timeline of each of them
  that exists, when its author is in push mode;
- no API page and no Redis timeline or author list holds a deleted tweet or a tweet of an
  author the owner does not follow;
- every live tweet is in the search index (looked up by id) as it is in Postgres, and no
  deleted one is;
- users' follower, following and tweet counts and tweets' like and reply counts equal a
  recount of the rows, in Postgres and as the API shows them; the celebrity flag agrees with
  the follower count;
- the follow graph and the likes are what the last acknowledged requests left.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import nats
import redis.asyncio as aioredis
from nats.aio.client import Client as NatsClient

from domain.ids import encode_member
from storage.search_index import TypesenseIndex
from tests.faults.load import ApiPool, Load, Member, expect
from web.settings import Settings

SENTINEL = encode_member(0)
TRIMMED = encode_member(1)

LOST = "lost"
DUPLICATED = "duplicated"
WRONG_TIMELINES = "wrong timelines"
WRONG_COUNTERS = "wrong counters"
WRONG_SEARCH = "wrong search"
LEDGER = "ledger"
CATEGORIES = (LOST, DUPLICATED, WRONG_TIMELINES, WRONG_COUNTERS, WRONG_SEARCH, LEDGER)

EXAMPLES_PER_PLACE = 4


@dataclass
class Findings:
    problems: dict[str, Counter[str]] = field(
        default_factory=lambda: {c: Counter() for c in CATEGORIES}
    )
    examples: list[str] = field(default_factory=list)
    # Why the pipeline has not settled yet (None: nothing left to publish or consume).
    pending: str | None = None
    redis_timelines_absent: int = 0

    def bad(self, category: str, place: str, example: str) -> None:
        self.problems[category][place] += 1
        if self.problems[category][place] <= EXAMPLES_PER_PLACE:
            self.examples.append(f"{category} / {place}: {example}")

    def total(self, category: str) -> int:
        return sum(self.problems[category].values())

    @property
    def clean(self) -> bool:
        return self.pending is None and not any(self.total(c) for c in CATEGORIES)

    def summary(self) -> str:
        if self.pending is not None:
            return f"pipeline busy ({self.pending})"
        parts = [f"{c} {self.total(c)}" for c in CATEGORIES if self.total(c)]
        return ", ".join(parts) or "clean"


@dataclass(frozen=True)
class TweetRow:
    id: str
    author: str
    text: str
    deleted: bool
    like_count: int
    reply_count: int


class Checker:
    def __init__(self, settings: Settings, load: Load, pool: ApiPool) -> None:
        self.settings = settings
        self.load = load
        self.pool = pool
        self._pg: asyncpg.Connection | None = None
        self._redis: aioredis.Redis | None = None
        self._nats: NatsClient | None = None
        self.index = TypesenseIndex(
            settings.typesense_url, settings.typesense_api_key, settings.search_collection
        )

    async def __aenter__(self) -> Checker:
        self._pg = await asyncpg.connect(self.settings.database_url)
        self._redis = aioredis.Redis.from_url(self.settings.redis_url)
        self._nats = await nats.connect(self.settings.nats_url, max_reconnect_attempts=-1)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._nats is not None:
            await self._nats.close()
        if self._redis is not None:
            await self._redis.aclose()
        if self._pg is not None:
            await self._pg.close()
        await self.index.close()

    @property
    def pg(self) -> asyncpg.Connection:
        assert self._pg is not None
        return self._pg

    @property
    def redis(self) -> aioredis.Redis:
        assert self._redis is not None
        return self._redis

    # -- the pipeline ---------------------------------------------------------------------

    async def pending(self) -> str | None:
        """What the outbox relay and the consumers still have to do, None when nothing."""
        assert self._nats is not None
        busy = []
        unpublished = await self.pg.fetchval(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL"
        )
        if unpublished:
            busy.append(f"{unpublished} unpublished")
        js = self._nats.jetstream(timeout=5)
        for durable in ("fanout", "search-indexer"):
            try:
                info = await js.consumer_info(self.settings.stream, durable)
            except Exception as error:
                busy.append(f"{durable}: {error!r}")
                continue
            if info.num_pending or info.num_ack_pending:
                busy.append(
                    f"{durable}: {info.num_pending} pending, {info.num_ack_pending} unacked"
                )
        return "; ".join(busy) or None

    async def dead_letters(self) -> int:
        assert self._nats is not None
        try:
            info = await self._nats.jetstream(timeout=5).stream_info(f"{self.settings.stream}_DLQ")
        except Exception:
            return -1
        return int(info.state.messages)

    # -- the invariants -------------------------------------------------------------------

    async def check(self) -> Findings:
        findings = Findings()
        findings.pending = await self.pending()
        if findings.pending is not None:
            return findings
        tweets = await self._tweets()
        users = {str(r["id"]): r for r in await self.pg.fetch("SELECT * FROM users")}
        follows = {
            (str(r["follower_id"]), str(r["followee_id"]))
            for r in await self.pg.fetch("SELECT follower_id, followee_id FROM follows")
        }
        self._postgres(findings, tweets)
        await self._counters(findings, users)
        await self._ledger(findings, follows)
        likes, replies = await self._recounts()
        live = {t.id for t in tweets.values() if not t.deleted}
        gate = asyncio.Semaphore(4)

        async def timelines(member: Member) -> None:
            async with gate:
                await self._api_timeline(findings, member, tweets, follows, live, likes, replies)
                await self._redis_timeline(findings, member, tweets, users, follows, live)
                await self._author_list(findings, member, tweets, live)

        await asyncio.gather(*(timelines(m) for m in self.load.members))
        await self._search(findings, tweets, live)
        return findings

    async def _tweets(self) -> dict[str, TweetRow]:
        rows = await self.pg.fetch(
            "SELECT id, author_id, text, deleted_at IS NOT NULL AS deleted, like_count,"
            " reply_count FROM tweets"
        )
        return {
            str(r["id"]): TweetRow(
                str(r["id"]),
                str(r["author_id"]),
                r["text"],
                r["deleted"],
                r["like_count"],
                r["reply_count"],
            )
            for r in rows
        }

    def _who(self, user_id: str) -> str:
        for member in self.load.members:
            if member.id == user_id:
                return f"@{member.username} ({member.role})"
        return user_id

    def _postgres(self, findings: Findings, tweets: dict[str, TweetRow]) -> None:
        ledger = self.load.ledger
        for tweet_id, record in ledger.tweets.items():
            row = tweets.get(tweet_id)
            if row is None:
                findings.bad(LOST, "postgres", f"tweet {tweet_id} by {self._who(record.author)}")
            elif row.deleted and tweet_id not in ledger.deleted:
                findings.bad(LOST, "postgres (deleted, no delete acknowledged)", tweet_id)
            elif not row.deleted and tweet_id in ledger.deleted:
                findings.bad(LOST, "acknowledged deletes", f"tweet {tweet_id} is still live")
        for tweet_id, row in tweets.items():
            if tweet_id not in ledger.tweets:
                findings.bad(
                    DUPLICATED,
                    "postgres (tweet no 201 named)",
                    f"tweet {tweet_id} by {self._who(row.author)}: {row.text!r}",
                )
        for note in ledger.double_acks:
            findings.bad(DUPLICATED, "idempotency key answered with two tweets", note)
        for note in ledger.unexpected:
            findings.bad(LEDGER, "answers", note)

    async def _counters(self, findings: Findings, users: dict[str, Any]) -> None:
        keys = await self.pg.fetch("SELECT user_id, key, tweet_id FROM idempotency_keys")
        by_key = {(str(r["user_id"]), r["key"]): str(r["tweet_id"]) for r in keys}
        for (author, key), tweet_id in self.load.ledger.keys.items():
            stored = by_key.get((author, key))
            if stored != tweet_id:
                findings.bad(
                    DUPLICATED,
                    "idempotency keys",
                    f"key {key}: acknowledged {tweet_id}, the key names {stored}",
                )
        rows = await self.pg.fetch(
            "SELECT u.id, u.followers_count, u.following_count, u.tweets_count,"
            " u.is_celebrity,"
            " (SELECT count(*) FROM follows f WHERE f.followee_id = u.id) AS followers,"
            " (SELECT count(*) FROM follows f WHERE f.follower_id = u.id) AS following,"
            " (SELECT count(*) FROM tweets t WHERE t.author_id = u.id"
            "  AND t.deleted_at IS NULL) AS tweets"
            " FROM users u"
        )
        threshold = self.settings.celebrity_threshold
        floor = threshold * (1 - self.settings.celebrity_hysteresis)
        for r in rows:
            who = self._who(str(r["id"]))
            for counter, actual in (
                ("followers_count", "followers"),
                ("following_count", "following"),
                ("tweets_count", "tweets"),
            ):
                if r[counter] != r[actual]:
                    findings.bad(
                        WRONG_COUNTERS,
                        f"users.{counter}",
                        f"{who}: {r[counter]}, recount {r[actual]}",
                    )
            followers = r["followers"]
            if (followers > threshold and not r["is_celebrity"]) or (
                followers < floor and r["is_celebrity"]
            ):
                findings.bad(
                    WRONG_COUNTERS,
                    "users.is_celebrity",
                    f"{who}: {r['is_celebrity']} with {followers} followers",
                )
        for r in await self.pg.fetch(
            "SELECT t.id, t.like_count, t.reply_count,"
            " (SELECT count(*) FROM likes l WHERE l.tweet_id = t.id) AS likes,"
            " (SELECT count(*) FROM tweets r WHERE r.reply_to = t.id"
            "  AND r.deleted_at IS NULL) AS replies"
            " FROM tweets t WHERE t.deleted_at IS NULL"
        ):
            for counter, actual in (("like_count", "likes"), ("reply_count", "replies")):
                if r[counter] != r[actual]:
                    findings.bad(
                        WRONG_COUNTERS,
                        f"tweets.{counter}",
                        f"tweet {r['id']}: {r[counter]}, recount {r[actual]}",
                    )

    async def _recounts(self) -> tuple[Counter[str], Counter[str]]:
        likes: Counter[str] = Counter()
        for r in await self.pg.fetch("SELECT tweet_id, count(*) AS n FROM likes GROUP BY 1"):
            likes[str(r["tweet_id"])] = r["n"]
        replies: Counter[str] = Counter()
        for r in await self.pg.fetch(
            "SELECT reply_to, count(*) AS n FROM tweets WHERE reply_to IS NOT NULL"
            " AND deleted_at IS NULL GROUP BY 1"
        ):
            replies[str(r["reply_to"])] = r["n"]
        return likes, replies

    async def _ledger(self, findings: Findings, follows: set[tuple[str, str]]) -> None:
        ledger = self.load.ledger
        for pair, on in ledger.follows.items():
            if pair not in ledger.uncertain and on != (pair in follows):
                findings.bad(
                    LEDGER,
                    "follows",
                    f"{self._who(pair[0])} -> {self._who(pair[1])}: acknowledged {on}",
                )
        for pair in follows - set(ledger.follows):
            findings.bad(LEDGER, "follows never requested", str(pair))
        liked = {
            (str(r["user_id"]), str(r["tweet_id"]))
            for r in await self.pg.fetch("SELECT user_id, tweet_id FROM likes")
        }
        for pair, on in ledger.likes.items():
            if pair not in ledger.uncertain and on != (pair in liked):
                findings.bad(LEDGER, "likes", f"{pair}: acknowledged {on}")
        for pair in liked - set(ledger.likes) - ledger.uncertain:
            findings.bad(LEDGER, "likes never acknowledged", str(pair))

    async def walk(self, member: Member) -> list[dict[str, Any]]:
        """Every page of the member's home timeline through the API."""
        tweets: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(10_000):
            params: dict[str, Any] = {"limit": 100}
            if cursor:
                params["cursor"] = cursor
            answer = await self.pool.call(
                "check", "GET", "/api/v1/timeline", member=member, prefer=member.home,
                params=params,
            )  # fmt: skip
            page = expect(answer, 200).json()
            tweets += page["tweets"]
            cursor = page["next_cursor"]
            if cursor is None:
                return tweets
        raise AssertionError(f"@{member.username}'s timeline never ended")

    async def _api_timeline(
        self,
        findings: Findings,
        member: Member,
        tweets: dict[str, TweetRow],
        follows: set[tuple[str, str]],
        live: set[str],
        likes: Counter[str],
        replies: Counter[str],
    ) -> None:
        visible = {member.id} | {b for a, b in follows if a == member.id}
        expected = {t for t in live if tweets[t].author in visible}
        shown = await self.walk(member)
        ids = [t["id"] for t in shown]
        who = f"@{member.username}"
        for tweet_id, times in Counter(ids).items():
            if times > 1:
                findings.bad(DUPLICATED, "api timeline", f"{tweet_id} {times}x in {who}'s")
        for tweet_id in sorted(expected - set(ids)):
            author = self._who(tweets[tweet_id].author)
            findings.bad(LOST, "api timeline", f"{tweet_id} by {author} not in {who}'s")
        for tweet_id in sorted(set(ids) - expected):
            row = tweets.get(tweet_id)
            if row is None:
                findings.bad(WRONG_TIMELINES, "api: unknown tweet", f"{tweet_id} in {who}'s")
            elif row.deleted:
                findings.bad(WRONG_TIMELINES, "api: deleted tweet", f"{tweet_id} in {who}'s")
            else:
                findings.bad(
                    WRONG_TIMELINES,
                    "api: author not followed",
                    f"{tweet_id} by {self._who(row.author)} in {who}'s",
                )
        numbers = [int(i) for i in ids]
        if any(a <= b for a, b in itertools.pairwise(numbers)):
            findings.bad(WRONG_TIMELINES, "api: order", f"{who}'s is not newest first")
        for tweet in shown:
            tweet_id = tweet["id"]
            for field_name, actual in (("like_count", likes), ("reply_count", replies)):
                if tweet_id in live and tweet[field_name] != actual[tweet_id]:
                    findings.bad(
                        WRONG_COUNTERS,
                        f"api: {field_name}",
                        f"{tweet_id} shows {tweet[field_name]}, recount {actual[tweet_id]}",
                    )

    async def _members(self, key: str) -> tuple[set[str], int] | None:
        """A Redis sorted set's tweet ids and the oldest id it vouches for (0: every id, the
        set is complete); None when it is absent or incomplete (no sentinel). A set marked
        TRIMMED (id 1, no tweet) dropped entries: it vouches only for what is newer than its
        oldest entry."""
        raw = await self.redis.zrange(key, 0, -1)
        found = {m.decode() if isinstance(m, bytes) else str(m) for m in raw}
        if SENTINEL not in found:
            return None
        ids = {str(int(m)) for m in found - {SENTINEL, TRIMMED}}
        if TRIMMED not in found:
            return ids, 0
        return ids, min((int(i) for i in ids), default=2**63)

    async def _redis_timeline(
        self,
        findings: Findings,
        member: Member,
        tweets: dict[str, TweetRow],
        users: dict[str, Any],
        follows: set[tuple[str, str]],
        live: set[str],
    ) -> None:
        key = f"{self.settings.redis_prefix}tl:{member.id}"
        found = await self._members(key)
        if found is None:
            findings.redis_timelines_absent += 1
            return
        members, floor = found
        followees = {b for a, b in follows if a == member.id}
        visible = {member.id} | followees
        pushed = {member.id} | {f for f in followees if not users[f]["is_celebrity"]}
        who = f"@{member.username}"
        for tweet_id in sorted(live - members):
            row = tweets[tweet_id]
            if row.author in pushed and int(tweet_id) >= floor:
                findings.bad(
                    LOST,
                    "redis timeline",
                    f"{tweet_id} by {self._who(row.author)} not in {key} ({who})",
                )
        for tweet_id in sorted(members):
            held = tweets.get(tweet_id)
            if held is None:
                findings.bad(WRONG_TIMELINES, "redis: unknown tweet", f"{tweet_id} in {key}")
                continue
            row = held
            if row.deleted:
                findings.bad(
                    WRONG_TIMELINES,
                    "redis: deleted tweet",
                    f"{tweet_id} by {self._who(row.author)} in {key} ({who})",
                )
            elif row.author not in visible:
                findings.bad(
                    WRONG_TIMELINES,
                    "redis: author not followed",
                    f"{tweet_id} by {self._who(row.author)} in {key} ({who})",
                )

    async def _author_list(
        self, findings: Findings, member: Member, tweets: dict[str, TweetRow], live: set[str]
    ) -> None:
        key = f"{self.settings.redis_prefix}ut:{member.id}"
        found = await self._members(key)
        if found is None:
            return
        members, floor = found
        for tweet_id in sorted(live - members):
            if tweets[tweet_id].author == member.id and int(tweet_id) >= floor:
                findings.bad(LOST, "redis author list", f"{tweet_id} not in {key}")
        for tweet_id in sorted(members):
            row = tweets.get(tweet_id)
            if row is None or row.deleted or row.author != member.id:
                state = "unknown" if row is None else "deleted" if row.deleted else "foreign"
                findings.bad(WRONG_TIMELINES, f"redis author list: {state}", f"{tweet_id} in {key}")

    async def _search(
        self, findings: Findings, tweets: dict[str, TweetRow], live: set[str]
    ) -> None:
        documents = await self.index.documents(sorted(int(t) for t in live))
        for tweet_id in sorted(live):
            document = documents.get(int(tweet_id))
            row = tweets[tweet_id]
            if document is None:
                findings.bad(LOST, "search", f"{tweet_id} by {self._who(row.author)}")
            elif document.text != row.text or str(document.author_id) != row.author:
                findings.bad(WRONG_SEARCH, "stale document", f"{tweet_id}: {document}")
        indexed = await self.index.ids()
        for extra in sorted(indexed - {int(t) for t in live}):
            state = "unknown tweet" if str(extra) not in tweets else "deleted tweet"
            findings.bad(WRONG_SEARCH, f"{state} indexed", str(extra))
        count = await self.index.count()
        if count != len(indexed):
            findings.bad(
                DUPLICATED, "search", f"the index counts {count} documents for {len(indexed)} ids"
            )
