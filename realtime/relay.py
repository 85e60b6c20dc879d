"""The outbox relay: gets committed events onto JetStream.

Right after a commit the request hands its events to `publish_soon`, and the relay publishes
them within milliseconds. Anything that did not make it (NATS down, the process killed between
commit and publish) is still unpublished in the outbox table, and the sweep republishes it.
A republish of something that did get through carries the same Nats-Msg-Id and is dropped by
JetStream's duplicate window; consumers are idempotent for anything older."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from domain.events import Event, encode_event
from realtime.jetstream import JetStreamPublisher, NatsLink
from storage.postgres import Database
from storage.repositories import OutboxRepository

log = logging.getLogger("chirp.relay")


class OutboxRelay:
    def __init__(
        self,
        link: NatsLink,
        publisher: JetStreamPublisher,
        db: Database,
        outbox: OutboxRepository,
        *,
        sweep_interval: float = 1.0,
        sweep_age: float = 3.0,
        queue_size: int = 10_000,
    ) -> None:
        self._link = link
        self._publisher = publisher
        self._db = db
        self._outbox = outbox
        self._sweep_interval = sweep_interval
        self._sweep_age = timedelta(seconds=sweep_age)
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=queue_size)
        self.published = 0

    def publish_soon(self, events: list[Event]) -> None:
        for event in events:
            try:
                self._queue.put_nowait(event)
            except asyncio.QueueFull:
                return  # the sweep will find it in the outbox

    async def run_publisher(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < 256:
                batch.append(self._queue.get_nowait())
            if not self._link.connected:
                continue  # left for the sweep
            try:
                results = await self._publisher.publish_many(
                    [(e.event_id, e.kind, encode_event(e)) for e in batch]
                )
            except Exception:
                log.exception("publish failed")  # left for the sweep
                continue
            done = [e.event_id for e, r in zip(batch, results, strict=True) if r is None]
            if done:
                try:
                    await self._outbox.mark_published(done)
                except Exception:
                    # Published but not marked: the sweep republishes, JetStream dedupes.
                    log.exception("marking events published failed")
                self.published += len(done)

    async def sweep_once(self, limit: int = 500) -> int:
        """Publishes outbox rows older than the sweep age that are still unpublished.
        Returns how many were published."""
        if not self._link.connected:
            return 0
        async with self._db.transaction() as connection:
            rows = await self._outbox.claim_unpublished(connection, self._sweep_age, limit)
            if not rows:
                return 0
            results = await self._publisher.publish_many(rows)
            done = [row[0] for row, r in zip(rows, results, strict=True) if r is None]
            if done:
                await self._outbox.mark_published(done, connection)
        if done:
            log.info("relay republished events", extra={"count": len(done)})
        return len(done)

    async def run_sweeper(self) -> None:
        loop = asyncio.get_running_loop()
        next_prune = loop.time()
        while True:
            try:
                while await self.sweep_once() > 0:
                    pass
                if loop.time() >= next_prune:
                    await self._outbox.prune(timedelta(days=1))
                    next_prune = loop.time() + 600
            except Exception:
                log.exception("outbox sweep failed")
            await asyncio.sleep(self._sweep_interval)
