"""Shared fixtures. Every test session gets its own database, Redis key prefix and JetStream
stream and subject names, so the suite can run again and again, and beside `make run`.

Services are the real ones: whatever answers at the configured URLs (the machine's), or
embedded instances started under ./var exactly as `make run` starts them."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as aioredis

from launcher.services import (
    EmbeddedStack,
    ServiceUrls,
    drop_database,
    ensure_database,
    ensure_services,
)
from realtime.fanout import Fanout
from storage.postgres import migrate
from storage.search_index import SearchUnavailable, TypesenseIndex
from tests.support import Api, FanoutRun, running_app, running_fanout_run
from web.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def session_tag() -> str:
    return secrets.token_hex(4)


@pytest.fixture(scope="session")
def base_settings(session_tag: str) -> Settings:
    machine = Settings.from_env()
    return machine.with_overrides(
        database_url=with_database(machine.database_url, f"chirp_test_{session_tag}"),
        redis_prefix=f"test:{session_tag}:",
        stream=f"TEST_{session_tag.upper()}",
        subject_prefix=f"test_{session_tag}",
        # Small numbers so the tests can cross them with a handful of users:
        # celebrity above 5 followers, back to normal below 3.
        celebrity_threshold=5,
        celebrity_hysteresis=0.5,
        var_dir=ROOT / "var",
        log_json=False,
        secret_key="test-secret",
        # The session's own Typesense alias (and collections named after it).
        search_collection=f"test_{session_tag}_tweets",
        # Every test signs up from the same client address ("testclient"): per-address limits
        # are lifted here, and the tests of the limits set their own small ones.
        sign_ups_per_hour=1_000_000,
        sign_in_attempts_per_minute=1_000,
    )


@pytest.fixture(scope="session")
def stack(base_settings: Settings) -> Iterator[EmbeddedStack]:
    urls = ServiceUrls(
        database_url=base_settings.database_url,
        redis_url=base_settings.redis_url,
        nats_url=base_settings.nats_url,
        typesense_url=base_settings.typesense_url,
        typesense_api_key=base_settings.typesense_api_key,
    )
    embedded = ensure_services(urls, base_settings.var_dir, log=lambda _: None)
    yield embedded
    embedded.stop()


@pytest.fixture(scope="session")
async def database(base_settings: Settings, stack: EmbeddedStack) -> AsyncIterator[str]:
    await ensure_database(base_settings.database_url)
    await migrate(base_settings.database_url, quiet=True)
    yield base_settings.database_url
    await drop_database(base_settings.database_url)
    # Any test that searched or indexed left the session's Typesense alias and collections.
    index = TypesenseIndex(
        base_settings.typesense_url,
        base_settings.typesense_api_key,
        base_settings.search_collection,
    )
    try:
        await index.drop_everything()
    except SearchUnavailable:
        pass  # a Typesense shared with other runs may be restarting; leftovers are harmless
    finally:
        await index.close()


@pytest.fixture
def settings(base_settings: Settings, database: str) -> Settings:
    return base_settings


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    async with running_app(settings) as client:
        yield client


@pytest.fixture
async def fanout_run(settings: Settings) -> AsyncIterator[FanoutRun]:
    """The fanout worker running in-process, with a way to wait until it has handled
    everything the test wrote so far."""
    async with running_fanout_run(settings) as run:
        yield run


@pytest.fixture
async def fanout(fanout_run: FanoutRun) -> Fanout:
    return fanout_run.fanout


@pytest.fixture
async def redis_client(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    """A plain redis-py client on the session's Redis, for looking at Chirp's keys."""
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def pg(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to the session's database, for looking at rows."""
    connection = await asyncpg.connect(settings.database_url)
    try:
        yield connection
    finally:
        await connection.close()
