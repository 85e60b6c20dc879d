"""Which media store serves the `MediaStore` port, from settings (part of the composition
root: nothing else knows which store is in use)."""

from __future__ import annotations

from pathlib import Path

from domain.ports import MediaStore
from storage.media import LocalMediaStore, S3MediaStore
from web.keys import secret_key
from web.settings import Settings


def media_dir(settings: Settings) -> Path:
    return Path(settings.media_dir) if settings.media_dir else Path(settings.var_dir) / "media"


def build_media_store(settings: Settings) -> MediaStore:
    if settings.media_store == "s3":
        return S3MediaStore(
            endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            bucket=settings.s3_bucket,
            region=settings.s3_region,
            secure=settings.s3_secure,
            public_endpoint=settings.s3_public_endpoint,
        )
    if settings.media_store == "local":
        return LocalMediaStore(media_dir(settings), secret_key(settings))
    raise SystemExit(f"CHIRP_MEDIA_STORE must be 'local' or 's3', got {settings.media_store!r}")
