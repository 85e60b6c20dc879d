"""Helpers for tests that drive Chirp through its HTTP API and run its workers in-process."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import secrets
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import httpx
import redis.asyncio as aioredis
from litestar.testing import AsyncTestClient

from domain.events import AnyEvent, decode_event
from domain.ids import ID_WIDTH
from realtime.consumer import EventConsumer
from realtime.fanout import Fanout
from web.app import create_app
from web.container import Services, provide_services
from web.settings import Settings
from web.workers import fanout_consumer

ID_RE = re.compile(r"^[1-9][0-9]*$")
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SENTINEL = "0" * ID_WIDTH
# Marks a timeline that dropped older entries (storage/redis_store.py TRIMMED).
TRIMMED = "0" * (ID_WIDTH - 1) + "1"
E = TypeVar("E")


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


def assert_error(response: httpx.Response, status: int) -> str:
    """The contract's error body: {"status_code", "detail", "extra"?} matching the status."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status_code"] == status, body
    assert isinstance(body["detail"], str) and body["detail"], body
    assert set(body) <= {"status_code", "detail", "extra"}, body
    return str(body["detail"])


async def out_of_window_edge(window: int, margin: float = 2.0) -> None:
    """Fixed-window rate limits reset on window boundaries; a test counting hits must not
    straddle one, so wait for the next window when the current one is about to end."""
    left = window - time.time() % window
    if left < margin:
        await asyncio.sleep(left + 0.05)


class Account:
    def __init__(self, api: Api, username: str, user_id: str, token: str) -> None:
        self.api = api
        self.username = username
        self.id = user_id
        self.token = token

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def int_id(self) -> int:
        return int(self.id)

    async def post(self, text: str, **body: Any) -> dict[str, Any]:
        response = await self.api.client.post(
            "/api/v1/tweets", json={"text": text, **body}, headers=self.auth
        )
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()
        return data

    async def post_many(self, count: int, prefix: str = "tweet") -> list[str]:
        """Posts `count` tweets; their ids oldest first."""
        return [(await self.post(f"{prefix} {i}"))["id"] for i in range(count)]

    async def delete(self, tweet_id: str) -> None:
        response = await self.api.client.delete(f"/api/v1/tweets/{tweet_id}", headers=self.auth)
        assert response.status_code == 204, response.text

    async def like(self, tweet_id: str) -> dict[str, Any]:
        response = await self.api.client.post(f"/api/v1/tweets/{tweet_id}/like", headers=self.auth)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    async def unlike(self, tweet_id: str) -> dict[str, Any]:
        response = await self.api.client.delete(
            f"/api/v1/tweets/{tweet_id}/like", headers=self.auth
        )
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    async def follow(self, other: Account) -> None:
        response = await self.api.client.post(
            f"/api/v1/users/{other.username}/follow", headers=self.auth
        )
        assert response.status_code == 200, response.text
        assert response.json() == {"following": True}

    async def unfollow(self, other: Account) -> None:
        response = await self.api.client.delete(
            f"/api/v1/users/{other.username}/follow", headers=self.auth
        )
        assert response.status_code == 200, response.text
        assert response.json() == {"following": False}

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

    async def sign_up_many(self, count: int) -> list[Account]:
        return [await self.sign_up() for _ in range(count)]

    async def user(self, username: str, viewer: Account | None = None) -> dict[str, Any]:
        response = await self.client.get(
            f"/api/v1/users/{username}", headers=viewer.auth if viewer else {}
        )
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    async def tweet(self, tweet_id: str, viewer: Account | None = None) -> dict[str, Any]:
        response = await self.client.get(
            f"/api/v1/tweets/{tweet_id}", headers=viewer.auth if viewer else {}
        )
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    async def walk(self, path: str, key: str, limit: int, **headers: str) -> list[dict[str, Any]]:
        """Every item of a paged list, following next_cursor to the end."""
        items: list[dict[str, Any]] = []
        cursor = None
        for _ in range(1000):
            params: dict[str, Any] = {"limit": limit}
            if cursor:
                params["cursor"] = cursor
            response = await self.client.get(path, params=params, headers=headers)
            assert response.status_code == 200, response.text
            page = response.json()
            assert len(page[key]) <= limit
            items += page[key]
            cursor = page["next_cursor"]
            if cursor is None:
                return items
            assert isinstance(cursor, str) and cursor
        raise AssertionError("paging never ended")


# -- looking behind the API: Postgres rows and Redis keys --------------------------------


async def outbox_events(pg: asyncpg.Connection, kind: type[E]) -> list[E]:
    """Every event of that type in the outbox, oldest first, decoded as the workers see it."""
    rows = await pg.fetch(
        "SELECT payload FROM outbox WHERE kind = $1 ORDER BY id",
        kind.kind,  # type: ignore[attr-defined]
    )
    events: list[AnyEvent] = [decode_event(bytes(r["payload"])) for r in rows]
    return [e for e in events if isinstance(e, kind)]


async def one_event(pg: asyncpg.Connection, kind: type[E], **fields: int) -> E:
    found = [
        e
        for e in await outbox_events(pg, kind)
        if all(getattr(e, name) == value for name, value in fields.items())
    ]
    assert len(found) == 1, f"expected one {kind.__name__} with {fields}, found {found}"
    return found[0]


def timeline_key(settings: Settings, user_id: str | int) -> str:
    return f"{settings.redis_prefix}tl:{user_id}"


async def timeline_members(
    redis: aioredis.Redis, settings: Settings, user_id: str | int
) -> list[str]:
    """The raw members of a home timeline sorted set, lowest first."""
    return await zset_members(redis, timeline_key(settings, user_id))


