"""The search budget: how a search past it is asked again over the newest tweets, against a
fake Typesense (httpx's MockTransport) that answers as the real one does when its cut-off
fires. The real engine's side of it is in tests/integration/test_search.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx
import pytest

from domain.search import SearchQuery
from storage.search_index import (
    UNKNOWN_PACE_BUDGETS,
    WINDOW_SHARE,
    SearchPage,
    TypesenseIndex,
    window_width,
)

NOW_MS = 1_800_000_000_000
OLDEST_MS = NOW_MS - 30 * 86_400_000
BUDGET_MS = 25

Answer = Callable[[dict[str, str]], httpx.Response]
MakeIndex = Callable[..., TypesenseIndex]


def answer(*created_at: int, found: int | None = None, cut_off: bool = False) -> Answer:
    """A search answer with one hit per `created_at` (its id is the time, for reading)."""
    body = {
        "found": len(created_at) if found is None else found,
        "hits": [{"document": {"id": str(t), "created_at": t}} for t in created_at],
        "search_time_ms": 30 if cut_off else 3,
        "search_cutoff": cut_off,
    }
    return lambda _: httpx.Response(200, json=body)


def timed_out(_: dict[str, str]) -> httpx.Response:
    # What Typesense answers when its cut-off fired before it had ranked anything.
    return httpx.Response(408, json={"message": "Request Timeout"})


@dataclass
class FakeTypesense:
    """Answers the queries in the order given; the oldest and newest lookups (wildcard, sorted
    by created_at) from `edges`."""

    answers: list[Answer]
    edges: dict[str, int] = field(
        default_factory=lambda: {"created_at:asc": OLDEST_MS, "created_at:desc": NOW_MS}
    )
    queries: list[dict[str, str]] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        if params["q"] == "*" and params.get("sort_by") in self.edges:
            edge = self.edges[params["sort_by"]]
            return httpx.Response(
                200, json={"found": 1, "hits": [{"document": {"created_at": edge}}]}
            )
        self.queries.append(params)
        return self.answers.pop(0)(params)


@pytest.fixture
async def fake() -> AsyncIterator[MakeIndex]:
    made: list[TypesenseIndex] = []

    def index(engine: FakeTypesense, budget_ms: int = BUDGET_MS) -> TypesenseIndex:
        made.append(
            TypesenseIndex(
                "http://typesense.invalid",
                "key",
                "tweets",
                budget_ms=budget_ms,
                transport=httpx.MockTransport(engine),
                clock=lambda: NOW_MS / 1000,
            )
        )
        return made[-1]

    yield index
    for i in made:
        await i.close()


async def search(index: TypesenseIndex, query: SearchQuery | None = None) -> SearchPage:
    return await index.search(query or SearchQuery(keywords="cats"), page=1, per_page=2)


def since(params: dict[str, str]) -> int:
    return int(params["filter_by"].rsplit("created_at:>=", 1)[1])


# -- the window ------------------------------------------------------------------------------


def test_the_window_spans_what_the_first_pass_pace_ranks_in_its_share_of_the_budget() -> None:
    # 100 s of tweets scanned in 25 ms: 4,000 ms of tweets per ms of ranking.
    width = window_width(
        now_ms=10_000_000, oldest_ms=0, frontier_ms=100_000, elapsed_ms=25, budget_ms=25
    )
    assert width == int(4_000 * 25 * WINDOW_SHARE)


def test_a_first_pass_that_ranked_nothing_assumes_several_budgets_for_everything() -> None:
    width = window_width(
        now_ms=10_000_000, oldest_ms=0, frontier_ms=None, elapsed_ms=0, budget_ms=25
    )
    assert width == int(10_000_000 / (UNKNOWN_PACE_BUDGETS * 25) * 25 * WINDOW_SHARE)


def test_a_first_pass_that_got_nowhere_gives_an_empty_window() -> None:
    assert window_width(now_ms=10, oldest_ms=5, frontier_ms=5, elapsed_ms=30, budget_ms=25) == 0


# -- the passes ------------------------------------------------------------------------------


async def test_a_search_within_the_budget_is_asked_once_and_is_complete(
    fake: MakeIndex,
) -> None:
    engine = FakeTypesense([answer(NOW_MS - 1, NOW_MS - 2, found=7)])
    page = await search(fake(engine))
    assert page == SearchPage(ids=[NOW_MS - 1, NOW_MS - 2], found=7, complete=True)
    assert [q["search_cutoff_ms"] for q in engine.queries] == [str(BUDGET_MS)]
    assert "filter_by" not in engine.queries[0]


async def test_a_search_cut_off_is_asked_again_over_the_newest_tweets_and_says_so(
    fake: MakeIndex,
) -> None:
    frontier = OLDEST_MS + 86_400_000  # a day of tweets in 30 ms
    engine = FakeTypesense(
        [
            answer(frontier, frontier - 5, found=65_535, cut_off=True),
            answer(NOW_MS - 1, NOW_MS - 2, found=900),
        ]
    )
    page = await search(fake(engine), SearchQuery(keywords="cats", from_username="bob"))

    assert page == SearchPage(ids=[NOW_MS - 1, NOW_MS - 2], found=900, complete=False)
    first, again = engine.queries
    assert again["q"] == first["q"] == "cats"
    assert again["filter_by"].startswith("author_username:=bob && created_at:>=")
    expected = window_width(
        now_ms=NOW_MS, oldest_ms=OLDEST_MS, frontier_ms=frontier, elapsed_ms=30, budget_ms=25
    )
    assert since(again) == NOW_MS - expected
    assert again["search_cutoff_ms"] == str(BUDGET_MS)


async def test_a_search_cut_off_before_it_ranked_anything_is_answered_not_an_outage(
    fake: MakeIndex,
) -> None:
    engine = FakeTypesense([timed_out, answer(NOW_MS - 1, NOW_MS - 2, found=40)])
    page = await search(fake(engine))
    assert page == SearchPage(ids=[NOW_MS - 1, NOW_MS - 2], found=40, complete=False)
    expected = window_width(
        now_ms=NOW_MS, oldest_ms=OLDEST_MS, frontier_ms=None, elapsed_ms=0, budget_ms=25
    )
    assert since(engine.queries[1]) == NOW_MS - expected


async def test_a_search_cut_off_twice_before_ranking_anything_is_an_empty_incomplete_page(
    fake: MakeIndex,
) -> None:
    engine = FakeTypesense([timed_out, timed_out])
    assert await search(fake(engine)) == SearchPage(ids=[], found=0, complete=False)


async def test_the_window_of_a_quiet_index_ends_at_its_newest_tweet_rather_than_now(
    fake: MakeIndex,
) -> None:
    # Nothing indexed for ten days: a window ending now would be empty.
    newest = NOW_MS - 10 * 86_400_000
    frontier = OLDEST_MS + 86_400_000
    engine = FakeTypesense(
        [
            answer(frontier, found=65_535, cut_off=True),
            answer(found=0),
            answer(newest, newest - 1, found=500),
        ]
    )
    engine.edges["created_at:desc"] = newest
    page = await search(fake(engine))

    assert page == SearchPage(ids=[newest, newest - 1], found=500, complete=False)
    width = NOW_MS - since(engine.queries[1])
    assert since(engine.queries[2]) == newest - width


async def test_a_short_page_from_a_lively_index_is_not_asked_a_third_time(
    fake: MakeIndex,
) -> None:
    frontier = OLDEST_MS + 86_400_000
    engine = FakeTypesense([answer(frontier, cut_off=True), answer(NOW_MS - 1, found=1)])
    page = await search(fake(engine))
    assert page == SearchPage(ids=[NOW_MS - 1], found=1, complete=False)
    assert len(engine.queries) == 2


async def test_without_a_budget_a_search_is_never_cut_off(
    fake: MakeIndex,
) -> None:
    engine = FakeTypesense([answer(NOW_MS - 1, found=1)])
    page = await search(fake(engine, budget_ms=0))
    assert page.complete is True
    assert "search_cutoff_ms" not in engine.queries[0]
