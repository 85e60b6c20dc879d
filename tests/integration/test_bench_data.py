"""The benchmarks' data generator (bench/datagen.py): what it loads is what it reports, the
graph has the shape the benchmarks rely on, and its readers can read their timelines."""

from __future__ import annotations

import asyncpg

from bench.datagen import MIN_FOLLOWERS, celebrity_threshold, generate
from tests.support import Api
from web.container import provide_services
from web.settings import Settings


async def test_a_generated_graph_is_power_law_consistent_and_readable(
    settings: Settings, pg: asyncpg.Connection, api: Api
) -> None:
    users = 400
    async with provide_services(settings, process_name="datagen-test") as services:
        graph = await generate(services, users=users, tweets=2_000, readers=10, seed=3)
    summary = graph.summary()

    # The test database is shared with other tests: count only what the generator made.
    ids = graph.user_ids
    assert len(ids) == users
    assert await pg.fetchval("SELECT count(*) FROM users WHERE id = ANY($1)", ids) == users
    made = "SELECT count(*) FROM tweets WHERE author_id = ANY($1)"
    assert await pg.fetchval(made, ids) == 2_000
    edges = "SELECT count(*) FROM follows WHERE followee_id = ANY($1)"
    assert await pg.fetchval(edges, ids) == graph.follows
    # Counters go in with the rows: every one equals a recount.
    assert not await pg.fetchval(
        "SELECT count(*) FROM users u WHERE id = ANY($1) AND followers_count <>"
        " (SELECT count(*) FROM follows f WHERE f.followee_id = u.id)",
        ids,
    )
    # A few celebrities above the threshold, most users with a few tens of followers.
    assert graph.threshold == celebrity_threshold(users)
    assert 1 <= summary["celebrities"] < users // 20
    assert min(graph.followers) >= MIN_FOLLOWERS
    assert summary["followers_median"] < graph.threshold < summary["followers_max"]
    celebrities = "SELECT count(*) FROM users WHERE id = ANY($1) AND is_celebrity"
    assert await pg.fetchval(celebrities, ids) == summary["celebrities"]

    assert len(graph.tokens) == 10
    for token in list(graph.tokens.values())[:3]:
        response = await api.client.get(
            "/api/v1/timeline", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 200, response.text
        assert response.json()["tweets"], "a reader follows authors with tweets"
