from __future__ import annotations

import pytest

from domain.errors import InvalidInput
from domain.search import MAX_QUERY_LENGTH, SearchQuery, parse_search_query


def test_plain_words_are_keywords_single_spaced() -> None:
    assert parse_search_query("  hello \t  world ") == SearchQuery(keywords="hello world")


def test_from_operator_takes_the_author_out_of_the_keywords() -> None:
    assert parse_search_query("coffee from:Alice") == SearchQuery(
        keywords="coffee", from_username="alice"
    )


def test_from_operator_accepts_an_at_sign_and_any_case() -> None:
    assert parse_search_query("FROM:@Bob_1").from_username == "bob_1"


def test_has_media_operator_sets_the_media_filter() -> None:
    assert parse_search_query("has:Media cats") == SearchQuery(keywords="cats", has_media=True)


def test_a_query_of_operators_only_has_no_keywords() -> None:
    assert parse_search_query("from:alice has:media") == SearchQuery(
        keywords="", from_username="alice", has_media=True
    )


def test_words_that_only_look_like_operators_stay_keywords() -> None:
    assert parse_search_query("meet at time:10pm").keywords == "meet at time:10pm"


@pytest.mark.parametrize("raw", ["", "   ", "\n\t"])
def test_an_empty_query_is_rejected(raw: str) -> None:
    with pytest.raises(InvalidInput, match="empty"):
        parse_search_query(raw)


def test_a_query_over_200_characters_is_rejected_after_trimming() -> None:
    assert parse_search_query("  " + "a" * MAX_QUERY_LENGTH + "  ").keywords == "a" * 200
    with pytest.raises(InvalidInput, match="longer than 200"):
        parse_search_query("a" * (MAX_QUERY_LENGTH + 1))


@pytest.mark.parametrize("raw", ["from:", "from:a", "from:no-dashes", "from:@"])
def test_from_without_a_valid_username_is_rejected(raw: str) -> None:
    with pytest.raises(InvalidInput, match="from:"):
        parse_search_query(raw)


def test_two_from_operators_are_rejected() -> None:
    with pytest.raises(InvalidInput, match="one from:"):
        parse_search_query("from:alice from:bob")


def test_has_with_anything_but_media_is_rejected() -> None:
    with pytest.raises(InvalidInput, match="has:media"):
        parse_search_query("has:links")


def test_a_nul_character_is_rejected() -> None:
    with pytest.raises(InvalidInput, match="NUL"):
        parse_search_query("a\x00b")
