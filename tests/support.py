"""Helpers for tests that drive Chirp through its HTTP API and run its workers in-process."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
from litestar.testing import AsyncTestClient

from realtime.consumer import EventConsumer
from realtime.fanout import Fanout
from web.app import create_app
from web.container import Services, provide_services
from web.settings import Settings
from web.workers import fanout_consumer


def unique_name(prefix: str = "u") -> str:
    return f"{prefix}{secrets.token_hex(5)}"[:15]


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 5.0, interval: float = 0.05
) -> bool:
    """Polls until `check` holds; the caller asserts on the result so a failure says what."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if await check():
            return True
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(interval)


class Account:
    def __init__(self, api: Api, username: str, user_id: str, token: str) -> None:
        self.api = api
        self.username = username
        self.id = user_id
        self.token = token

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def post(self, text: str, **body: Any) -> dict[str, Any]:
        response = await self.api.client.post(
            "/api/v1/tweets", json={"text": text, **body}, headers=self.auth
        )
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()
        return data

    async def follow(self, other: Account) -> None:
        response = await self.api.client.post(
            f"/api/v1/users/{other.username}/follow", headers=self.auth
        )
        assert response.status_code == 200, response.text

    async def unfollow(self, other: Account) -> None:
        response = await self.api.client.delete(
            f"/api/v1/users/{other.username}/follow", headers=self.auth
        )
        assert response.status_code == 200, response.text

    async def timeline(self, **params: Any) -> dict[str, Any]:
        response = await self.api.client.get("/api/v1/timeline", params=params, headers=self.auth)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    async def timeline_ids(self, **params: Any) -> list[str]:
        return [t["id"] for t in (await self.timeline(**params))["tweets"]]

    async def all_timeline_ids(self, limit: int = 20) -> list[str]:
        """Walks every page with the cursor."""
        ids: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": limit}
            if cursor:
                params["cursor"] = cursor
            page = await self.timeline(**params)
            ids += [t["id"] for t in page["tweets"]]
            cursor = page["next_cursor"]
            if not cursor:
                return ids


class Api:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def sign_up(
        self, username: str | None = None, password: str = "correct horse 1"
    ) -> Account:
        username = username or unique_name()
        response = await self.client.post(
            "/api/v1/accounts", json={"username": username, "password": password}
        )
        assert response.status_code == 201, response.text
        data = response.json()
        return Account(self, username, data["user"]["id"], data["token"])


@contextlib.asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[Api]:
    app = create_app(settings)
    async with AsyncTestClient(app=app, base_url="http://testserver.local") as client:
        yield Api(client)


@contextlib.asynccontextmanager
async def running_fanout(
    settings: Settings,
) -> AsyncIterator[tuple[Fanout, EventConsumer, Services]]:
    async with provide_services(settings, process_name="test-fanout") as services:
        consumer, fanout = fanout_consumer(services)
        stop = asyncio.Event()
        task = asyncio.create_task(consumer.run(stop))
        try:
            yield fanout, consumer, services
        finally:
            stop.set()
            try:
                await asyncio.wait_for(task, 10)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


class ServerProcess:
    """A real `chirp serve` (or worker) process, for tests that need real sockets or several
    app processes."""

    def __init__(self, settings: Settings, *argv: str) -> None:
        import os
        import subprocess
        import sys

        env = {**os.environ, **settings.to_env(), "CHIRP_LOG_JSON": "1"}
        self.settings = settings
        self.process = subprocess.Popen(
            [sys.executable, "-m", "web.cli", *argv],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}"

    async def wait_ready(self, timeout: float = 20.0) -> None:
        async with httpx.AsyncClient(base_url=self.base_url) as client:

            async def up() -> bool:
                if self.process.poll() is not None:
                    raise RuntimeError(self.stderr())
                try:
                    return (await client.get("/health")).status_code == 200
                except httpx.TransportError:
                    return False

            assert await eventually(up, timeout=timeout), "server did not start"

    def stderr(self) -> str:
        if self.process.stderr is None:
            return ""
        if self.process.poll() is None:
            return "(still running)"
        return self.process.stderr.read().decode(errors="replace")[-4000:]

    def stop(self, kill: bool = False) -> None:
        import signal

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(10)
            except Exception:
                self.process.kill()
                self.process.wait(5)
        if self.process.stderr is not None:
            self.process.stderr.close()
