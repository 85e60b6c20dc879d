"""The Typesense index of tweets. The collection schema is owned by this module: a collection
is always reached through an alias, so `chirp search reindex` can build a new collection
beside the live one and switch the alias over with no downtime.

Typesense is spoken to over its REST API with httpx rather than through the `typesense`
client: client 2.1 raises DeprecationWarnings from its own constructors (for v30 endpoints we
never call), which the test suite treats as errors, and it has one timeout per client where
searches need a short one and bulk imports a long one.

Errors leave as two kinds, because callers must treat them differently: `SearchUnavailable`
(the engine cannot be reached or is failing: wait and retry, or answer 503) and
`SearchRejected` (the engine answered and refused: retrying the same request will not help).

A search has a time budget. Typesense's cost is linear in the documents a query matches (every
match is scored; a word in most tweets costs about 0.3 µs per tweet on one core, so 250 ms at a
million tweets), and its own cut-off (`search_cutoff_ms`) stops the scan where it is: posting
lists run in insertion order, so what it has then are the *oldest* matches. A query cut off
that way is asked again over only the newest tweets, a window sized from how far the first
pass got within the budget; that answer ranks as always (most relevant first, recency breaking
ties) among the newest matches, and says that it is incomplete."""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

import httpx
import msgspec

from domain.errors import Unavailable
from domain.model import Author, Tweet
from domain.search import SearchQuery

log = logging.getLogger("chirp.search")

# Typesense caps per_page at 250; filters with a list of ids stay well under URL limits.
MAX_PER_PAGE = 250
ID_FILTER_CHUNK = 150  # 150 nineteen-digit ids stay under Typesense's 4,000-character filter limit

# The share of the budget the newest-tweets pass is planned to take. The first pass's pace is
# measured on the query's exact words alone, with no filter; the second also scans the last
# word's prefix expansions and intersects the time filter, which at a million tweets costs up
# to twice as much per tweet, and the engine checks the clock only every 65,536 postings.
WINDOW_SHARE = 0.35
# A first pass cut off before it ranked anything tells nothing of its pace: assume then that
# the whole index would have taken this many budgets.
UNKNOWN_PACE_BUDGETS = 8
# How long the times of the oldest and newest indexed tweets are remembered: the oldest only
# moves when that tweet is deleted, and only scales an estimate; the newest is looked at only
# for an index that has had no tweet for longer than the window (see `_newest`).
OLDEST_TTL_SECONDS = 600.0
NEWEST_TTL_SECONDS = 60.0


class SearchUnavailable(Unavailable):
    """Typesense could not be reached, timed out, or answered with a server error."""


class SearchRejected(Exception):
    """Typesense refused a request (4xx): a bug or a schema mismatch, not an outage."""


class MissingCollection(SearchRejected):
    """The alias or collection does not exist (yet)."""


class _AlreadyExists(SearchRejected):
    pass


class _CutOffEmpty(SearchUnavailable):
    """Typesense answers 408 when a search's cut-off came before it had ranked anything."""


class TweetDocument(msgspec.Struct, frozen=True):
    id: str
    text: str
    author_id: int
    # Lower-cased: `from:` matches usernames regardless of case.
    author_username: str
    # Unix milliseconds; the recency tie-break after relevance.
    created_at: int
    has_media: bool


# What the code expects of the collection, compared by `verify` with what Typesense holds.
TWEET_FIELDS: list[dict[str, Any]] = [
    {"name": "text", "type": "string"},
    {"name": "author_id", "type": "int64"},
    {"name": "author_username", "type": "string"},
    {"name": "created_at", "type": "int64"},
    {"name": "has_media", "type": "bool"},
]

_document_encoder = msgspec.json.Encoder()


def tweet_document(tweet: Tweet, author: Author) -> TweetDocument:
    return TweetDocument(
        id=str(tweet.id),
        text=tweet.text,
        author_id=author.id,
        author_username=author.username.lower(),
        created_at=int(tweet.created_at.timestamp() * 1000),
        has_media=bool(tweet.media),
    )


def collection_schema(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "fields": TWEET_FIELDS,
        # Wildcard queries (operators only) then come back newest first without a sort.
        "default_sorting_field": "created_at",
    }


