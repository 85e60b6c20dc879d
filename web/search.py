"""The search use case: parse the query, ask the index for a page of ids, and show those
tweets as every other list shows them (hydrated from the cache and Postgres, so an edit is
seen at once and a deleted tweet never, even before the indexer has removed it). A query that
matches more than the engine can rank within its budget is answered from its newest matches;
the results say so (`complete`)."""

from __future__ import annotations

import logging

import msgspec

from domain.errors import InvalidInput
from domain.model import TweetView
from domain.search import parse_search_query
from storage.metrics import SEARCH_ANSWERS, labelled
from storage.search_index import MissingCollection, SearchPage, SearchRejected
from web.container import Services

log = logging.getLogger("chirp.search")


class SearchResults(msgspec.Struct, frozen=True):
    items: list[TweetView]
    found: int
    page: int
    # False: from the newest matches only, and `found` counts those.
    complete: bool = True


class TweetSearch:
    def __init__(self, services: Services) -> None:
        self.s = services

    async def search(
        self, viewer_id: int | None, q: str, *, page: int, limit: int
    ) -> SearchResults:
        """Raises InvalidInput for a malformed query and Unavailable (503) when the engine
        cannot answer."""
        query = parse_search_query(q)
        try:
            result = await self.s.search.search(query, page=page, per_page=limit)
        except MissingCollection:
            # Nothing indexed yet (the indexer has not started): create the collection so
            # the next search finds it, and answer with nothing.
            await self.s.search.ensure()
            result = SearchPage(ids=[], found=0)
        except SearchRejected as error:
            log.warning("search engine rejected a query", extra={"q": q, "error": str(error)})
            raise InvalidInput("q is not a query the search engine accepts") from error
        labelled(SEARCH_ANSWERS, "complete" if result.complete else "newest").inc()
        views = await self.s.reader.views(viewer_id, result.ids)
        return SearchResults(items=views, found=result.found, page=page, complete=result.complete)
