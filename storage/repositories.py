"""Postgres repositories: SQL in, domain objects out. Each method that changes state is one
transaction, and every change another process must learn about writes its event to the outbox
in that same transaction."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import NamedTuple

import asyncpg
import msgspec

from domain.errors import Conflict, Forbidden, InvalidInput, NotFound
from domain.events import Event, FanoutModeChanged, Followed, TweetDeleted, Unfollowed, encode_event
from domain.model import Author, Media, Tweet, User
from domain.rules import is_celebrity_after
from storage.media_repo import attach_media
from storage.postgres import Database
from storage.request_id import current_request_id

USER_COLUMNS = (
    "id, username, display_name, bio, created_at, followers_count, following_count,"
    " tweets_count, is_celebrity, is_admin"
)
# The same columns qualified with the alias `u`, for joins.
USER_COLUMNS_U = ", ".join("u." + column.strip() for column in USER_COLUMNS.split(","))
TWEET_COLUMNS = (
    "id, author_id, text, created_at, reply_to, media, like_count, reply_count,"
    " deleted_at IS NOT NULL AS deleted"
)

_media_decoder = msgspec.json.Decoder(tuple[Media, ...])
_media_encoder = msgspec.json.Encoder()


class PostedTweet(NamedTuple):
    """A live tweet and what its fanout depends on: its author's mode and audience."""

    tweet_id: int
    author_id: int
    author_is_celebrity: bool
    author_followers: int


def user_from_row(row: asyncpg.Record) -> User:
    return User(
        id=row["id"],
        username=row["username"],
        display_name=row["display_name"],
        bio=row["bio"],
        created_at=row["created_at"],
        followers_count=row["followers_count"],
        following_count=row["following_count"],
        tweets_count=row["tweets_count"],
        is_celebrity=row["is_celebrity"],
        is_admin=row["is_admin"],
    )


def tweet_from_row(row: asyncpg.Record) -> Tweet:
    media = row["media"]
    return Tweet(
        id=row["id"],
        author_id=row["author_id"],
        text=row["text"],
        created_at=row["created_at"],
        reply_to=row["reply_to"],
        media=_media_decoder.decode(media) if media and media != "[]" else (),
        like_count=row["like_count"],
        reply_count=row["reply_count"],
        deleted=row["deleted"],
    )


async def insert_event(connection: asyncpg.Connection, event: Event) -> None:
    await connection.execute(
        "INSERT INTO outbox (id, kind, payload) VALUES ($1, $2, $3)",
        event.event_id,
        event.kind,
        encode_event(event),
    )


class UserRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self, user_id: int, username: str, display_name: str, password_hash: str
    ) -> User:
        try:
            row = await self._db.pool.fetchrow(
                f"INSERT INTO users (id, username, display_name, password_hash)"
                f" VALUES ($1, $2, $3, $4) RETURNING {USER_COLUMNS}",
                user_id,
                username,
                display_name,
                password_hash,
            )
        except asyncpg.UniqueViolationError:
            raise Conflict("username is taken") from None
        assert row is not None
        return user_from_row(row)

    async def get(self, user_id: int) -> User | None:
        row = await self._db.pool.fetchrow(
            f"SELECT {USER_COLUMNS} FROM users WHERE id = $1", user_id
        )
        return user_from_row(row) if row else None

    async def get_by_username(self, username: str) -> User | None:
        row = await self._db.pool.fetchrow(
            f"SELECT {USER_COLUMNS} FROM users WHERE lower(username) = lower($1)", username
        )
        return user_from_row(row) if row else None

    async def credentials(self, username: str) -> tuple[User, str] | None:
        row = await self._db.pool.fetchrow(
            f"SELECT {USER_COLUMNS}, password_hash FROM users WHERE lower(username) = lower($1)",
            username,
        )
        return (user_from_row(row), row["password_hash"]) if row else None

    async def set_password_hash(self, user_id: int, password_hash: str) -> None:
        await self._db.pool.execute(
            "UPDATE users SET password_hash = $2 WHERE id = $1", user_id, password_hash
        )

    async def authors(self, user_ids: Sequence[int]) -> dict[int, Author]:
        rows = await self._db.pool.fetch(
            "SELECT id, username, display_name FROM users WHERE id = ANY($1::bigint[])",
            list(user_ids),
        )
        return {r["id"]: Author(r["id"], r["username"], r["display_name"]) for r in rows}

    async def all_ids(self, batch: int = 1000) -> AsyncIterator[int]:
        """Every user id, by keyset pagination (no long transaction, no cursor)."""
        last = 0
        while True:
            rows = await self._db.pool.fetch(
                "SELECT id FROM users WHERE id > $1 ORDER BY id LIMIT $2", last, batch
            )
            for row in rows:
                yield row["id"]
            if len(rows) < batch:
                return
            last = rows[-1]["id"]

    async def touch_last_seen(self, user_id: int) -> None:
        await self._db.pool.execute("UPDATE users SET last_seen_at = now() WHERE id = $1", user_id)

    async def last_seen_at(self, user_id: int) -> datetime | None:
        value: datetime | None = await self._db.pool.fetchval(
            "SELECT last_seen_at FROM users WHERE id = $1", user_id
        )
        return value


class TokenRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def insert(
        self, token_hash: bytes, user_id: int, kind: str, expires_at: datetime | None
    ) -> None:
        await self._db.pool.execute(
            "INSERT INTO access_tokens (token_hash, user_id, kind, expires_at)"
            " VALUES ($1, $2, $3, $4)",
            token_hash,
            user_id,
            kind,
            expires_at,
        )

    async def resolve(self, token_hash: bytes) -> tuple[User, datetime, datetime | None] | None:
        """The user a live token belongs to, when that user was last seen, and when the token
        expires (None: never)."""
        row = await self._db.pool.fetchrow(
            f"SELECT {USER_COLUMNS_U}, u.last_seen_at, t.expires_at"
            " FROM access_tokens t JOIN users u ON u.id = t.user_id"
            " WHERE t.token_hash = $1 AND (t.expires_at IS NULL OR t.expires_at > now())",
            token_hash,
        )
        return (user_from_row(row), row["last_seen_at"], row["expires_at"]) if row else None

    async def hashes_of(self, user_id: int) -> list[bytes]:
        """The user's live tokens (hashed)."""
        rows = await self._db.pool.fetch(
            "SELECT token_hash FROM access_tokens WHERE user_id = $1", user_id
        )
        return [bytes(r["token_hash"]) for r in rows]

    async def revoke(self, token_hash: bytes) -> None:
        await self._db.pool.execute("DELETE FROM access_tokens WHERE token_hash = $1", token_hash)


class TweetRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def post(
        self,
        tweet: Tweet,
        event: Event,
        idempotency_key: str | None = None,
    ) -> tuple[Tweet, bool]:
        """Stores the tweet and its event in one transaction. Returns the stored tweet and
        whether it is new: a live idempotency key returns the tweet first posted with it."""
        async with self._db.transaction() as connection:
            if idempotency_key is not None:
                # The conflicting row stays locked until its transaction ends, so two
                # concurrent retries with one key cannot both post.
                claimed = await connection.fetchval(
                    "INSERT INTO idempotency_keys (user_id, key, tweet_id) VALUES ($1, $2, $3)"
                    " ON CONFLICT (user_id, key) DO UPDATE"
                    " SET tweet_id = EXCLUDED.tweet_id, created_at = now()"
                    " WHERE idempotency_keys.created_at < now() - interval '1 hour'"
                    " RETURNING tweet_id",
                    tweet.author_id,
                    idempotency_key,
                    tweet.id,
                )
                if claimed is None:
                    original = await connection.fetchrow(
                        f"SELECT {TWEET_COLUMNS} FROM tweets WHERE id ="
                        " (SELECT tweet_id FROM idempotency_keys WHERE user_id = $1 AND key = $2)",
                        tweet.author_id,
                        idempotency_key,
                    )
                    if original is not None:
                        return tweet_from_row(original), False
            if tweet.reply_to is not None:
                parent = await connection.fetchval(
                    "UPDATE tweets SET reply_count = reply_count + 1"
                    " WHERE id = $1 AND deleted_at IS NULL RETURNING id",
                    tweet.reply_to,
                )
                if parent is None:
                    raise InvalidInput("reply_to is not an existing tweet")
            await connection.execute(
                "INSERT INTO tweets (id, author_id, text, created_at, reply_to, media)"
                " VALUES ($1, $2, $3, $4, $5, $6)",
                tweet.id,
                tweet.author_id,
                tweet.text,
                tweet.created_at,
                tweet.reply_to,
                _media_encoder.encode(tweet.media).decode(),
            )
            if tweet.media:
                await attach_media(
                    connection, tweet.author_id, tweet.id, [m.id for m in tweet.media]
                )
            await connection.execute(
                "UPDATE users SET tweets_count = tweets_count + 1 WHERE id = $1",
                tweet.author_id,
            )
            await insert_event(connection, event)
        return tweet, True

    async def get(self, tweet_id: int) -> Tweet | None:
        row = await self._db.pool.fetchrow(
            f"SELECT {TWEET_COLUMNS} FROM tweets WHERE id = $1", tweet_id
        )
        return tweet_from_row(row) if row else None

    async def get_many(self, tweet_ids: Sequence[int]) -> dict[int, Tweet]:
        rows = await self._db.pool.fetch(
            f"SELECT {TWEET_COLUMNS} FROM tweets WHERE id = ANY($1::bigint[])", list(tweet_ids)
        )
        return {r["id"]: tweet_from_row(r) for r in rows}

    # -- full scans for derived stores (search reindex and verify) ---------------------

    async def live_after(self, after: int, limit: int) -> list[Tweet]:
        """Live tweets with ids above `after`, oldest first: keyset pages, so a scan of
        millions never uses OFFSET and never holds a long transaction."""
        rows = await self._db.pool.fetch(
            f"SELECT {TWEET_COLUMNS} FROM tweets WHERE id > $1 AND deleted_at IS NULL"
            " ORDER BY id LIMIT $2",
            after,
            limit,
        )
        return [tweet_from_row(r) for r in rows]

    async def live_ids_after(self, after: int, limit: int) -> list[int]:
        rows = await self._db.pool.fetch(
            "SELECT id FROM tweets WHERE id > $1 AND deleted_at IS NULL ORDER BY id LIMIT $2",
            after,
            limit,
        )
        return [r["id"] for r in rows]

    async def count_live(self) -> int:
        count: int = await self._db.pool.fetchval(
            "SELECT count(*) FROM tweets WHERE deleted_at IS NULL"
        )
        return count

    async def deleted_since(self, moment: datetime) -> list[int]:
        rows = await self._db.pool.fetch("SELECT id FROM tweets WHERE deleted_at >= $1", moment)
        return [r["id"] for r in rows]

    async def sample_live(self, size: int) -> list[Tweet]:
        rows = await self._db.pool.fetch(
            f"SELECT {TWEET_COLUMNS} FROM tweets WHERE deleted_at IS NULL"
            " ORDER BY random() LIMIT $1",
            size,
        )
        return [tweet_from_row(r) for r in rows]

    async def delete(self, tweet_id: int, user_id: int, event_id: int) -> TweetDeleted:
        async with self._db.transaction() as connection:
            row = await connection.fetchrow(
                "SELECT author_id, reply_to FROM tweets"
                " WHERE id = $1 AND deleted_at IS NULL FOR UPDATE",
                tweet_id,
            )
            if row is None:
                raise NotFound("tweet not found")
            if row["author_id"] != user_id:
                raise Forbidden("only the author can delete a tweet")
            await connection.execute("UPDATE tweets SET deleted_at = now() WHERE id = $1", tweet_id)
            await connection.execute(
                "UPDATE users SET tweets_count = tweets_count - 1 WHERE id = $1", user_id
            )
            if row["reply_to"] is not None:
                await connection.execute(
                    "UPDATE tweets SET reply_count = reply_count - 1"
                    " WHERE id = $1 AND reply_count > 0",
                    row["reply_to"],
                )
            event = TweetDeleted(
                event_id=event_id,
                tweet_id=tweet_id,
                author_id=user_id,
                reply_to=row["reply_to"],
                request_id=current_request_id(),
            )
            await insert_event(connection, event)
        return event

    async def ids_by_authors(
        self,
        author_ids: Sequence[int],
        *,
        before: int | None,
        after: int | None,
        limit: int,
    ) -> list[int]:
        """Newest-first ids of the authors' live tweets inside the window: the home timeline
        straight from Postgres (rebuilds, Redis down, pages past the cached window)."""
        rows = await self._db.pool.fetch(
            "SELECT id FROM tweets WHERE author_id = ANY($1::bigint[]) AND deleted_at IS NULL"
            " AND id < $2 AND id > $3 ORDER BY id DESC LIMIT $4",
            list(author_ids),
            before if before is not None else 2**63 - 1,
            after if after is not None else 0,
            limit,
        )
        return [r["id"] for r in rows]

    async def by_author_among(self, author_id: int, tweet_ids: Sequence[int]) -> list[int]:
        """Which of the tweets the author wrote, deleted or not."""
        rows = await self._db.pool.fetch(
            "SELECT id FROM tweets WHERE id = ANY($1::bigint[]) AND author_id = $2",
            list(tweet_ids),
            author_id,
        )
        return [r["id"] for r in rows]

    async def replies(self, tweet_id: int, *, after: int | None, limit: int) -> list[int]:
        rows = await self._db.pool.fetch(
            "SELECT id FROM tweets WHERE reply_to = $1 AND deleted_at IS NULL AND id > $2"
            " ORDER BY id LIMIT $3",
            tweet_id,
            after or 0,
            limit,
        )
        return [r["id"] for r in rows]

    async def like(self, user_id: int, tweet_id: int) -> int:
        return await self._change_like(
            "INSERT INTO likes (user_id, tweet_id) VALUES ($1, $2)"
            " ON CONFLICT DO NOTHING RETURNING 1",
            "like_count + 1",
            user_id,
            tweet_id,
        )

    async def unlike(self, user_id: int, tweet_id: int) -> int:
        return await self._change_like(
            "DELETE FROM likes WHERE user_id = $1 AND tweet_id = $2 RETURNING 1",
            "like_count - 1",
            user_id,
            tweet_id,
        )

    async def _change_like(
        self, statement: str, new_count: str, user_id: int, tweet_id: int
    ) -> int:
        async with self._db.transaction() as connection:
            # Locking the tweet row serialises likes of one tweet, so the counter always equals
            # a recount of the likes table.
            count = await connection.fetchval(
                "SELECT like_count FROM tweets WHERE id = $1 AND deleted_at IS NULL FOR UPDATE",
                tweet_id,
            )
            if count is None:
                raise NotFound("tweet not found")
            changed = await connection.fetchval(statement, user_id, tweet_id)
            if changed is None:
                return int(count)
            new: int = await connection.fetchval(
                f"UPDATE tweets SET like_count = {new_count} WHERE id = $1 RETURNING like_count",
                tweet_id,
            )
            return new

    async def liked_since(self, user_id: int, oldest: int, *, limit: int) -> tuple[set[int], int]:
        """The tweets from `oldest` on that the user likes, at most the newest `limit` of
        them, and the id from which that set is complete (`oldest`, or the last one kept
        when there were more)."""
        rows = await self._db.pool.fetch(
            "SELECT tweet_id FROM likes WHERE user_id = $1 AND tweet_id >= $2"
            " ORDER BY tweet_id DESC LIMIT $3",
            user_id,
            oldest,
            limit,
        )
        ids = [r["tweet_id"] for r in rows]
        return set(ids), ids[-1] if len(ids) == limit else oldest

    async def liked_among(self, user_id: int, tweet_ids: Sequence[int]) -> set[int]:
        if not tweet_ids:
            return set()
        rows = await self._db.pool.fetch(
            "SELECT tweet_id FROM likes WHERE user_id = $1 AND tweet_id = ANY($2::bigint[])",
            user_id,
            list(tweet_ids),
        )
        return {r["tweet_id"] for r in rows}


