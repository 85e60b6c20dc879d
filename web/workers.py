"""Worker processes: each runs one durable consumer with the same services as the web app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from realtime.consumer import EventConsumer
from realtime.fanout import Fanout, FanoutTuning, fanout_event_consumer
from realtime.indexer import (
    TRANSIENT_ERRORS,
    IndexerTuning,
    SearchIndexer,
    search_indexer_consumer,
)
from realtime.live import LivePublisher, Presence
from storage.fanout_log import FanoutLog
from web.container import Services, provide_services, settle_heap
from web.settings import Settings

log = logging.getLogger("chirp.worker")


def fanout_consumer(
    services: Services, tuning: FanoutTuning | None = None
) -> tuple[EventConsumer, Fanout]:
    tuning = tuning or FanoutTuning()
    # The worker's Redis calls that come by the thousand go through the lean client.
    presence = Presence(services.redis, services.keys, reads=services.redis_reads)
    fanout = Fanout(
        services.store,
        services.timelines,
        services.tweets,
        services.users,
        services.follows,
        services.reader,
        LivePublisher(services.link, services.names, presence),
        active_days=services.settings.active_days,
        chunk_size=tuning.chunk_size,
        part_size=tuning.part_size,
        parts_at_once=tuning.parts_at_once,
        fanout_log=FanoutLog(services.redis, services.keys, writes=services.redis_reads),
    )
    return fanout_event_consumer(services.link, services.names, fanout, tuning), fanout


def search_indexer(
    services: Services, tuning: IndexerTuning | None = None
) -> tuple[EventConsumer, SearchIndexer]:
    indexer = SearchIndexer(services.search_sync)
    consumer = search_indexer_consumer(services.link, services.names, indexer, tuning)
    return consumer, indexer


async def run_worker(settings: Settings, name: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with provide_services(settings, process_name=f"chirp-{name}") as services:
        if name == "fanout":
            consumer, fanout = fanout_consumer(services)
            try:
                await fanout.warm_up()
            except TRANSIENT_ERRORS as error:
                log.warning("fanout warm-up failed", extra={"error": repr(error)})
        elif name == "search-indexer":
            consumer, indexer = search_indexer(services)
            try:
                await indexer.reconcile()
            except TRANSIENT_ERRORS as error:
                # Typesense or Postgres is not up yet: the first batch reconciles instead.
                log.warning("search reconcile at start failed", extra={"error": repr(error)})
        else:
            raise SystemExit(f"unknown worker {name!r}")
        settle_heap()
        log.info("worker started", extra={"worker": name})
        await consumer.run(stop)
