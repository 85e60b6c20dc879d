"""Snowflake worker ids: processes that share a database never mint with the same one."""

from __future__ import annotations

import asyncio

import asyncpg

from domain.ids import SEQUENCE_BITS, WORKER_BITS
from storage.postgres import WORKER_ID_LOCK_CLASS
from tests.support import Api, eventually, running_app
from web.container import provide_services
from web.settings import Settings


def worker_of(snowflake: int) -> int:
    return (snowflake >> SEQUENCE_BITS) & ((1 << WORKER_BITS) - 1)


async def test_processes_without_a_configured_worker_id_each_claim_a_different_one(
    settings: Settings,
) -> None:
    unset = settings.with_overrides(worker_id=-1)
    async with provide_services(unset, process_name="one") as one:
        async with provide_services(unset, process_name="two") as two:
            assert one.ids.worker_id != two.ids.worker_id
            assert worker_of(two.ids.next_id()) == two.ids.worker_id
            released = two.ids.worker_id
        # Stopping releases the claim: the lowest free id is the one just given back.
        async with provide_services(unset, process_name="three") as three:
            assert three.ids.worker_id == released


async def test_two_app_processes_posting_at_once_never_mint_the_same_tweet_id(
    settings: Settings,
) -> None:
    unset = settings.with_overrides(worker_id=-1)
    async with running_app(unset) as first, running_app(unset) as second:
        authors = [await first.sign_up() for _ in range(4)]

        async def post(api: Api, n: int) -> int:
            author = authors[n % len(authors)]
            response = await api.client.post(
                "/api/v1/tweets", json={"text": f"at once {n}"}, headers=author.auth
            )
            assert response.status_code == 201, response.text
            return int(response.json()["id"])

        ids = await asyncio.gather(*(post((first, second)[n % 2], n) for n in range(200)))
        assert len(set(ids)) == 200
        assert len({worker_of(i) for i in ids}) == 2


async def test_a_lost_worker_id_lease_is_claimed_again(
    settings: Settings, pg: asyncpg.Connection
) -> None:
    # The advisory lock lives on one connection: when Postgres drops it (a restart, an
    # administrator), the id is free for anyone, so the process must claim one again.
    unset = settings.with_overrides(worker_id=-1)
    lock = (
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = $1"
        " AND objid = $2 AND granted"
    )
    async with provide_services(unset, process_name="leased") as services:
        first = services.ids.worker_id
        holder = await pg.fetchval(lock, WORKER_ID_LOCK_CLASS, first)
        assert holder is not None
        await pg.execute("SELECT pg_terminate_backend($1)", holder)

        async def held_again() -> bool:
            now = await pg.fetchval(lock, WORKER_ID_LOCK_CLASS, services.ids.worker_id)
            return now is not None and now != holder

        assert await eventually(held_again, timeout=10)
