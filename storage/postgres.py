"""The Postgres connection (Piccolo's engine and its asyncpg pool) and migrations."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
from collections.abc import AsyncIterator, Callable

import asyncpg

from domain.ids import MAX_WORKER_ID
from storage.piccolo_conf import DB

log = logging.getLogger("chirp.postgres")

# The advisory lock class (first key) under which worker ids are claimed.
WORKER_ID_LOCK_CLASS = 0x43484952  # "CHIR"


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Released connections skip asyncpg's default reset query (`RESET ALL`, `UNLISTEN *`,
    ...: one more round trip per query, measured by bench/timeline.py). Chirp sets no session
    state, and asyncpg still rolls back a transaction left open before calling this."""


class Database:
    """An asyncpg pool for the repositories. Each Database owns its pool, so several sets
    of services in one process (the tests run an app and a worker side by side) can start and
    stop independently; Piccolo's engine is pointed at the same database for migrations."""

    def __init__(self, database_url: str, *, min_size: int = 2, max_size: int = 10) -> None:
        self.database_url = database_url
        self._min_size = min_size
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self._lease: asyncpg.Connection | None = None
        self._assign_worker_id: Callable[[int], None] | None = None
        self._reclaiming: asyncio.Task[None] | None = None

    async def hold_worker_id(self, assign: Callable[[int], None]) -> None:
        """Claims a Snowflake worker id (0-1023) that no other live process using this
        database holds, and hands it to `assign`: the first free session-level advisory
        lock in Chirp's lock class, held on a connection of its own until stop() or the
        process's death releases it. If that connection is lost (a Postgres restart), the
        lock goes with it, so a free id is claimed again and assigned. (Every process of
        `chirp serve --workers N` once had the same configured id, and two of them minting
        in the same millisecond made the same tweet id: a 500.)"""
        self._assign_worker_id = assign
        assign(await self._claim_worker_id())

    async def _claim_worker_id(self) -> int:
        lease = await asyncpg.connect(self.database_url)
        try:
            claimed = await lease.fetchval(
                "SELECT i FROM generate_series(0, $2::int) AS i"
                " WHERE pg_try_advisory_lock($1::int, i) LIMIT 1",
                WORKER_ID_LOCK_CLASS,
                MAX_WORKER_ID,
            )
        except BaseException:
            await lease.close()
            raise
        if claimed is None:
            await lease.close()
            raise RuntimeError(f"all {MAX_WORKER_ID + 1} worker ids are held by live processes")
        lease.add_termination_listener(self._lease_lost)
        self._lease = lease
        return int(claimed)

    def _lease_lost(self, lease: object) -> None:
        if lease is not self._lease:  # closed by stop()
            return
        self._lease = None
        self._reclaiming = asyncio.get_running_loop().create_task(self._reclaim())

    async def _reclaim(self) -> None:
        while self._assign_worker_id is not None:
            try:
                worker_id = await self._claim_worker_id()
            except (OSError, asyncpg.PostgresError, TimeoutError) as error:
                log.warning("worker id lease lost; claiming again", extra={"error": repr(error)})
                await asyncio.sleep(1.0)
                continue
            self._assign_worker_id(worker_id)
            log.warning("worker id lease lost and claimed again", extra={"worker_id": worker_id})
            return

    async def start(self) -> None:
        DB.config = {"dsn": self.database_url}
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self.database_url,
                min_size=self._min_size,
                max_size=self._max_size,
                # A statement that waits on a lock for this long is a bug, not load.
                command_timeout=30,
                reset=_keep_session,
            )

    async def stop(self) -> None:
        self._assign_worker_id = None
        if self._reclaiming is not None:
            self._reclaiming.cancel()
            self._reclaiming = None
        lease, self._lease = self._lease, None
        if lease is not None:
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                await lease.close()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("Database.start() has not been called")
        return self._pool

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
