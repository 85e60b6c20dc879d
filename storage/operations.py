"""Postgres queries for operators (`chirp trace`, `chirp admin`, the operations page): not on
any user's path, so they favour saying what happened over being fast."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from domain.events import AnyEvent, decode_event
from domain.model import User
from storage.postgres import Database
from storage.repositories import USER_COLUMNS, user_from_row


@dataclass(frozen=True)
class OutboxEntry:
    event: AnyEvent
    created_at: datetime
    published_at: datetime | None


class OperationsRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def set_admin(self, username: str, admin: bool) -> User | None:
        row = await self._db.pool.fetchrow(
            f"UPDATE users SET is_admin = $2 WHERE lower(username) = lower($1)"
            f" RETURNING {USER_COLUMNS}",
            username,
            admin,
        )
        return None if row is None else user_from_row(row)

    async def celebrity_authors(
        self, threshold: int, hysteresis: float, limit: int = 50
    ) -> list[User]:
        """Celebrities, and the authors close enough to the threshold to switch either way,
        most followed first."""
        near = int(threshold * (1 - hysteresis))
        rows = await self._db.pool.fetch(
            f"SELECT {USER_COLUMNS} FROM users WHERE is_celebrity OR followers_count >= $1"
            " ORDER BY followers_count DESC, id LIMIT $2",
            near,
            limit,
        )
        return [user_from_row(r) for r in rows]

    async def tweet_events(self, tweet_id: int) -> list[OutboxEntry]:
        """The outbox rows about one tweet (posted, deleted), oldest first. Event ids are
        Snowflakes taken after the tweet's, which bounds the scan; published rows are pruned
        after a day, so an older tweet has none."""
        rows = await self._db.pool.fetch(
            "SELECT payload, created_at, published_at FROM outbox"
            " WHERE id > $1 AND kind IN ('tweet.posted', 'tweet.deleted')"
            " AND (convert_from(payload, 'UTF8')::jsonb ->> 'tweet_id')::bigint = $1"
            " ORDER BY id",
            tweet_id,
        )
        return [
            OutboxEntry(decode_event(bytes(r["payload"])), r["created_at"], r["published_at"])
            for r in rows
        ]

    async def follow_id(self, follower_id: int, followee_id: int) -> int | None:
        found: int | None = await self._db.pool.fetchval(
            "SELECT id FROM follows WHERE follower_id = $1 AND followee_id = $2",
            follower_id,
            followee_id,
        )
        return found
