"""`/ready` as ../shared/API.md has it: each dependency's state, 200 while Chirp can serve,
503 only when it cannot (Postgres down)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

from tests.support import Api, running_app
from web.settings import Settings


class TcpProxy:
    """A plain TCP relay to a real server, that the test can cut: the way to take Postgres
    away from one app without stopping the Postgres every other test uses. It runs its own
    event loop in a thread: the test client starts the app from the test's loop while
    blocking it."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        self._writers |= {writer, upstream_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    async def cut(self) -> None:
        """Refuses new connections and drops the open ones."""
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        self._writers.clear()


class ThreadedProxy:
    def __init__(self, host: str, port: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._proxy = TcpProxy(host, port)

    @property
    def port(self) -> int:
        return self._proxy.port

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._proxy.start(), self._loop).result(5)

    async def cut(self) -> None:
        future = asyncio.run_coroutine_threadsafe(self._proxy.cut(), self._loop)
        await asyncio.wrap_future(future)

    def stop(self) -> None:
        async def finish() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(finish(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


@contextlib.asynccontextmanager
async def postgres_behind_a_proxy(
    settings: Settings,
) -> AsyncIterator[tuple[Settings, ThreadedProxy]]:
    parts = urlsplit(settings.database_url)
    proxy = ThreadedProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    proxy.start()
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    new = f"{netloc[0]}@{host}" if len(netloc) == 2 else host
    try:
        yield settings.with_overrides(database_url=urlunsplit(parts._replace(netloc=new))), proxy
    finally:
        await proxy.cut()
        proxy.stop()


async def test_ready_reports_every_dependency_by_name(api: Api) -> None:
    response = await api.client.get("/ready")
    assert response.status_code == 200
    assert set(response.json()) == {"postgres", "redis", "nats", "typesense", "media"}
    assert set(response.json().values()) <= {"ok", "down"}


async def test_ready_answers_503_when_postgres_is_down_and_still_reports_the_rest(
    settings: Settings,
) -> None:
    async with (
        postgres_behind_a_proxy(settings) as (via_proxy, proxy),
        running_app(via_proxy) as api,
    ):
        before = await api.client.get("/ready")
        assert before.status_code == 200 and before.json()["postgres"] == "ok"
        await proxy.cut()
        after = await api.client.get("/ready")
        assert after.status_code == 503
        report = after.json()
        assert report["postgres"] == "down"
        assert report["redis"] == "ok" and report["nats"] == "ok"
        # Not the error body: the report itself, so the operator sees what is down.
        assert set(report) == {"postgres", "redis", "nats", "typesense", "media"}
