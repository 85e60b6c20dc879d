"""What a search query means: keywords plus the operators `from:<username>` and `has:media`.
Pure parsing, so the rules are the same whichever engine answers the query."""

from __future__ import annotations

import unicodedata

import msgspec

from domain.errors import InvalidInput
from domain.rules import USERNAME_RE

MAX_QUERY_LENGTH = 200


class SearchQuery(msgspec.Struct, frozen=True):
    # The words to match, single-spaced; empty when the query is only operators.
    keywords: str
    # Lower-cased, because usernames are unique regardless of case.
    from_username: str | None = None
    has_media: bool = False


def parse_search_query(raw: str) -> SearchQuery:
    """Splits `q` into keywords and operators. Operators are recognised in any case and
    anywhere in the query; a word that only looks like one (`time:10pm`) stays a keyword."""
    text = unicodedata.normalize("NFC", raw).strip()
    if not text:
        raise InvalidInput("q is empty")
    if len(text) > MAX_QUERY_LENGTH:
        raise InvalidInput(f"q is longer than {MAX_QUERY_LENGTH} characters")
    if "\x00" in text:
        raise InvalidInput("q contains a NUL character")
    keywords: list[str] = []
    from_username: str | None = None
    has_media = False
    for word in text.split():
        name, colon, value = word.partition(":")
        operator = name.lower() if colon else ""
        if operator == "from":
            if from_username is not None:
                raise InvalidInput("q may hold one from: operator")
            username = value.removeprefix("@")
            if not USERNAME_RE.fullmatch(username):
                raise InvalidInput("from: needs a username, e.g. from:alice")
            from_username = username.lower()
        elif operator == "has":
            if value.lower() != "media":
                raise InvalidInput("has: supports only has:media")
            has_media = True
        else:
            keywords.append(word)
    return SearchQuery(
        keywords=" ".join(keywords), from_username=from_username, has_media=has_media
    )
