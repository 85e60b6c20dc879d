"""Rules for image media: which uploads are accepted, how their bytes are recognised, how
their object keys look, and for how long the URLs handed out for them stay valid."""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime, timedelta

from domain.errors import InvalidInput
from domain.rules import MAX_MEDIA_PER_TWEET

MAX_MEDIA_BYTES = 5 * 1024 * 1024
MAX_ALT_LENGTH = 1000
# File extensions in the object keys let a plain file server or a bucket browser show the
# right type without asking us.
EXTENSIONS: dict[str, str] = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/gif": "gif",
    "image/webp": "webp",
}
CONTENT_TYPES: dict[str, str] = {ext: ctype for ctype, ext in EXTENSIONS.items()}
# The longest signature below (RIFF....WEBP) needs 12 bytes.
SNIFF_BYTES = 12

UPLOAD_URL_LIFETIME = timedelta(minutes=15)
# Readers get URLs that live a day; they are issued per hour-long bucket so every render
# within the hour yields the same URL and browsers and proxies can cache the image.
READ_URL_LIFETIME = timedelta(days=1)
READ_URL_BUCKET = timedelta(hours=1)
# Uploads never attached to a tweet are garbage after this long.
PENDING_MEDIA_MAX_AGE = timedelta(days=1)

_KEY_RE = re.compile(r"[0-9a-f]{32}\.(?:jpg|png|gif|webp)")


def validate_media_request(content_type: str, size: int, alt: str | None) -> tuple[str, str]:
    """The canonical content type and the cleaned alt text of an upload request."""
    canonical = content_type.strip().lower()
    if canonical not in EXTENSIONS:
        allowed = ", ".join(EXTENSIONS)
        raise InvalidInput(f"content_type must be one of {allowed}")
    if size < 1:
        raise InvalidInput("size must be at least 1 byte")
    if size > MAX_MEDIA_BYTES:
        raise InvalidInput(f"size is over the limit of {MAX_MEDIA_BYTES} bytes (5 MiB)")
    return canonical, normalize_alt(alt)


def normalize_alt(alt: str | None) -> str:
    """Alt text: NFC, trimmed, at most MAX_ALT_LENGTH code points."""
    clean = unicodedata.normalize("NFC", alt or "").strip()
    if len(clean) > MAX_ALT_LENGTH:
        raise InvalidInput(f"alt is longer than {MAX_ALT_LENGTH} characters")
    if "\x00" in clean:
        raise InvalidInput("alt contains a NUL character")
    return clean


def validate_media_ids(media_ids: list[int]) -> None:
    if len(media_ids) > MAX_MEDIA_PER_TWEET:
        raise InvalidInput(f"a tweet has at most {MAX_MEDIA_PER_TWEET} media")
    if len(set(media_ids)) != len(media_ids):
        raise InvalidInput("media_ids holds the same media twice")


def sniff_image_type(head: bytes) -> str | None:
    """The image type that the first bytes of a file announce, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if len(head) >= SNIFF_BYTES and head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def bytes_match_type(content_type: str, head: bytes) -> bool:
    return sniff_image_type(head) == content_type


def media_key(token: str, content_type: str) -> str:
    """The object key of an upload: a random token chosen by us, never by the client, so a
    key can name nothing but a file in the media store."""
    key = f"{token}.{EXTENSIONS[content_type]}"
    if not is_valid_key(key):
        raise ValueError("media key token must be 32 lowercase hex digits")
    return key


def is_valid_key(key: str) -> bool:
    return _KEY_RE.fullmatch(key) is not None


def content_type_of_key(key: str) -> str:
    return CONTENT_TYPES.get(key.rpartition(".")[2], "application/octet-stream")


def read_url_window(
    now: datetime,
    lifetime: timedelta = READ_URL_LIFETIME,
    bucket: timedelta = READ_URL_BUCKET,
) -> tuple[datetime, timedelta]:
    """(issued_at, expires) for a read URL: issued at the start of the current bucket and
    valid for `lifetime` plus one bucket, so the URL repeats within the bucket and still has
    at least `lifetime` left whenever it is handed out."""
    epoch = datetime(1970, 1, 1, tzinfo=now.tzinfo)
    elapsed = now - epoch
    issued_at = epoch + (elapsed // bucket) * bucket
    return issued_at, lifetime + bucket
