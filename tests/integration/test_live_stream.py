"""The JSON live stream, through real app processes and real sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets

from launcher.process import free_port
from tests.support import ServerProcess, running_fanout, unique_name
from web.settings import Settings


@pytest.fixture
async def two_servers(settings: Settings) -> AsyncIterator[list[ServerProcess]]:
    servers = [ServerProcess(settings.with_overrides(port=free_port()), "serve") for _ in range(2)]
    try:
        for server in servers:
            await server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()


async def sign_up(base_url: str) -> tuple[str, str]:
    async with httpx.AsyncClient(base_url=base_url) as client:
        name = unique_name()
        response = await client.post(
            "/api/v1/accounts", json={"username": name, "password": "correct horse 1"}
        )
        assert response.status_code == 201, response.text
        return name, response.json()["token"]


async def call(base_url: str, method: str, path: str, token: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base_url) as client:
        return await client.request(
            method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs
        )


def ws_url(server: ServerProcess, token: str, since_id: str | None = None) -> str:
    url = f"ws://{server.settings.host}:{server.settings.port}/api/v1/stream?access_token={token}"
    return url + (f"&since_id={since_id}" if since_id else "")


async def next_event(socket: websockets.ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(await asyncio.wait_for(socket.recv(), timeout))
    return data


async def test_a_followed_authors_tweet_is_pushed_to_a_socket_on_another_app_process(
    settings: Settings, two_servers: list[ServerProcess]
) -> None:
    first, second = two_servers
    alice, alice_token = await sign_up(first.base_url)
    _, bob_token = await sign_up(first.base_url)
    assert (
        await call(first.base_url, "POST", f"/api/v1/users/{alice}/follow", bob_token)
    ).status_code == 200
    async with running_fanout(settings), websockets.connect(ws_url(second, bob_token)) as socket:
        posted = await call(
            first.base_url, "POST", "/api/v1/tweets", alice_token, json={"text": "live!"}
        )
        event = await next_event(socket)
        assert event == {"event": "tweet", "tweet": posted.json()}
        tweet_id = posted.json()["id"]
        assert (
            await call(first.base_url, "DELETE", f"/api/v1/tweets/{tweet_id}", alice_token)
        ).status_code == 204
        assert await next_event(socket) == {"event": "delete", "id": tweet_id}


async def test_resuming_with_since_id_sends_missed_tweets_then_live_ones_without_gap_or_repeat(
    settings: Settings, two_servers: list[ServerProcess]
) -> None:
    first, second = two_servers
    alice, alice_token = await sign_up(first.base_url)
    _, bob_token = await sign_up(first.base_url)
    await call(first.base_url, "POST", f"/api/v1/users/{alice}/follow", bob_token)

    async def post(text: str) -> str:
        response = await call(
            first.base_url, "POST", "/api/v1/tweets", alice_token, json={"text": text}
        )
        tweet_id: str = response.json()["id"]
        return tweet_id

    async with running_fanout(settings):
        seen: list[str] = []
        async with websockets.connect(ws_url(first, bob_token)) as socket:
            seen.append((await asyncio.gather(next_event(socket), post("one")))[0]["tweet"]["id"])
        # Disconnected: these are missed live, and must come in the backlog.
        missed = [await post("two"), await post("three")]
        await asyncio.sleep(0.5)
        async with websockets.connect(ws_url(second, bob_token, since_id=seen[-1])) as socket:
            for _ in missed:
                seen.append((await next_event(socket))["tweet"]["id"])
            live = await post("four")
            seen.append((await next_event(socket))["tweet"]["id"])
            with pytest.raises(TimeoutError):
                await next_event(socket, timeout=0.7)
    assert seen[1:] == [*missed, live]
    assert len(set(seen)) == len(seen) == 4


async def test_a_socket_without_a_token_or_from_a_foreign_origin_is_refused(
    two_servers: list[ServerProcess],
) -> None:
    server = two_servers[0]
    _, token = await sign_up(server.base_url)
    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect(ws_url(server, "not-a-token")):
            pass
    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect(ws_url(server, token), origin="https://evil.example"):
            pass
    async with websockets.connect(ws_url(server, token), origin=server.base_url) as socket:
        with pytest.raises(TimeoutError):
            await next_event(socket, timeout=0.3)
