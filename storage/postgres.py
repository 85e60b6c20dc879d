"""The Postgres connection (Piccolo's engine and its asyncpg pool) and migrations."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import AsyncIterator

import asyncpg

from storage.piccolo_conf import DB


class Database:
    """Owns the asyncpg pool behind Piccolo's engine. Repositories borrow connections from
    `pool`; Piccolo's table classes use the same engine."""

    def __init__(self, database_url: str, *, min_size: int = 2, max_size: int = 10) -> None:
        self.database_url = database_url
        self._min_size = min_size
        self._max_size = max_size

    async def start(self) -> None:
        DB.config = {"dsn": self.database_url}
        if DB.pool is None:
            await DB.start_connection_pool(
                min_size=self._min_size,
                max_size=self._max_size,
                # A statement that waits on a lock for this long is a bug, not load.
                command_timeout=30,
            )

    async def stop(self) -> None:
        if DB.pool is not None:
            await DB.close_connection_pool()

    @property
    def pool(self) -> asyncpg.Pool:
        if DB.pool is None:
            raise RuntimeError("Database.start() has not been called")
        pool: asyncpg.Pool = DB.pool
        return pool

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire() as connection, connection.transaction():
            yield connection

    async def ping(self) -> bool:
        try:
            async with self.pool.acquire(timeout=2) as connection:
                await connection.fetchval("SELECT 1", timeout=2)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
        return True


async def migrate(database_url: str, *, quiet: bool = False) -> None:
    """Applies every Piccolo migration not applied yet."""
    from piccolo.apps.migrations.commands.forwards import run_forwards

    os.environ["PICCOLO_CONF"] = "storage.piccolo_conf"
    DB.config = {"dsn": database_url}
    out = io.StringIO()
    # Piccolo prints its progress; keep it out of test output and JSON logs.
    redirect = contextlib.redirect_stdout(out) if quiet else contextlib.nullcontext()
    with redirect:
        result = await run_forwards(app_name="chirp")
    if not result.success:
        raise RuntimeError(f"migration failed: {result.message}\n{out.getvalue()}")
