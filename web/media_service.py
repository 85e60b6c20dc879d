"""Media use cases: handing out upload URLs, checking uploads before a tweet takes them,
the URLs readers get, and collecting uploads nobody attached."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import msgspec

from domain.errors import InvalidInput, RateLimited, Unavailable
from domain.media import (
    PENDING_MEDIA_MAX_AGE,
    SNIFF_BYTES,
    UPLOAD_URL_LIFETIME,
    bytes_match_type,
    media_key,
    normalize_alt,
    read_url_window,
    validate_media_ids,
    validate_media_request,
)
from domain.model import Media
from domain.rules import MAX_MEDIA_PER_TWEET
from storage.media_repo import PENDING, MediaRecord
from storage.redis_store import RateLimitDecision
from web.container import Services, provide_services
from web.settings import Settings


class Upload(msgspec.Struct, frozen=True):
    media_id: int
    url: str
    headers: dict[str, str]
    expires_at: datetime
    decision: RateLimitDecision


class MediaService:
    def __init__(self, services: Services) -> None:
        self.s = services

    async def create_upload(
        self, owner_id: int, content_type: str, size: int, alt: str | None
    ) -> Upload:
        canonical, clean_alt = validate_media_request(content_type, size, alt)
        # As many uploads as the tweet limit could ever attach.
        limit = self.s.settings.tweets_per_hour * MAX_MEDIA_PER_TWEET
        decision = await self.s.rate_limiter.hit("media", str(owner_id), limit=limit, window=3600)
        if not decision.allowed:
            raise RateLimited(f"rate limit exceeded: {limit} per 3600 seconds", decision.reset)
        # Second precision: the expiry is shown to the client and also ends the signed URL.
        expires_at = datetime.now(UTC).replace(microsecond=0) + UPLOAD_URL_LIFETIME
        record = await self.s.media.create(
            media_id=self.s.ids.next_id(),
            owner_id=owner_id,
            key=media_key(secrets.token_hex(16), canonical),
            content_type=canonical,
            size=size,
            alt=clean_alt,
            expires_at=expires_at,
        )
        url, headers = self.s.media_store.presign_put(
            record.key, canonical, size, expires_at - datetime.now(UTC)
        )
        return Upload(record.id, url, headers, expires_at, decision)

    async def prepare(
        self, owner_id: int, media_ids: list[int], alts: dict[int, str] | None = None
    ) -> tuple[Media, ...]:
        """The media a new tweet will carry, after checking each is the author's and its
        object is in the store, of the declared size, with the declared type's first bytes.
        Runs before the tweet's transaction (the store is slow next to Postgres); the
        transaction then locks the rows and makes sure they are still unattached."""
        if not media_ids:
            return ()
        validate_media_ids(media_ids)
        records = await self.s.media.get_many(media_ids)
        for media_id in media_ids:
            record = records.get(media_id)
            if record is None or record.owner_id != owner_id:
                raise InvalidInput(f"media {media_id} is unknown or not yours")
        # An attached upload is left to the transaction: it fails the post unless this is an
        # Idempotency-Key retry, which returns the original tweet before attaching anything.
        pending = [records[m] for m in media_ids if records[m].status == PENDING]
        await asyncio.gather(*(self._check_upload(r) for r in pending))
        # Alt text written in the compose box after the upload replaces the upload's own.
        alts = {m: normalize_alt(a) for m, a in (alts or {}).items()}
        return tuple(
            Media(id=r.id, content_type=r.content_type, key=r.key, alt=alts.get(r.id) or r.alt)
            for r in (records[m] for m in media_ids)
        )

    async def _check_upload(self, record: MediaRecord) -> None:
        size = await self.s.media_store.head(record.key)
        if size is None:
            raise InvalidInput(f"media {record.id} was not uploaded")
        if size != record.size:
            raise InvalidInput(f"media {record.id} is {size} bytes, not the {record.size} declared")
        head = await self.s.media_store.read_range(record.key, 0, SNIFF_BYTES)
        if not bytes_match_type(record.content_type, head):
            raise InvalidInput(f"media {record.id} is not a {record.content_type} image")

    def url(self, media: Media) -> str:
        """A URL that works for any reader: under the public base URL when one is configured,
        else presigned for about a day, repeating within the hour so it can be cached."""
        base = self.s.settings.media_public_base_url
        if base:
            return f"{base.rstrip('/')}/{quote(media.key)}"
        issued_at, expires = read_url_window(datetime.now(UTC))
        return self.s.media_store.presign_get(media.key, expires, issued_at=issued_at)

    def url_window(self) -> datetime | None:
        """What `url` depends on besides the media: the same for every call within one
        window, so a URL made in it can be reused until the window changes."""
        if self.s.settings.media_public_base_url:
            return None
        return read_url_window(datetime.now(UTC))[0]

    async def collect(self, older_than: timedelta = PENDING_MEDIA_MAX_AGE) -> int:
        """Removes uploads never attached to a tweet, object and row. Returns how many."""

        async def remove_object(key: str) -> bool:
            try:
                await self.s.media_store.delete(key)
            except Unavailable:
                return False
            return True

        return await self.s.media.collect_pending(older_than, remove_object)


async def collect_abandoned_uploads(settings: Settings) -> int:
    """`chirp media gc`: uploads never attached within PENDING_MEDIA_MAX_AGE, removed."""
    async with provide_services(settings, process_name="chirp-cli") as services:
        return await MediaService(services).collect()
