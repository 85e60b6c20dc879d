"""Whom a token belongs to, as Redis keeps it for every process (storage/sessions.py): found
by a process that never saw the token, ended by a sign-out everywhere at once, never put
back by a lookup that raced the sign-out, and never trusted past the token's expiry. The
"other process" keeps no copy of its own (`auth_cache_seconds=0`), so each of its requests
asks the shared copy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import redis.asyncio as aioredis

from storage.redis_store import RedisKeys
from storage.sessions import REVOKED, Session, SessionCache
from tests.support import Account, Api, assert_error, running_app
from web.container import Services, provide_services
from web.security import hash_token, new_token
from web.settings import Settings


@pytest.fixture
async def other_process(settings: Settings) -> AsyncIterator[Api]:
    async with running_app(settings.with_overrides(auth_cache_seconds=0)) as api:
        yield api


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    async with provide_services(settings, process_name="test-sessions") as s:
        yield s


def through(api: Api, account: Account) -> Account:
    return Account(api, account.username, account.id, account.token)


def session_key(settings: Settings, token: str) -> str:
    return RedisKeys(settings.redis_prefix).session(hash_token(token))


async def me(account: Account) -> int:
    response = await account.api.client.get("/api/v1/me", headers=account.auth)
    return response.status_code


async def test_a_token_one_process_resolved_is_found_by_another_without_asking_postgres(
    api: Api, other_process: Api, pg: asyncpg.Connection
) -> None:
    alice = await api.sign_up()
    assert await me(alice) == 200
    # Gone from Postgres behind the app's back (a sign-out would also replace the copy):
    # only the shared copy can still name the owner.
    await pg.execute("DELETE FROM access_tokens WHERE token_hash = $1", hash_token(alice.token))
    assert await me(through(other_process, alice)) == 200


async def test_a_sign_out_through_one_process_ends_the_token_through_another_at_once(
    api: Api, other_process: Api, settings: Settings, redis_client: aioredis.Redis
) -> None:
    alice = await api.sign_up()
    elsewhere = through(other_process, alice)
    assert await me(elsewhere) == 200
    assert await redis_client.exists(session_key(settings, alice.token))
    response = await api.client.delete("/api/v1/sessions/current", headers=alice.auth)
    assert response.status_code == 204
    assert_error(await other_process.client.get("/api/v1/me", headers=alice.auth), 401)
    assert await redis_client.get(session_key(settings, alice.token)) == REVOKED


async def test_a_lookup_that_read_postgres_before_a_sign_out_cannot_store_the_token_after_it(
    api: Api, services: Services
) -> None:
    alice = await api.sign_up()
    token_hash = hash_token(alice.token)
    found = await services.tokens.resolve(token_hash)
    assert found is not None
    read_before = Session(*found)
    await services.tokens.revoke(token_hash)
    await services.sessions.revoke([token_hash])
    await services.sessions.remember(token_hash, read_before, datetime.now(UTC))
    assert await services.sessions.get(token_hash) is False


async def test_a_new_last_seen_time_replaces_a_held_copy_but_never_a_sign_out(
    api: Api, services: Services
) -> None:
    alice, bob = await api.sign_up(), await api.sign_up()
    for account in (alice, bob):
        assert await me(account) == 200
    later = datetime.now(UTC) + timedelta(minutes=5)
    alice_hash, bob_hash = hash_token(alice.token), hash_token(bob.token)
    held = await services.sessions.get(alice_hash)
    assert isinstance(held, Session)
    await services.sessions.refresh(alice_hash, Session(held.user, later, held.expires_at))
    refreshed = await services.sessions.get(alice_hash)
    assert isinstance(refreshed, Session) and refreshed.last_seen_at == later
    await services.sessions.revoke([bob_hash])
    await services.sessions.refresh(bob_hash, Session(held.user, later, None))
    assert await services.sessions.get(bob_hash) is False


async def test_reading_the_timeline_after_an_hour_away_updates_the_shared_last_seen_time(
    api: Api, other_process: Api, services: Services, pg: asyncpg.Connection
) -> None:
    alice = await api.sign_up()
    hours_ago = datetime.now(UTC) - timedelta(hours=2)
    await pg.execute("UPDATE users SET last_seen_at = $2 WHERE id = $1", alice.int_id, hours_ago)
    elsewhere = through(other_process, alice)
    assert await me(elsewhere) == 200
    held = await services.sessions.get(hash_token(alice.token))
    assert isinstance(held, Session) and held.last_seen_at == hours_ago
    assert await elsewhere.timeline_ids() == []
    seen = await services.sessions.get(hash_token(alice.token))
    assert isinstance(seen, Session) and seen.last_seen_at > hours_ago + timedelta(hours=1)


async def test_a_shared_copy_is_not_trusted_past_the_tokens_expiry(
    api: Api, other_process: Api, services: Services, pg: asyncpg.Connection
) -> None:
    alice = await api.sign_up()
    token = new_token()
    token_hash = hash_token(token)
    expired = datetime.now(UTC) - timedelta(seconds=1)
    await services.tokens.insert(token_hash, alice.int_id, "session", expired)
    user = await services.users.get_by_username(alice.username)
    assert user is not None
    # A copy stored while the token was live, still held (as it would be for up to its
    # remaining lifetime, rounded) when the token expires.
    await services.redis.set(
        services.keys.session(token_hash),
        SessionCache.encode(Session(user, datetime.now(UTC), expired)),
        ex=60,
    )
    assert_error(
        await other_process.client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}),
        401,
    )