class FollowRepository:
    def __init__(self, db: Database, *, celebrity_threshold: int, hysteresis: float) -> None:
        self._db = db
        self._threshold = celebrity_threshold
        self._hysteresis = hysteresis

    async def follow(
        self, follower_id: int, followee_id: int, follow_id: int, event_ids: Sequence[int]
    ) -> list[Event]:
        """Creates the follow (idempotent). Returns the events it recorded: none when the
        follow existed already."""
        async with self._db.transaction() as connection:
            created = await connection.fetchval(
                "INSERT INTO follows (follower_id, followee_id, id) VALUES ($1, $2, $3)"
                " ON CONFLICT DO NOTHING RETURNING 1",
                follower_id,
                followee_id,
                follow_id,
            )
            if created is None:
                return []
            events: list[Event] = [
                Followed(
                    event_id=event_ids[0],
                    follower_id=follower_id,
                    followee_id=followee_id,
                    request_id=current_request_id(),
                )
            ]
            await self._count_follow(connection, follower_id, followee_id, +1, event_ids, events)
            for event in events:
                await insert_event(connection, event)
        return events

    async def unfollow(
        self, follower_id: int, followee_id: int, event_ids: Sequence[int]
    ) -> list[Event]:
        async with self._db.transaction() as connection:
            removed = await connection.fetchval(
                "DELETE FROM follows WHERE follower_id = $1 AND followee_id = $2 RETURNING 1",
                follower_id,
                followee_id,
            )
            if removed is None:
                return []
            events: list[Event] = [
                Unfollowed(
                    event_id=event_ids[0],
                    follower_id=follower_id,
                    followee_id=followee_id,
                    request_id=current_request_id(),
                )
            ]
            await self._count_follow(connection, follower_id, followee_id, -1, event_ids, events)
            for event in events:
                await insert_event(connection, event)
        return events

    async def _count_follow(
        self,
        connection: asyncpg.Connection,
        follower_id: int,
        followee_id: int,
        delta: int,
        event_ids: Sequence[int],
        events: list[Event],
    ) -> None:
        # Both users' rows, locked in id order before either is updated: two users following
        # each other at the same moment would otherwise lock them in opposite orders and
        # deadlock (one request failing with a 500).
        await connection.execute(
            "SELECT 1 FROM users WHERE id = ANY($1::bigint[]) ORDER BY id FOR NO KEY UPDATE",
            [follower_id, followee_id],
        )
        await connection.execute(
            "UPDATE users SET following_count = following_count + $2 WHERE id = $1",
            follower_id,
            delta,
        )
        row = await connection.fetchrow(
            "UPDATE users SET followers_count = followers_count + $2 WHERE id = $1"
            " RETURNING followers_count, is_celebrity",
            followee_id,
            delta,
        )
        assert row is not None
        celebrity = is_celebrity_after(
            row["is_celebrity"], row["followers_count"], self._threshold, self._hysteresis
        )
        if celebrity != row["is_celebrity"]:
            await connection.execute(
                "UPDATE users SET is_celebrity = $2 WHERE id = $1", followee_id, celebrity
            )
            events.append(
                FanoutModeChanged(
                    event_id=event_ids[1],
                    author_id=followee_id,
                    celebrity=celebrity,
                    request_id=current_request_id(),
                )
            )

    async def is_following(self, follower_id: int, followee_id: int) -> bool:
        found = await self._db.pool.fetchval(
            "SELECT 1 FROM follows WHERE follower_id = $1 AND followee_id = $2",
            follower_id,
            followee_id,
        )
        return found is not None

    async def following_among(self, follower_id: int, user_ids: Sequence[int]) -> set[int]:
        rows = await self._db.pool.fetch(
            "SELECT followee_id FROM follows WHERE follower_id = $1"
            " AND followee_id = ANY($2::bigint[])",
            follower_id,
            list(user_ids),
        )
        return {r["followee_id"] for r in rows}

    async def followees(self, follower_id: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Whom the user follows, split into (normal authors, celebrities). Tuples: web
        processes keep them, and the collector untracks tuples of ints (storage/timeline.py)."""
        rows = await self._db.pool.fetch(
            "SELECT f.followee_id, u.is_celebrity FROM follows f"
            " JOIN users u ON u.id = f.followee_id WHERE f.follower_id = $1",
            follower_id,
        )
        normal = tuple(r["followee_id"] for r in rows if not r["is_celebrity"])
        celebrities = tuple(r["followee_id"] for r in rows if r["is_celebrity"])
        return normal, celebrities

    async def page(
        self, user_id: int, *, followers: bool, before: int | None, limit: int
    ) -> list[tuple[int, User]]:
        """(follow id, user) pairs, newest follow first: the user's followers, or whom the
        user follows."""
        mine, theirs = (
            ("followee_id", "follower_id") if followers else ("follower_id", "followee_id")
        )
        rows = await self._db.pool.fetch(
            f"SELECT f.id AS follow_id, {USER_COLUMNS_U}"
            f" FROM follows f JOIN users u ON u.id = f.{theirs}"
            f" WHERE f.{mine} = $1 AND f.id < $2 ORDER BY f.id DESC LIMIT $3",
            user_id,
            before if before is not None else 2**63 - 1,
            limit,
        )
        return [(r["follow_id"], user_from_row(r)) for r in rows]

    async def active_follower_chunks(
        self, followee_id: int, active_since: datetime, chunk_size: int
    ) -> AsyncGenerator[list[int], None]:
        """The followers seen since `active_since`, in chunks, so a celebrity-sized list
        never sits in memory at once: one query read through a cursor, the next chunk
        fetched while the caller works on this one. (Keyset pages by follower id made
        Postgres gather and sort the whole list again for every chunk, no index serving
        that order: 27 ms for 10,000 followers against 5 ms this way, bench/fanout.py.)
        Close it (contextlib.aclosing) when leaving early: it holds a connection."""
        async with self._db.pool.acquire() as connection, connection.transaction(readonly=True):
            cursor = await connection.cursor(
                "SELECT f.follower_id FROM follows f JOIN users u ON u.id = f.follower_id"
                " WHERE f.followee_id = $1 AND u.last_seen_at >= $2",
                followee_id,
                active_since,
            )
            upcoming: asyncio.Task[list[asyncpg.Record]] | None = asyncio.ensure_future(
                cursor.fetch(chunk_size)
            )
            try:
                while upcoming is not None:
                    rows = await upcoming
                    upcoming = None
                    if len(rows) == chunk_size:
                        upcoming = asyncio.ensure_future(cursor.fetch(chunk_size))
                    if rows:
                        yield [r[0] for r in rows]
            finally:
                if upcoming is not None:
                    # Left early: the fetch under way must finish before the connection
                    # goes back to the pool (a chunk's fetch takes about a millisecond).
                    await asyncio.wait([upcoming])
                    if not upcoming.cancelled():
                        upcoming.exception()  # retrieved: it no longer matters

    async def audiences(
        self, tweet_ids: Sequence[int], active_since: datetime, *, up_to: int
    ) -> tuple[list[PostedTweet], dict[int, list[int]]]:
        """Of the tweets, those not deleted, with their authors' fanout mode and follower
        count; and for each of those authors in push mode with at most `up_to` followers,
        the followers seen since `active_since`. One statement: one round trip and one
        snapshot (see active_follower_chunks for lists of any size)."""
        rows = await self._db.pool.fetch(
            "WITH posted AS MATERIALIZED ("
            " SELECT t.id, t.author_id, a.is_celebrity, a.followers_count"
            " FROM tweets t JOIN users a ON a.id = t.author_id"
            " WHERE t.id = ANY($1::bigint[]) AND t.deleted_at IS NULL)"
            " SELECT id, author_id, is_celebrity, followers_count, NULL::bigint[] FROM posted"
            " UNION ALL"
            # One row per author, the followers in an array: a row per follower cost the
            # fanout worker more to decode and walk than the rest of its query.
            " SELECT NULL, f.followee_id, NULL, NULL, array_agg(f.follower_id)"
            " FROM follows f JOIN users u ON u.id = f.follower_id"
            # An array rather than a join, so that the planner looks the authors up in the
            # follows index instead of hashing the whole table.
            " WHERE f.followee_id = ANY(ARRAY(SELECT DISTINCT author_id FROM posted"
            "  WHERE NOT is_celebrity AND followers_count <= $3))"
            " AND u.last_seen_at >= $2"
            " GROUP BY f.followee_id",
            list(tweet_ids),
            active_since,
            up_to,
        )
        tweets: list[PostedTweet] = []
        followers: dict[int, list[int]] = {}
        for tweet_id, author_id, celebrity, count, follower_ids in rows:
            if tweet_id is not None:
                tweets.append(PostedTweet(tweet_id, author_id, celebrity, count))
                if not celebrity and count <= up_to:
                    followers.setdefault(author_id, [])
            else:
                followers[author_id] = follower_ids
        return tweets, followers


class OutboxRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def mark_published(
        self, event_ids: Sequence[int], connection: asyncpg.Connection | None = None
    ) -> None:
        await (connection or self._db.pool).execute(
            "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])"
            " AND published_at IS NULL",
            list(event_ids),
        )

    async def claim_unpublished(
        self, connection: asyncpg.Connection, older_than: timedelta, limit: int
    ) -> list[tuple[int, str, bytes]]:
        """Rows still unpublished after `older_than`, locked for this transaction so that
        several relays share the backlog instead of all publishing it."""
        rows = await connection.fetch(
            "SELECT id, kind, payload FROM outbox WHERE published_at IS NULL"
            " AND created_at < now() - $1::interval ORDER BY id LIMIT $2"
            " FOR UPDATE SKIP LOCKED",
            older_than,
            limit,
        )
        return [(r["id"], r["kind"], bytes(r["payload"])) for r in rows]

    async def backlog(self) -> int:
        count: int = await self._db.pool.fetchval(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL"
        )
        return count

    async def prune(self, older_than: timedelta) -> int:
        status: str = await self._db.pool.execute(
            "DELETE FROM outbox WHERE published_at IS NOT NULL"
            " AND published_at < now() - $1::interval",
            older_than,
        )
        return int(status.split()[-1])
