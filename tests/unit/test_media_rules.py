from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from domain.errors import InvalidInput
from domain.media import (
    MAX_ALT_LENGTH,
    MAX_MEDIA_BYTES,
    bytes_match_type,
    content_type_of_key,
    is_valid_key,
    media_key,
    read_url_window,
    sniff_image_type,
    validate_media_ids,
    validate_media_request,
)

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
GIF87 = b"GIF87a\x01\x00\x01\x00\x80\x00"
GIF89 = b"GIF89a\x01\x00\x01\x00\x80\x00"
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 "


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (JPEG, "image/jpeg"),
        (PNG, "image/png"),
        (GIF87, "image/gif"),
        (GIF89, "image/gif"),
        (WEBP, "image/webp"),
    ],
)
def test_each_image_type_is_recognised_by_its_first_bytes(head: bytes, expected: str) -> None:
    assert sniff_image_type(head) == expected
    assert bytes_match_type(expected, head)


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"<svg xmlns='http://www.w3.org/2000/svg'>",
        b"<!DOCTYPE html><html>",
        b"\x89PNG\r\n\x1a",  # one byte short of the signature
        b"RIFF\x24\x00\x00\x00WAVEfmt ",  # RIFF, but audio
        b"RIFF\x24\x00\x00",  # too short to tell
        b"GIF88a\x01\x00",
        b"\xff\xd8\x00\x00",
    ],
)
def test_bytes_that_are_no_accepted_image_are_not_recognised(head: bytes) -> None:
    assert sniff_image_type(head) is None


def test_bytes_of_one_image_type_do_not_match_another_declared_type() -> None:
    assert not bytes_match_type("image/jpeg", PNG)
    assert not bytes_match_type("image/webp", GIF89)


def test_an_upload_request_is_canonicalised_and_its_alt_text_cleaned() -> None:
    assert validate_media_request(" Image/PNG ", 10, None) == ("image/png", "")
    assert validate_media_request("image/gif", MAX_MEDIA_BYTES, "  a cat \n") == (
        "image/gif",
        "a cat",
    )


@pytest.mark.parametrize(
    ("content_type", "size", "alt", "message"),
    [
        ("image/svg+xml", 10, None, "content_type"),
        ("text/html", 10, None, "content_type"),
        ("image/png", 0, None, "size"),
        ("image/png", -1, None, "size"),
        ("image/png", MAX_MEDIA_BYTES + 1, None, "size"),
        ("image/png", 10, "x" * (MAX_ALT_LENGTH + 1), "alt"),
        ("image/png", 10, "a\x00b", "alt"),
    ],
)
def test_an_upload_request_outside_the_rules_is_invalid_input(
    content_type: str, size: int, alt: str | None, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        validate_media_request(content_type, size, alt)


def test_alt_text_of_exactly_the_limit_is_accepted() -> None:
    assert validate_media_request("image/png", 1, "é" * MAX_ALT_LENGTH)[1] == "é" * MAX_ALT_LENGTH


def test_a_tweet_takes_at_most_four_distinct_media() -> None:
    validate_media_ids([1, 2, 3, 4])
    with pytest.raises(InvalidInput, match="at most 4"):
        validate_media_ids([1, 2, 3, 4, 5])
    with pytest.raises(InvalidInput, match="twice"):
        validate_media_ids([1, 1])


def test_media_keys_are_random_hex_with_the_types_extension() -> None:
    key = media_key("0123456789abcdef" * 2, "image/webp")
    assert key == "0123456789abcdef0123456789abcdef.webp"
    assert is_valid_key(key)
    assert content_type_of_key(key) == "image/webp"


@pytest.mark.parametrize(
    "key",
    [
        "../secret_key",
        "0123456789abcdef0123456789abcdef.png/../../x",
        "/etc/passwd",
        "0123456789ABCDEF0123456789ABCDEF.png",
        "0123456789abcdef0123456789abcdef.html",
        "0123456789abcdef0123456789abcdef",
        "",
    ],
)
def test_anything_but_a_key_of_ours_is_not_a_valid_key(key: str) -> None:
    assert not is_valid_key(key)


def test_a_key_cannot_be_made_from_a_token_the_store_did_not_choose() -> None:
    with pytest.raises(ValueError, match="32 lowercase hex"):
        media_key("../../etc/passwd", "image/png")


def test_read_urls_repeat_within_the_hour_and_always_have_a_day_left() -> None:
    start = datetime(2026, 11, 25, 13, 0, tzinfo=UTC)
    issued, expires = read_url_window(start + timedelta(minutes=1))
    assert issued == start
    assert read_url_window(start + timedelta(minutes=59, seconds=59)) == (issued, expires)
    assert read_url_window(start + timedelta(hours=1))[0] == start + timedelta(hours=1)
    latest = start + timedelta(minutes=59, seconds=59)
    assert issued + expires - latest >= timedelta(days=1)


def test_alt_text_is_normalised_and_bounded() -> None:
    from domain.errors import InvalidInput
    from domain.media import MAX_ALT_LENGTH, normalize_alt

    assert normalize_alt("  Cafe\u0301 at dusk ") == "Café at dusk"
    assert normalize_alt(None) == ""
    assert normalize_alt("x" * MAX_ALT_LENGTH) == "x" * MAX_ALT_LENGTH
    with pytest.raises(InvalidInput):
        normalize_alt("x" * (MAX_ALT_LENGTH + 1))