def schema_drift(collection: dict[str, Any]) -> list[str]:
    """How a collection's fields differ from the code's, one line per difference."""
    actual = {f["name"]: f.get("type") for f in collection.get("fields", [])}
    drift = []
    for field in TWEET_FIELDS:
        found = actual.get(field["name"])
        if found is None:
            drift.append(f"field {field['name']} is missing")
        elif found != field["type"]:
            drift.append(f"field {field['name']} is {found}, the code expects {field['type']}")
    return drift


class SearchPage(msgspec.Struct, frozen=True):
    ids: list[int]
    found: int
    # False when the query matched more than the engine could rank within the budget: the page
    # then comes from the newest matches only, and `found` counts those it looked at.
    complete: bool = True


def window_width(
    *, now_ms: int, oldest_ms: int, frontier_ms: int | None, elapsed_ms: float, budget_ms: int
) -> int:
    """How many milliseconds of the newest tweets a query can be ranked over within
    `budget_ms * WINDOW_SHARE`, at the pace of its first pass: cut off after `elapsed_ms`,
    that pass had scanned (oldest first) from `oldest_ms` to `frontier_ms` (None: it had
    ranked nothing)."""
    if frontier_ms is None:
        scanned, elapsed = now_ms - oldest_ms, float(budget_ms * UNKNOWN_PACE_BUDGETS)
    else:
        scanned, elapsed = frontier_ms - oldest_ms, elapsed_ms
    pace = max(scanned, 0) / max(elapsed, 1.0)
    return int(pace * budget_ms * WINDOW_SHARE)


def filter_for(query: SearchQuery) -> str:
    clauses = []
    if query.from_username is not None:
        # Usernames are [a-z0-9_] after parsing, so they need no escaping.
        clauses.append(f"author_username:={query.from_username}")
    if query.has_media:
        clauses.append("has_media:=true")
    return " && ".join(clauses)


def _and(*filters: str) -> str:
    return " && ".join(f for f in filters if f)


