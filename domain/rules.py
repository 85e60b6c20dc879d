"""Pure rules of Chirp: what a valid tweet, username and password are, and when an author is
a celebrity."""

from __future__ import annotations

import re
import unicodedata
from functools import cache
from importlib.resources import files

from domain.errors import InvalidInput

MAX_TWEET_LENGTH = 280
MAX_MEDIA_PER_TWEET = 4
USERNAME_RE = re.compile(r"[A-Za-z0-9_]{3,15}")
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 128
MAX_DISPLAY_NAME_LENGTH = 50
MAX_BIO_LENGTH = 160
MAX_IDEMPOTENCY_KEY_LENGTH = 64


def tweet_length(text: str) -> int:
    """Length as the limit counts it: code points of the trimmed NFC text. The browser's
    character counter must count the same way."""
    return len(unicodedata.normalize("NFC", text).strip())


def normalize_tweet_text(text: str) -> str:
    # NFC first: composed and decomposed spellings of the same text must count alike.
    normalized = unicodedata.normalize("NFC", text).strip()
    if not normalized:
        raise InvalidInput("text is empty")
    if len(normalized) > MAX_TWEET_LENGTH:
        raise InvalidInput(f"text is longer than {MAX_TWEET_LENGTH} characters")
    if "\x00" in normalized:
        raise InvalidInput("text contains a NUL character")
    return normalized


def validate_username(username: str) -> str:
    if not USERNAME_RE.fullmatch(username):
        raise InvalidInput("username must be 3 to 15 letters, digits or underscores")
    return username


def validate_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"password is shorter than {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidInput(f"password is longer than {MAX_PASSWORD_LENGTH} characters")
    if password.lower() in common_passwords():
        raise InvalidInput("password is too common")
    return password


@cache
def common_passwords() -> frozenset[str]:
    """The most common passwords of 8 characters or more, lowercase (shorter ones are refused
    anyway). Read from the package's data file on first use, not at import."""
    text = files("domain").joinpath("common_passwords.txt").read_text(encoding="utf-8")
    return frozenset(line for line in text.splitlines() if line)


def normalize_display_name(display_name: str | None, username: str) -> str:
    if display_name is None:
        return username
    normalized = unicodedata.normalize("NFC", display_name).strip()
    if "\x00" in normalized:
        raise InvalidInput("display_name contains a NUL character")
    if len(normalized) > MAX_DISPLAY_NAME_LENGTH:
        raise InvalidInput(f"display_name is longer than {MAX_DISPLAY_NAME_LENGTH} characters")
    return normalized or username


def validate_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise InvalidInput(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters")
    return key


def ensure_not_self_follow(follower_id: int, followee_id: int) -> None:
    if follower_id == followee_id:
        raise InvalidInput("you cannot follow yourself")


def is_celebrity_after(
    currently_celebrity: bool, followers_count: int, threshold: int, hysteresis: float
) -> bool:
    """Fanout mode with hysteresis: an author becomes a celebrity above `threshold` followers
    and stops being one only below `threshold * (1 - hysteresis)`, so an author hovering at the
    edge does not flip between modes (and re-fan their tweets) on every follow."""
    if currently_celebrity:
        return followers_count >= threshold * (1.0 - hysteresis)
    return followers_count > threshold
