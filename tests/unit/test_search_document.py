from __future__ import annotations

from datetime import UTC, datetime

from domain.model import Author, Media, Tweet
from domain.search import SearchQuery
from storage.search_index import (
    TWEET_FIELDS,
    collection_schema,
    filter_for,
    schema_drift,
    tweet_document,
)

AUTHOR = Author(id=7, username="Alice_B", display_name="Alice")


def tweet(**changes: object) -> Tweet:
    fields: dict[str, object] = {
        "id": 123456789012345678,
        "author_id": 7,
        "text": "hello there",
        "created_at": datetime(2026, 11, 25, 12, 0, 0, 123000, tzinfo=UTC),
    }
    fields.update(changes)
    return Tweet(**fields)  # type: ignore[arg-type]


def test_a_document_carries_a_string_id_a_lower_cased_author_and_milliseconds() -> None:
    document = tweet_document(tweet(), AUTHOR)
    assert document.id == "123456789012345678"
    assert document.author_username == "alice_b"
    assert document.created_at == 1_795_608_000_123
    assert document.has_media is False


def test_a_tweet_with_an_image_is_marked_as_having_media() -> None:
    with_image = tweet(media=(Media(id=1, content_type="image/png", key="k.png"),))
    assert tweet_document(with_image, AUTHOR).has_media is True


def test_filters_combine_the_author_and_the_media_operator() -> None:
    assert filter_for(SearchQuery(keywords="x")) == ""
    assert filter_for(SearchQuery(keywords="", from_username="bob")) == "author_username:=bob"
    assert (
        filter_for(SearchQuery(keywords="x", from_username="bob", has_media=True))
        == "author_username:=bob && has_media:=true"
    )


def test_the_codes_own_schema_shows_no_drift() -> None:
    assert schema_drift(collection_schema("tweets_x")) == []


def test_a_changed_or_missing_field_is_reported_as_drift() -> None:
    fields = [dict(f) for f in TWEET_FIELDS if f["name"] != "has_media"]
    fields[0]["type"] = "int64"
    assert schema_drift({"fields": fields}) == [
        "field text is int64, the code expects string",
        "field has_media is missing",
    ]