async def in_every_timeline(
    redis_client: aioredis.Redis, settings: Settings, users: list[Any], tweet_id: str
) -> bool:
    """Whether the tweet is in each user's Redis home timeline (users have an `id`)."""
    for user in users:
        if member(tweet_id) not in await timeline_members(redis_client, settings, user.id):
            return False
    return True


async def zset_members(redis: aioredis.Redis, key: str) -> list[str]:
    raw = await redis.zrange(key, 0, -1)
    return [m.decode() if isinstance(m, bytes) else str(m) for m in raw]


def member(tweet_id: str) -> str:
    return tweet_id.zfill(ID_WIDTH)


# -- running the app and the workers in-process ------------------------------------------


@contextlib.asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[Api]:
    app = create_app(settings)
    async with AsyncTestClient(app=app, base_url="http://testserver.local") as client:
        yield Api(client)


@contextlib.asynccontextmanager
async def running_fanout(
    settings: Settings, *, catch_up: float = 30.0
) -> AsyncIterator[tuple[Fanout, EventConsumer, Services]]:
    """The fanout worker's consumer running in this event loop. The durable consumer is shared
    by the whole session, so first let it work off what earlier tests left in the stream:
    "within 2 s" is a promise about a worker that keeps up, not one starting with a backlog."""
    async with provide_services(settings, process_name="test-fanout") as services:
        consumer, fanout = fanout_consumer(services)
        stop = asyncio.Event()
        task = asyncio.create_task(consumer.run(stop))
        try:
            if catch_up:
                await eventually(lambda: consumer_idle(services), timeout=catch_up, interval=0.1)
            yield fanout, consumer, services
        finally:
            stop.set()
            try:
                await asyncio.wait_for(task, 10)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


@contextlib.asynccontextmanager
async def services_with_own_stream(
    settings: Settings, process_name: str
) -> AsyncIterator[Services]:
    """The session's database and Redis, with a JetStream stream of the caller's own (removed
    afterwards, with its dead-letter stream)."""
    tag = secrets.token_hex(3)
    own = settings.with_overrides(
        stream=f"{settings.stream}_O{tag.upper()}",
        subject_prefix=f"{settings.subject_prefix}_o{tag}",
    )
    async with provide_services(own, process_name=process_name, wait_for_nats=True) as s:
        try:
            yield s
        finally:
            for stream in (s.names.stream, s.names.dead_letter_stream):
                with contextlib.suppress(Exception):
                    await s.link.js.delete_stream(stream)


async def consumer_idle(services: Services, durable: str = "fanout") -> bool:
    """Nothing in the stream is waiting for the consumer, and nothing delivered is unacked."""
    try:
        info = await services.link.js.consumer_info(services.names.stream, durable)
    except Exception:
        return False
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


@dataclass
class FanoutRun:
    fanout: Fanout
    consumer: EventConsumer
    services: Services
    # Outbox rows newer than this were written during the test.
    outbox_start: int

    async def settled(self, timeout: float = 10.0) -> bool:
        """Every event written since the worker started is published and handled."""

        async def done() -> bool:
            unpublished = await self.services.db.pool.fetchval(
                "SELECT count(*) FROM outbox WHERE id > $1 AND published_at IS NULL",
                self.outbox_start,
            )
            return unpublished == 0 and await consumer_idle(self.services)

        return await eventually(done, timeout=timeout, interval=0.05)


@contextlib.asynccontextmanager
async def running_fanout_run(settings: Settings) -> AsyncIterator[FanoutRun]:
    async with running_fanout(settings) as (fanout, consumer, services):
        start = await services.db.pool.fetchval("SELECT coalesce(max(id), 0) FROM outbox")
        yield FanoutRun(fanout, consumer, services, start)


@contextlib.asynccontextmanager
async def idle_fanout(settings: Settings) -> AsyncIterator[Fanout]:
    """A Fanout whose handler the test calls itself, with no consumer feeding it."""
    async with provide_services(settings, process_name="test-fanout-idle") as services:
        _, fanout = fanout_consumer(services)
        yield fanout


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
        # Read all along: a pipe nobody reads fills up (64 KiB of log lines) and then blocks
        # the process mid-work. The tail is kept for error messages.
        self._log: collections.deque[str] = collections.deque(maxlen=200)
        self._drain = threading.Thread(target=self._read_log, daemon=True)
        self._drain.start()

    def _read_log(self) -> None:
        if self.process.stderr is None:
            return
        for line in iter(self.process.stderr.readline, b""):
            self._log.append(line.decode(errors="replace"))

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

    async def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        """Waits for a line of the process's log (a worker has no /health)."""

        async def logged() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(self.stderr())
            return any(text in line for line in list(self._log))

        assert await eventually(logged, timeout=timeout), f"no {text!r} in the log"

    def stderr(self) -> str:
        if self.process.poll() is None:
            return "(still running)"
        self._drain.join(timeout=2)
        return "".join(self._log)[-4000:]

    def stop(self, kill: bool = False) -> None:
        import signal

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(10)
            except Exception:
                self.process.kill()
                self.process.wait(5)
        self._drain.join(timeout=2)
        if self.process.stderr is not None:
            self.process.stderr.close()


@dataclass
class CliResult:
    code: int
    out: str
    err: str


async def run_chirp(settings: Settings, *argv: str, timeout: float = 120) -> CliResult:
    """The real CLI in its own process, without blocking the event loop (a fanout worker
    may be running in it)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "web.cli", *argv),
        env={**os.environ, **settings.to_env(), "CHIRP_LOG_JSON": "1"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return CliResult(process.returncode, out.decode(), err.decode())