class TypesenseIndex:
    """Tweets in Typesense, behind the alias `alias`. Nothing connects until a method is
    awaited. Queries get a short timeout (a hung engine must turn into a quick 503); bulk
    calls (imports, exports, collection changes) a long one. `budget_ms`: how long one pass
    of a search may rank (0: no limit, every answer complete however long it takes).
    `transport` and `clock` (Unix seconds) are for tests."""

    def __init__(
        self,
        url: str,
        api_key: str,
        alias: str,
        *,
        timeout: float = 2.0,
        bulk_timeout: float = 120.0,
        budget_ms: int = 0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.alias = alias
        self.budget_ms = budget_ms
        self._timeout = httpx.Timeout(timeout)
        self._bulk_timeout = httpx.Timeout(bulk_timeout, connect=timeout)
        self._http = httpx.AsyncClient(
            base_url=url.rstrip("/"),
            headers={"X-TYPESENSE-API-KEY": api_key},
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            transport=transport,
        )
        self._clock = clock
        self._ensured = False
        # newest? -> (created_at of the newest or oldest indexed tweet, when it was looked up)
        self._edges: dict[bool, tuple[int, float]] = {}

    async def close(self) -> None:
        await self._http.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        bulk: bool = False,
        params: dict[str, Any] | None = None,
        json: object = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        """One request, with Typesense's and httpx's failures turned into ours. A wrong API
        key counts as unavailable: nothing succeeds until an operator fixes it, and nothing
        may be discarded meanwhile."""
        try:
            response = await self._http.request(
                method,
                path,
                params=params,
                json=json,
                content=content,
                timeout=self._bulk_timeout if bulk else self._timeout,
            )
        except httpx.HTTPError as error:
            raise SearchUnavailable("search is unavailable") from error
        if response.is_success:
            return response
        message = _message(response)
        if response.status_code == 404:
            raise MissingCollection(message)
        if response.status_code == 409:
            raise _AlreadyExists(message)
        if response.status_code == 408:
            raise _CutOffEmpty(message)
        if response.status_code in (400, 422):
            raise SearchRejected(message)
        # Debug only: during an outage every retry lands here; the caller reports it once.
        log.debug(
            "typesense answered with an error",
            extra={"status": response.status_code, "path": path, "error": message},
        )
        raise SearchUnavailable("search is unavailable")

    def _documents(self, collection: str | None) -> str:
        return f"/collections/{quote(collection or self.alias, safe='')}/documents"

    # -- the collection and its alias ---------------------------------------------------

    async def healthy(self) -> bool:
        try:
            response = await self._call("GET", "/health")
        except (SearchUnavailable, SearchRejected):
            return False
        return bool(_json(response).get("ok"))

    async def current_collection(self) -> str | None:
        """The collection the alias points at, or None when there is no alias."""
        try:
            response = await self._call("GET", f"/aliases/{quote(self.alias, safe='')}")
        except MissingCollection:
            return None
        return str(_json(response)["collection_name"])

    async def ensure(self) -> str:
        """Creates the first collection and the alias if there is none; returns the
        collection the alias points at. Safe to race: every process that finds no alias
        creates the same collection name."""
        current = await self.current_collection()
        if current is None:
            current = f"{self.alias}_initial"
            with contextlib.suppress(_AlreadyExists):
                await self.create_collection(current)
            await self._point(current)
            log.info("search collection created", extra={"collection": current})
        else:
            drift = schema_drift(await self.collection_info(current))
            if drift:
                log.warning(
                    "search collection differs from the code's schema; run `chirp search reindex`",
                    extra={"collection": current, "drift": drift},
                )
        self._ensured = True
        return current

    async def ensure_once(self) -> None:
        if not self._ensured:
            await self.ensure()

    async def collection_info(self, name: str | None = None) -> dict[str, Any]:
        response = await self._call("GET", f"/collections/{quote(name or self.alias, safe='')}")
        return _json(response)

    async def create_collection(self, name: str) -> None:
        await self._call("POST", "/collections", bulk=True, json=collection_schema(name))

    def new_collection_name(self) -> str:
        # When it was built, for operators; the random tail keeps two builds apart.
        return f"{self.alias}_{time.strftime('%Y%m%d%H%M%S', time.gmtime())}_{secrets.token_hex(2)}"

    async def _point(self, name: str) -> None:
        await self._call(
            "PUT",
            f"/aliases/{quote(self.alias, safe='')}",
            bulk=True,
            json={"collection_name": name},
        )

    async def point_alias(self, name: str) -> str | None:
        """Points the alias at `name` (atomically, for searches); returns the previous
        target."""
        previous = await self.current_collection()
        await self._point(name)
        return previous

    async def drop_collection(self, name: str) -> None:
        with contextlib.suppress(MissingCollection):
            await self._call("DELETE", f"/collections/{quote(name, safe='')}", bulk=True)

    async def collections(self) -> list[str]:
        """Names of every collection this alias has had (ours, by prefix)."""
        response = await self._call("GET", "/collections")
        names = [str(c["name"]) for c in response.json()]
        return [n for n in names if n.startswith(f"{self.alias}_")]

    async def drop_everything(self) -> None:
        """Removes the alias and all its collections (tests, and operators starting over)."""
        with contextlib.suppress(MissingCollection):
            await self._call("DELETE", f"/aliases/{quote(self.alias, safe='')}", bulk=True)
        for name in await self.collections():
            await self.drop_collection(name)
        self._ensured = False

    # -- documents -------------------------------------------------------------------------

    async def upsert(
        self, documents: Sequence[TweetDocument], *, collection: str | None = None
    ) -> dict[str, str]:
        """Imports the documents. The import endpoint answers 200 even when documents fail,
        so every result line is checked: returns the id and error of each rejected document
        (empty when all were accepted)."""
        if not documents:
            return {}
        response = await self._call(
            "POST",
            f"{self._documents(collection)}/import",
            bulk=True,
            # Typesense's documented default, stated because 0.24's import applies "reject"
            # when it is left out.
            params={"action": "upsert", "dirty_values": "coerce_or_reject"},
            content=b"\n".join(_document_encoder.encode(d) for d in documents),
        )
        lines = response.content.splitlines()
        if len(lines) != len(documents):
            raise SearchUnavailable(
                f"search import answered {len(lines)} lines for {len(documents)} documents"
            )
        rejected: dict[str, str] = {}
        for document, line in zip(documents, lines, strict=True):
            result = _import_result.decode(line)
            if result.success is not True:
                rejected[document.id] = result.error or "no reason given"
        return rejected

    async def delete(self, ids: Sequence[int], *, collection: str | None = None) -> None:
        """Removes the documents; ids that are not indexed are no error."""
        for start in range(0, len(ids), ID_FILTER_CHUNK):
            chunk = ids[start : start + ID_FILTER_CHUNK]
            await self._call(
                "DELETE",
                self._documents(collection),
                bulk=True,
                params={"filter_by": f"id:[{','.join(str(i) for i in chunk)}]"},
            )

    async def documents(
        self, ids: Sequence[int], *, collection: str | None = None
    ) -> dict[int, TweetDocument]:
        """The indexed documents among `ids`."""
        found: dict[int, TweetDocument] = {}
        for start in range(0, len(ids), ID_FILTER_CHUNK):
            chunk = ids[start : start + ID_FILTER_CHUNK]
            answer = await self._search(
                collection,
                {
                    "q": "*",
                    "filter_by": f"id:[{','.join(str(i) for i in chunk)}]",
                    "per_page": MAX_PER_PAGE,
                },
                bulk=True,
            )
            for hit in answer.get("hits", []):
                raw = hit["document"]
                try:
                    document = msgspec.convert(raw, TweetDocument)
                except msgspec.ValidationError:
                    # Written under another schema: a placeholder that equals no expected
                    # document, so `verify` reports it as stale.
                    document = TweetDocument(str(raw["id"]), "", 0, "", 0, False)
                found[int(document.id)] = document
        return found

    async def count(self, *, collection: str | None = None) -> int:
        return int((await self.collection_info(collection)).get("num_documents", 0))

    async def ids(self, *, collection: str | None = None) -> set[int]:
        """Every indexed id: an export of that one field, read as it streams in."""
        ids: set[int] = set()
        try:
            async with self._http.stream(
                "GET",
                f"{self._documents(collection)}/export",
                params={"include_fields": "id"},
                timeout=self._bulk_timeout,
            ) as response:
                if not response.is_success:
                    await response.aread()
                    raise MissingCollection(_message(response))
                async for line in response.aiter_lines():
                    if line:
                        ids.add(int(_id_line.decode(line).id))
        except httpx.HTTPError as error:
            raise SearchUnavailable("search is unavailable") from error
        return ids

    async def sample_ids(self, size: int, *, collection: str | None = None) -> list[int]:
        """Ids spread over the whole index (pages at even intervals, newest to oldest), for
        spot checks when exporting every id would be too much."""
        total = await self.count(collection=collection)
        if total == 0 or size <= 0:
            return []
        per_page = min(MAX_PER_PAGE, size)
        pages = -(-total // per_page)
        wanted = min(pages, -(-size // per_page))
        ids: list[int] = []
        for page in sorted({1 + (i * pages) // wanted for i in range(wanted)}):
            answer = await self._search(
                collection,
                {
                    "q": "*",
                    "per_page": per_page,
                    "page": page,
                    "include_fields": "id",
                    "sort_by": "created_at:desc",
                },
                bulk=True,
            )
            ids += [int(hit["document"]["id"]) for hit in answer.get("hits", [])]
        return ids[:size]

    async def _search(
        self, collection: str | None, params: dict[str, Any], *, bulk: bool = False
    ) -> dict[str, Any]:
        response = await self._call(
            "GET", f"{self._documents(collection)}/search", bulk=bulk, params=params
        )
        return _json(response)

    # -- queries ---------------------------------------------------------------------------

    async def search(self, query: SearchQuery, *, page: int, per_page: int) -> SearchPage:
        """Most relevant first, newest first among equals. Typo-tolerant; the last word also
        matches as a prefix (what someone still typing means). Within the budget the answer is
        complete; past it, it comes from the newest matches (see the module's docstring)."""
        params: dict[str, Any] = {
            "q": query.keywords or "*",
            "query_by": "text",
            "sort_by": "_text_match:desc,created_at:desc",
            "prefix": "true",
            "num_typos": 2,
            "page": page,
            "per_page": min(per_page, MAX_PER_PAGE),
            # created_at: how far a cut-off pass got.
            "include_fields": "id,created_at",
            "highlight_fields": "none",
        }
        filters = filter_for(query)
        if filters:
            params["filter_by"] = filters
        if self.budget_ms <= 0:
            return _page(await self._ranked(params), complete=True)
        params["search_cutoff_ms"] = self.budget_ms
        first = await self._ranked(params)
        if first is not None and not first.search_cutoff:
            return _page(first, complete=True)
        return _page(await self._newest(params, filters, first), complete=False)

    async def _ranked(self, params: dict[str, Any]) -> _SearchAnswer | None:
        """One search; None when it was cut off before it had ranked anything."""
        try:
            response = await self._call("GET", f"{self._documents(None)}/search", params=params)
        except _CutOffEmpty:
            return None
        return _search_answer.decode(response.content)

    async def _newest(
        self, params: dict[str, Any], filters: str, cut_off: _SearchAnswer | None
    ) -> _SearchAnswer | None:
        """The query again, over as many of the newest tweets as the cut-off pass's pace says
        the budget allows. This pass has the budget too: were the estimate too generous, it
        would be cut off in turn, about one budget late and with the window's oldest matches."""
        oldest = await self._edge_created_at(newest=False)
        if oldest is None:  # the index was emptied meanwhile
            return None
        now_ms = int(self._clock() * 1000)
        width = window_width(
            now_ms=now_ms,
            oldest_ms=oldest,
            frontier_ms=max((h.document.created_at for h in cut_off.hits), default=None)
            if cut_off is not None
            else None,
            elapsed_ms=cut_off.search_time_ms if cut_off is not None else 0.0,
            budget_ms=self.budget_ms,
        )
        answer = await self._since(params, filters, now_ms - width)
        if answer is not None and (answer.search_cutoff or len(answer.hits) >= params["per_page"]):
            return answer
        # A short page may mean an index with no tweets lately (a quiet or restored one),
        # which a window ending now misses: then end the window at its newest tweet.
        latest = await self._edge_created_at(newest=True)
        if latest is None or latest >= now_ms - width:
            return answer
        return await self._since(params, filters, latest - width)

    async def _since(
        self, params: dict[str, Any], filters: str, since_ms: int
    ) -> _SearchAnswer | None:
        return await self._ranked(
            {**params, "filter_by": _and(filters, f"created_at:>={since_ms}")}
        )

    async def _edge_created_at(self, *, newest: bool) -> int | None:
        """When the newest (or oldest) indexed tweet was written, remembered for a while."""
        checked = time.monotonic()
        remembered = self._edges.get(newest)
        ttl = NEWEST_TTL_SECONDS if newest else OLDEST_TTL_SECONDS
        if remembered is not None and checked - remembered[1] < ttl:
            return remembered[0]
        answer = await self._search(
            None,
            {
                "q": "*",
                "sort_by": f"created_at:{'desc' if newest else 'asc'}",
                "per_page": 1,
                "include_fields": "created_at",
            },
        )
        hits = answer.get("hits", [])
        if not hits:
            return None
        created_at = int(hits[0]["document"]["created_at"])
        self._edges[newest] = (created_at, checked)
        return created_at


def _page(answer: _SearchAnswer | None, *, complete: bool) -> SearchPage:
    if answer is None:
        return SearchPage(ids=[], found=0, complete=complete)
    return SearchPage(
        ids=[int(hit.document.id) for hit in answer.hits],
        found=answer.found,
        complete=complete and not answer.search_cutoff,
    )


class _ImportResult(msgspec.Struct):
    success: bool = False
    error: str | None = None


class _IdOnly(msgspec.Struct):
    id: str


class _HitDocument(msgspec.Struct):
    id: str
    created_at: int = 0


class _Hit(msgspec.Struct):
    document: _HitDocument


class _SearchAnswer(msgspec.Struct):
    found: int = 0
    hits: list[_Hit] = []
    search_time_ms: int = 0
    search_cutoff: bool = False


_import_result = msgspec.json.Decoder(_ImportResult)
_id_line = msgspec.json.Decoder(_IdOnly)
_search_answer = msgspec.json.Decoder(_SearchAnswer)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(response.content)
    except msgspec.DecodeError as error:
        raise SearchUnavailable("search answered something that is not JSON") from error
    return value if isinstance(value, dict) else {"value": value}


def _message(response: httpx.Response) -> str:
    try:
        return str(msgspec.json.decode(response.content).get("message", response.text))
    except (msgspec.DecodeError, AttributeError):
        return f"{response.status_code} {response.text[:200]}"
