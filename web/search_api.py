"""`GET /api/v1/search` (../shared/API.md, "Search")."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, get
from litestar.params import QueryParameter

from domain.errors import InvalidInput
from web.api import LimitParam, parse_limit
from web.deps import ChirpDep, ViewerDep
from web.schemas import TweetOut, tweet_out
from web.search import TweetSearch

# Deeper than any reader pages; it keeps Typesense from being asked for absurd offsets.
MAX_PAGE = 10_000


class SearchOut(msgspec.Struct):
    tweets: list[TweetOut]
    found: int
    page: int


def parse_page(raw: str | None) -> int:
    if raw is None:
        return 1
    text = raw.strip()
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise InvalidInput(f"page must be a whole number from 1 to {MAX_PAGE}")
    return int(text)


class SearchController(Controller):
    path = "/api/v1/search"
    tags = ["search"]

    @get("/")
    async def search(
        self,
        chirp: ChirpDep,
        viewer: ViewerDep,
        q: Annotated[
            str | None,
            QueryParameter(
                name="q",
                description="keywords, plus from:<username> and has:media; 1 to 200 characters",
                required=False,
            ),
        ] = None,
        limit: LimitParam = None,
        page: Annotated[
            str | None, QueryParameter(name="page", description="from 1, default 1", required=False)
        ] = None,
    ) -> SearchOut:
        if q is None:
            raise InvalidInput("q is required")
        results = await TweetSearch(chirp.s).search(
            viewer.user.id if viewer else None, q, page=parse_page(page), limit=parse_limit(limit)
        )
        return SearchOut(
            tweets=[tweet_out(v, chirp.media.url) for v in results.items],
            found=results.found,
            page=results.page,
        )
