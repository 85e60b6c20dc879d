"""The `media` table: uploads handed out, attached to tweets, and collected when abandoned."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

import asyncpg
import msgspec

from domain.errors import InvalidInput
from storage.postgres import Database

PENDING = "pending"
ATTACHED = "attached"


class MediaRecord(msgspec.Struct, frozen=True):
    id: int
    owner_id: int
    key: str
    content_type: str
    size: int
    alt: str
    status: str
    tweet_id: int | None
    created_at: datetime
    expires_at: datetime


_COLUMNS = "id, owner_id, key, content_type, size, alt, status, tweet_id, created_at, expires_at"


def _record(row: asyncpg.Record) -> MediaRecord:
    return MediaRecord(**dict(row))


async def attach_media(
    connection: asyncpg.Connection, owner_id: int, tweet_id: int, media_ids: Sequence[int]
) -> None:
    """Marks the uploads as the tweet's, inside the transaction that inserts the tweet. The
    rows are locked first, so a concurrent post of the same upload, or `media gc` collecting
    it, waits for this transaction and then sees it attached (or gone)."""
    rows = await connection.fetch(
        "SELECT id, owner_id, status FROM media WHERE id = ANY($1::bigint[])"
        " ORDER BY id FOR UPDATE",
        list(media_ids),
    )
    found = {r["id"]: r for r in rows}
    for media_id in media_ids:
        row = found.get(media_id)
        if row is None or row["owner_id"] != owner_id:
            raise InvalidInput(f"media {media_id} is unknown or not yours")
        if row["status"] != PENDING:
            raise InvalidInput(f"media {media_id} is attached to another tweet already")
    await connection.execute(
        "UPDATE media SET status = 'attached', tweet_id = $2 WHERE id = ANY($1::bigint[])",
        list(media_ids),
        tweet_id,
    )


class MediaRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self,
        *,
        media_id: int,
        owner_id: int,
        key: str,
        content_type: str,
        size: int,
        alt: str,
        expires_at: datetime,
    ) -> MediaRecord:
        row = await self._db.pool.fetchrow(
            "INSERT INTO media (id, owner_id, key, content_type, size, alt, expires_at)"
            f" VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_COLUMNS}",
            media_id,
            owner_id,
            key,
            content_type,
            size,
            alt,
            expires_at,
        )
        assert row is not None
        return _record(row)

    async def get_many(self, media_ids: Sequence[int]) -> dict[int, MediaRecord]:
        rows = await self._db.pool.fetch(
            f"SELECT {_COLUMNS} FROM media WHERE id = ANY($1::bigint[])", list(media_ids)
        )
        return {r["id"]: _record(r) for r in rows}

    async def collect_pending(
        self,
        older_than: timedelta,
        remove_object: Callable[[str], Awaitable[bool]],
        *,
        batch: int = 500,
    ) -> int:
        """Deletes pending uploads created more than `older_than` ago, a batch per
        transaction: each row stays locked while its object is removed and is deleted only
        if that worked, so a failure leaves both for the next run and a post that is
        attaching the upload right now either wins or finds it gone. Returns how many went."""
        removed = 0
        while True:
            async with self._db.transaction() as connection:
                rows = await connection.fetch(
                    "SELECT id, key FROM media WHERE status = 'pending'"
                    " AND created_at < now() - $1::interval"
                    " ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED",
                    older_than,
                    batch,
                )
                gone = [r["id"] for r in rows if await remove_object(r["key"])]
                if gone:
                    await connection.execute("DELETE FROM media WHERE id = ANY($1::bigint[])", gone)
            removed += len(gone)
            # A short batch is the last; a batch with failures stops too, rather than
            # picking the same rows up again.
            if len(rows) < batch or len(gone) < len(rows):
                return removed
