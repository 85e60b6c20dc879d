"""The pure rules: tweet text, usernames, passwords, keys, self-follows, celebrity mode."""

from __future__ import annotations

import unicodedata

import pytest

from domain.errors import InvalidInput
from domain.rules import (
    common_passwords,
    ensure_not_self_follow,
    is_celebrity_after,
    normalize_display_name,
    normalize_tweet_text,
    tweet_length,
    validate_idempotency_key,
    validate_password,
    validate_username,
)


def test_tweet_text_is_trimmed_and_nfc_normalised() -> None:
    assert normalize_tweet_text("  e\u0301t\u00e9 \n") == "\u00e9t\u00e9"
    assert normalize_tweet_text("\u212b") == "\u00c5"


@pytest.mark.parametrize(
    "text",
    ["x" * 280, "\U0001f600" * 280, "e\u0301" * 280, " " * 50 + "y" * 280 + "\n" * 50],
)
def test_280_code_points_after_nfc_and_trimming_are_allowed(text: str) -> None:
    assert len(normalize_tweet_text(text)) == 280
    assert tweet_length(text) == 280


@pytest.mark.parametrize("text", ["x" * 281, "\U0001f600" * 281, "e\u0301" * 281])
def test_281_code_points_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        normalize_tweet_text(text)


@pytest.mark.parametrize("text", ["", "   ", "\n\t", "\u3000\u00a0"])
def test_empty_text_is_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        normalize_tweet_text(text)


def test_nul_characters_are_refused() -> None:
    with pytest.raises(InvalidInput):
        normalize_tweet_text("a\x00b")


def test_length_counts_code_points_not_utf16_units_or_bytes() -> None:
    text = "\U0001f600" * 10
    assert tweet_length(text) == 10
    assert len(text.encode("utf-16-le")) // 2 == 20
    assert unicodedata.is_normalized("NFC", normalize_tweet_text(text))


@pytest.mark.parametrize("name", ["abc", "A_1", "x" * 15, "___"])
def test_valid_usernames(name: str) -> None:
    assert validate_username(name) == name


@pytest.mark.parametrize("name", ["ab", "x" * 16, "a-b", "a b", "héllo", "abc\n", "", "ab\u0663"])
def test_invalid_usernames(name: str) -> None:
    with pytest.raises(InvalidInput):
        validate_username(name)


@pytest.mark.parametrize("length,ok", [(7, False), (8, True), (128, True), (129, False)])
def test_passwords_must_be_8_to_128_characters(length: int, ok: bool) -> None:
    if ok:
        assert validate_password("p" * length)
    else:
        with pytest.raises(InvalidInput):
            validate_password("p" * length)


def test_display_name_defaults_to_username_and_is_limited() -> None:
    assert normalize_display_name(None, "alice") == "alice"
    assert normalize_display_name("   ", "alice") == "alice"
    assert normalize_display_name(" Al ", "alice") == "Al"
    with pytest.raises(InvalidInput):
        normalize_display_name("x" * 51, "alice")


def test_idempotency_keys_are_1_to_64_characters() -> None:
    assert validate_idempotency_key(None) is None
    assert validate_idempotency_key("k" * 64) == "k" * 64
    for bad in ("", "k" * 65):
        with pytest.raises(InvalidInput):
            validate_idempotency_key(bad)


def test_following_yourself_is_refused() -> None:
    ensure_not_self_follow(1, 2)
    with pytest.raises(InvalidInput):
        ensure_not_self_follow(3, 3)


@pytest.mark.parametrize(
    "currently,followers,expected",
    [
        (False, 5, False),  # at the threshold: still normal
        (False, 6, True),  # above it: celebrity
        (True, 6, True),
        (True, 3, True),  # 3 >= 5 * 0.5: stays a celebrity
        (True, 2, False),  # 2 < 2.5: normal again
        (False, 3, False),
    ],
)
def test_celebrity_mode_has_hysteresis(currently: bool, followers: int, expected: bool) -> None:
    assert is_celebrity_after(currently, followers, 5, 0.5) is expected


def test_celebrity_mode_at_production_numbers() -> None:
    assert not is_celebrity_after(False, 10_000, 10_000, 0.1)
    assert is_celebrity_after(False, 10_001, 10_000, 0.1)
    assert is_celebrity_after(True, 9_000, 10_000, 0.1)
    assert not is_celebrity_after(True, 8_999, 10_000, 0.1)


@pytest.mark.parametrize("password", ["password1", "PASSWORD123", "Qwertyuiop", "12345678"])
def test_common_passwords_are_refused_whatever_their_case(password: str) -> None:
    with pytest.raises(InvalidInput, match="too common"):
        validate_password(password)


def test_the_common_password_list_is_large_lowercase_and_has_only_long_enough_entries() -> None:
    listed = common_passwords()
    assert len(listed) >= 5000
    assert all(p == p.lower() and len(p) >= 8 for p in listed)


def test_an_uncommon_password_is_accepted() -> None:
    assert validate_password("correct horse 1") == "correct horse 1"
